/*
 * amber-agent: PID 1 of every Amber microVM, and the host's only way into it.
 *
 * Boot (from the initramfs): mount /dev /proc /sys, load the virtio modules listed in
 * /lib/modules/load.list, mount the root disk, move it onto / and chroot into it (like switch_root, but
 * without exec: nothing is ever copied into the user's image), recreate /dev/pts, /dev/shm, /proc, /sys,
 * set the hostname, bring up lo (and eth0 when amber.net=1), open the virtio-serial port named
 * amber.agent once, and serve requests on it forever while reaping every orphan.
 *
 * Wire format (little endian), both directions:
 *   frame   = magic "AM" | u8 type | u8 flags(0) | u32 id | u32 length | payload[length]
 *   payload = field* ; field = u8 tag | u32 length | bytes    (STDOUT/STDERR/STDIN payloads are raw bytes)
 * Integers in fields are u32 unless noted (u64: OFFSET SIZE CLOCK_NS MTIME_NS INO); a flag field is empty.
 * Replies carry the id of their request. A malformed frame gets an ERROR reply and never stops the loop.
 *
 * Requests (host -> agent) and their answers:
 *   PING                                   -> OK {VERSION}
 *   EXEC {ARGV*|SHELL|PORT, ENV*, CWD, USER, STDIN, STDIN_OPEN, TIMEOUT_MS, WINDOW}
 *        -> STARTED {PID}, STDOUT/STDERR (raw), STDIN_ACK {LENGTH}, EXIT {EXIT_CODE|SIGNAL, TIMED_OUT}
 *        or ERROR. PORT instead of a command: the child connects to 127.0.0.1:PORT (then ::1) and relays
 *        stdin -> socket, socket -> stdout until the socket closes (stdin EOF = shutdown(SHUT_WR)).
 *        Environment: PATH/HOME/TERM defaults <- SET_ENV base <- the request's ENV entries.
 *        WINDOW: stop reading the command's output while that many bytes are not ACKed by the host.
 *   STDIN (raw payload, the exec's id; empty = close stdin). Answered by STDIN_ACK {LENGTH} as the bytes
 *        reach the command (or are dropped because it closed its stdin): the host's stdin credit.
 *   SIGNAL {SIGNAL}                        (to the exec's process group; no answer unless malformed)
 *   ACK {LENGTH, FLAGS 1=reset}            output consumed by the host (WINDOW); no answer
 *   ATTACH                                 -> OK {PID, STDIN_OPEN, WINDOW} for a job still in the table, else ERROR
 *   SET_ENV {ENV*}                         -> OK; replaces the base environment (old values scrubbed)
 *   WRITE_FILE {PATH, DATA, MODE, OWNER, OFFSET, FLAGS 1=mkdirs, USER}  -> OK (OFFSET 0 creates/truncates)
 *   READ_FILE {PATH, OFFSET, LENGTH, USER} -> OK {SIZE, MODE, UID, GID, INO, MTIME_NS, DATA}
 *   STAT {PATH, USER}                      -> OK {entry fields}            (lstat)
 *   LIST_DIR {PATH, DEPTH, MAX_ENTRIES, USER} -> ENTRIES {ENTRY*}* then OK {COUNT}
 *        ENTRY = nested fields: PATH FTYPE(1 file 2 dir 3 symlink 4 other) SIZE MODE UID GID UNAME GNAME
 *        MTIME_NS(signed) TARGET
 *   MKDIR {PATH, MODE, OWNER, FLAGS 1=parents, USER} -> OK {STATUS 1=created}
 *   REMOVE {PATH, FLAGS 1=recursive, USER} -> OK      RENAME {PATH, NEW_PATH, FLAGS 1=noreplace, USER} -> OK
 *   CHMOD {PATH, MODE, USER}               -> OK
 *   TCP_PROBE/HTTP_PROBE {PORT, HOST, PATH, TIMEOUT_MS} -> OK {STATUS}   SYNC {FLAGS 0/1/2} -> OK
 *   POST_RESTORE {CLOCK_NS, ENTROPY, BOOT_ID, HOSTNAME} -> OK (also resets every output window)
 * ERROR = {MESSAGE, ERRNO}. File requests with USER run with that user's fsuid/fsgid and groups.
 *
 * Limits: MAX_JOBS concurrent execs+probes+tasks; a frame payload <= MAX_PAYLOAD; LIST_DIR <= 100000
 * entries; output is read from a command only while less than HIGH_WATER bytes wait for the host (and
 * less than its WINDOW is unacknowledged). Hygiene: the input buffer is zeroed after each frame, copies
 * of exec arguments, env values and stdin are zeroed before they are freed (explicit_bzero); the output
 * queue is not (zeroing every sent byte costs a fifth of READ_FILE throughput under TCG).
 *
 * Run as `amber-agent --serve-stdio` (not as PID 1) it speaks the protocol on stdin/stdout and refuses
 * every request that would touch the machine: the host tests fuzz the decoder that way.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VERSION "amber-agent 2"
#define HDR 12
#define MAX_PAYLOAD (4u << 20)      /* larger frames are rejected */
#define MAX_FIELDS 4096
#define MAX_JOBS 256                /* execs (incl. background servers and relays) + probes + file tasks */
#define HIGH_WATER (1u << 20)       /* stop reading child pipes while this much output is queued */
#define CHUNK 65536
#define STDIN_ACK_EVERY (256u << 10)  /* report consumed stdin at least this often */
#define MAX_LIST (100000)           /* LIST_DIR entries, at most */
#define ENTRIES_FRAME (60u << 10)   /* LIST_DIR answers in frames of about this size */

enum { M_PING = 1, M_EXEC, M_STDIN, M_SIGNAL, M_WRITE_FILE, M_READ_FILE, M_TCP_PROBE, M_HTTP_PROBE, M_SYNC,
       M_POST_RESTORE, M_SET_ENV, M_STAT, M_LIST_DIR, M_MKDIR, M_REMOVE, M_RENAME, M_CHMOD, M_ATTACH, M_ACK,
       M_OK = 64, M_ERROR, M_STARTED, M_STDOUT, M_STDERR, M_EXIT, M_ENTRIES, M_STDIN_ACK };
enum { T_ARGV = 1, T_SHELL, T_ENV, T_CWD, T_USER, T_STDIN, T_STDIN_OPEN, T_TIMEOUT_MS, T_PATH, T_DATA, T_MODE,
       T_OWNER, T_OFFSET, T_LENGTH, T_PORT, T_HOST, T_FLAGS, T_CLOCK_NS, T_ENTROPY, T_BOOT_ID, T_MESSAGE,
       T_ERRNO, T_PID, T_EXIT_CODE, T_SIGNAL, T_TIMED_OUT, T_STATUS, T_SIZE, T_UID, T_GID, T_VERSION,
       T_HOSTNAME, T_NEW_PATH, T_FTYPE, T_UNAME, T_GNAME, T_MTIME_NS, T_TARGET, T_ENTRY, T_DEPTH,
       T_MAX_ENTRIES, T_COUNT, T_INO, T_WINDOW };
enum { SYNC_ONLY = 0, SYNC_FREEZE = 1, SYNC_THAW = 2 };
enum { WF_MKDIRS = 1, MKDIR_PARENTS = 1, REMOVE_RECURSIVE = 1, RENAME_NO_REPLACE = 1, ACK_RESET = 1 };
enum { FT_FILE = 1, FT_DIR, FT_SYMLINK, FT_OTHER };

extern char **environ;

/* ---------- small utilities ---------- */

static int host_mode;          /* --serve-stdio: decode everything, act on nothing */
static int in_fd = -1, out_fd = -1;

static void logmsg(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(2, "amber-agent: ", 13) < 0 || write(2, buf, (size_t)n) < 0) return;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) { logmsg("out of memory"); abort(); }
    return q;
}

static void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* ---------- output queue (frames to the host) ---------- */

static unsigned char *obuf;
static size_t olen, ocap, ohead;

static size_t frame_start;  /* offset of the frame being built (see begin/end) */

/* Room for n more bytes; compaction shifts the frame under construction along with everything else. */
static void oreserve(size_t n) {
    if (olen + n > ocap && ohead > 0) {
        memmove(obuf, obuf + ohead, olen - ohead);
        olen -= ohead;
        frame_start -= frame_start >= ohead ? ohead : frame_start;
        ohead = 0;
    }
    if (olen + n > ocap) { ocap = (olen + n) * 2; obuf = xrealloc(obuf, ocap); }
}
static size_t opending(void) { return olen - ohead; }

/* A frame under construction: header reserved first, fields appended, length patched at the end. */
static void begin(int type, uint32_t id) {
    oreserve(HDR);
    frame_start = olen;
    unsigned char *h = obuf + olen;
    h[0] = 'A'; h[1] = 'M'; h[2] = (unsigned char)type; h[3] = 0;
    put32(h + 4, id);
    olen += HDR;
}
static void field(int tag, const void *data, size_t n) {
    oreserve(5 + n);
    obuf[olen] = (unsigned char)tag;
    put32(obuf + olen + 1, (uint32_t)n);
    if (n) memcpy(obuf + olen + 5, data, n);
    olen += 5 + n;
}
static void field_u32(int tag, uint32_t v) { unsigned char b[4]; put32(b, v); field(tag, b, 4); }
static void field_u64(int tag, uint64_t v) {
    unsigned char b[8]; put32(b, (uint32_t)v); put32(b + 4, (uint32_t)(v >> 32)); field(tag, b, 8);
}
static void field_str(int tag, const char *s) { field(tag, s, strlen(s)); }
static void raw(const void *data, size_t n) { oreserve(n); memcpy(obuf + olen, data, n); olen += n; }
static void end(void) { put32(obuf + frame_start + 8, (uint32_t)(olen - frame_start - HDR)); }
static size_t frame_size(void) { return olen - frame_start - HDR; }
/* A field whose value is more fields (LIST_DIR entries): returns its offset within the current frame,
   which stays valid across oreserve's compaction (that moves frame_start along). */
static size_t nest_begin(int tag) {
    oreserve(5);
    size_t rel = olen - frame_start;
    obuf[olen] = (unsigned char)tag;
    olen += 5;
    return rel;
}
static void nest_end(size_t rel) { put32(obuf + frame_start + rel + 1, (uint32_t)(olen - frame_start - rel - 5)); }

/* Copies of request data (commands, env values, stdin) are zeroed before their memory is reused. */
static void scrub_free(char *s) { if (s) { explicit_bzero(s, strlen(s)); free(s); } }
static void scrub_vec(char **v) {
    if (!v) return;
    for (char **p = v; *p; p++) scrub_free(*p);
    free(v);
}

static void reply_error(uint32_t id, int err, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    begin(M_ERROR, id);
    field_str(T_MESSAGE, msg);
    field_u32(T_ERRNO, (uint32_t)err);
    end();
}
static void reply_ok(uint32_t id) { begin(M_OK, id); end(); }

/* ---------- request decoding ---------- */

struct field { int tag; const unsigned char *p; uint32_t n; };
struct req { struct field f[MAX_FIELDS]; int n; };

/* Split a payload into fields; -1 when a field runs past the end or there are too many. */
static int parse_fields(const unsigned char *p, uint32_t n, struct req *r) {
    uint32_t off = 0;
    r->n = 0;
    while (off < n) {
        if (n - off < 5 || r->n >= MAX_FIELDS) return -1;
        uint32_t len = get32(p + off + 1);
        if (len > n - off - 5) return -1;
        r->f[r->n++] = (struct field){p[off], p + off + 5, len};
        off += 5 + len;
    }
    return 0;
}
static const struct field *find(const struct req *r, int tag) {
    for (int i = 0; i < r->n; i++) if (r->f[i].tag == tag) return &r->f[i];
    return NULL;
}
/* A NUL-free string field copied into a fresh C string; NULL (and *bad set) if it holds a NUL byte. */
static char *dup_field(const struct field *f, int *bad) {
    if (memchr(f->p, 0, f->n)) { *bad = 1; return NULL; }
    char *s = xrealloc(NULL, f->n + 1);
    memcpy(s, f->p, f->n);
    s[f->n] = 0;
    return s;
}
static char *get_str(const struct req *r, int tag, int *bad) {
    const struct field *f = find(r, tag);
    return f ? dup_field(f, bad) : NULL;
}
static int get_u32(const struct req *r, int tag, uint32_t *out, int *bad) {
    const struct field *f = find(r, tag);
    if (!f) return 0;
    if (f->n != 4) { *bad = 1; return 0; }
    *out = get32(f->p);
    return 1;
}
static int get_u64(const struct req *r, int tag, uint64_t *out, int *bad) {
    const struct field *f = find(r, tag);
    if (!f) return 0;
    if (f->n != 8) { *bad = 1; return 0; }
    *out = get64(f->p);
    return 1;
}
/* All fields with `tag` as a NULL-terminated string vector (NULL on a NUL byte). */
static char **get_vec(const struct req *r, int tag, int *count, int *bad) {
    int n = 0;
    for (int i = 0; i < r->n; i++) n += r->f[i].tag == tag;
    char **v = xrealloc(NULL, sizeof(char *) * (size_t)(n + 1));
    int k = 0;
    for (int i = 0; i < r->n; i++)
        if (r->f[i].tag == tag && (v[k] = dup_field(&r->f[i], bad))) k++;  /* a NUL byte: skipped, *bad set */
    v[k] = NULL;
    if (count) *count = k;
    return v;
}

/* ---------- users and groups, from the guest's own /etc/passwd and /etc/group ---------- */

struct ident { uid_t uid; gid_t gid; char home[256]; char name[64]; gid_t groups[64]; int ngroups; };

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++) if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* Find a line whose field 0 (name) or field 2 (id) matches `key`; fills up to `max` fields in place. */
static int lookup(const char *file, const char *key, int by_id, char *line, size_t cap, char **fields, int max) {
    FILE *f = fopen(file, "re");
    if (!f) return 0;
    int found = 0;
    while (!found && fgets(line, (int)cap, f)) {
        line[strcspn(line, "\n")] = 0;
        int n = 0;
        char *p = line;
        while (n < max) { fields[n++] = p; p = strchr(p, ':'); if (!p) break; *p++ = 0; }
        if (n >= 3 && strcmp(by_id ? fields[2] : fields[0], key) == 0) found = n;
    }
    fclose(f);
    return found;
}

/* Resolve "user", "uid", "user:group" or "uid:gid" like Docker does; -1 with msg on an unknown name. */
static int resolve_user(const char *spec, struct ident *id, char *msg, size_t msgcap) {
    char user[256], *group = NULL, line[1024], *fl[7];
    snprintf(user, sizeof user, "%s", spec && *spec ? spec : "root");
    if ((group = strchr(user, ':'))) *group++ = 0;
    memset(id, 0, sizeof *id);
    snprintf(id->home, sizeof id->home, "/");
    int n = lookup("/etc/passwd", user, all_digits(user), line, sizeof line, fl, 7);
    if (n >= 4) {
        id->uid = (uid_t)strtoul(fl[2], NULL, 10);
        id->gid = (gid_t)strtoul(fl[3], NULL, 10);
        snprintf(id->name, sizeof id->name, "%s", fl[0]);
        if (n >= 6 && *fl[5]) snprintf(id->home, sizeof id->home, "%s", fl[5]);
    } else if (all_digits(user)) {
        id->uid = (uid_t)strtoul(user, NULL, 10);
    } else if (strcmp(user, "root") == 0) {
        snprintf(id->name, sizeof id->name, "root");  /* images without /etc/passwd (scratch) still have root */
        snprintf(id->home, sizeof id->home, "/root");
    } else {
        snprintf(msg, msgcap, "user %s not found in /etc/passwd", user);
        return -1;
    }
    id->groups[id->ngroups++] = id->gid;
    if (group && *group) {
        if (lookup("/etc/group", group, all_digits(group), line, sizeof line, fl, 4) >= 3)
            id->gid = (gid_t)strtoul(fl[2], NULL, 10);
        else if (all_digits(group))
            id->gid = (gid_t)strtoul(group, NULL, 10);
        else if (strcmp(group, "root") == 0)
            id->gid = 0;
        else { snprintf(msg, msgcap, "group %s not found in /etc/group", group); return -1; }
        id->groups[0] = id->gid;
        return 0;
    }
    /* Supplementary groups: every /etc/group line listing the user by name. */
    FILE *f = *id->name ? fopen("/etc/group", "re") : NULL;
    while (f && fgets(line, sizeof line, f) && id->ngroups < 64) {
        line[strcspn(line, "\n")] = 0;
        char *name = strtok(line, ":"), *pw = strtok(NULL, ":"), *gid = strtok(NULL, ":"), *mem = strtok(NULL, "");
        (void)name; (void)pw;
        if (!gid || !mem) continue;
        for (char *m = strtok(mem, ","); m; m = strtok(NULL, ","))
            if (strcmp(m, id->name) == 0) { id->groups[id->ngroups++] = (gid_t)strtoul(gid, NULL, 10); break; }
    }
    if (f) fclose(f);
    return 0;
}

/* File requests with USER: permission checks as that user (fsuid/fsgid + its groups), undone after the
   request. PID 1 is single-threaded, so switching the process's filesystem identity is safe. */
static gid_t agent_groups[256];
static int n_agent_groups, switched;

static int as_user(uint32_t id, const char *spec, const char *op) {
    struct ident ident;
    char msg[300];
    if (!spec) return 0;
    if (resolve_user(spec, &ident, msg, sizeof msg) < 0) { reply_error(id, EINVAL, "%s: %s", op, msg); return -1; }
    if (setgroups((size_t)ident.ngroups, ident.groups) < 0) { reply_error(id, errno, "%s: setgroups: %s", op, strerror(errno)); return -1; }
    switched = 1;
    setfsgid(ident.gid);
    setfsuid(ident.uid);
    return 0;
}
static void as_agent(void) {
    if (!switched) return;
    setfsuid(0);
    setfsgid(0);
    if (setgroups((size_t)n_agent_groups, agent_groups) < 0) logmsg("restore groups: %s", strerror(errno));
    switched = 0;
}

/* Names for ids (STAT, LIST_DIR), cached for one request: the files may change between requests. */
struct name_cache { int n; struct { unsigned id; char name[64]; } e[32]; };
static struct name_cache user_names, group_names;

static const char *name_of(struct name_cache *c, const char *file, unsigned id) {
    for (int i = 0; i < c->n; i++) if (c->e[i].id == id) return c->e[i].name[0] ? c->e[i].name : NULL;
    char key[16], line[1024], *fl[4];
    snprintf(key, sizeof key, "%u", id);
    int found = lookup(file, key, 1, line, sizeof line, fl, 4) >= 3;
    if (c->n < 32) {
        c->e[c->n].id = id;
        snprintf(c->e[c->n].name, sizeof c->e[c->n].name, "%s", found ? fl[0] : "");
        c->n++;
    }
    if (!found && id == 0) return "root";  /* images without /etc/passwd (scratch) */
    return found ? c->e[c->n - 1].name : NULL;
}

/* ---------- the base environment (SET_ENV) ---------- */

static char **base_env;  /* "KEY=value" strings, applied under every exec's own env */
static int nbase;

static int valid_env(char **v) {
    for (; *v; v++) if (**v == '=' || !strchr(*v, '=')) return 0;
    return 1;
}

static void handle_set_env(uint32_t id, const struct req *r) {
    int bad = 0, n = 0;
    char **env = get_vec(r, T_ENV, &n, &bad);
    if (bad || !valid_env(env)) { reply_error(id, EINVAL, "set_env: entries must be KEY=value without NUL bytes"); scrub_vec(env); return; }
    if (host_mode) { reply_error(id, EPERM, "set_env refused: agent runs in host test mode"); scrub_vec(env); return; }
    scrub_vec(base_env);
    base_env = env;
    nbase = n;
    reply_ok(id);
}

/* Is a variable with the key of `kv` ("KEY=...") already in list[0..n)? */
static int has_key(char **list, int n, const char *kv) {
    size_t k = strcspn(kv, "=");
    for (int i = 0; i < n; i++) if (strncmp(list[i], kv, k) == 0 && list[i][k] == '=') return 1;
    return 0;
}

/* ---------- jobs: execs, probes and file tasks run as child processes ---------- */

enum { JOB_EXEC = 1, JOB_PROBE, JOB_TASK };
struct job {
    int used, kind;
    uint32_t id;
    pid_t pid;
    int out, err, in;                 /* our pipe ends, -1 when closed */
    unsigned char *inbuf; size_t inlen, inoff; int in_open;  /* pending stdin; in_open: more may come */
    size_t stdin_done;                /* stdin bytes consumed (written or dropped) not yet reported */
    uint32_t window; uint64_t unacked;  /* output flow control (0 = none) */
    int64_t deadline;                 /* 0 = none */
    int timed_out, exited, status;
    unsigned char *res; size_t reslen;  /* probe/task output */
};
static struct job jobs[MAX_JOBS];

static struct job *job_by_id(uint32_t id) {
    for (int i = 0; i < MAX_JOBS; i++) if (jobs[i].used && jobs[i].id == id && !jobs[i].exited) return &jobs[i];
    return NULL;
}
/* Including jobs that have exited but whose EXIT is not queued yet (it will follow). */
static struct job *job_in_table(uint32_t id) {
    for (int i = 0; i < MAX_JOBS; i++) if (jobs[i].used && jobs[i].id == id) return &jobs[i];
    return NULL;
}
static struct job *new_job(uint32_t id, int kind) {
    for (int i = 0; i < MAX_JOBS; i++)
        if (!jobs[i].used) {
            memset(&jobs[i], 0, sizeof jobs[i]);
            jobs[i] = (struct job){.used = 1, .kind = kind, .id = id, .out = -1, .err = -1, .in = -1};
            return &jobs[i];
        }
    return NULL;
}
static void close_fd(int *fd) { if (*fd >= 0) { close(*fd); *fd = -1; } }
static void drop_stdin(struct job *j) {
    if (j->inbuf) explicit_bzero(j->inbuf, j->inlen);
    j->stdin_done += j->inlen - j->inoff;
    free(j->inbuf);
    j->inbuf = NULL;
    j->inlen = j->inoff = 0;
}

static struct rlimit child_nofile;  /* the limit children get back (the agent raises its own) */

/* In a fresh child: default signal dispositions and mask and fd limit, so the command behaves as under
   any init. */
static void child_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setrlimit(RLIMIT_NOFILE, &child_nofile);
}
/* A child that does not exec keeps only fds 0-2 and `keep` (moved to 3); returns the new fd. */
static int only_fds(int keep) {
    if (keep >= 0 && keep != 3) { dup2(keep, 3); keep = 3; }
    syscall(SYS_close_range, keep >= 0 ? 4u : 3u, ~0u, 0u);
    return keep;
}

static int probe_connect(const char *host, uint32_t port, uint32_t timeout_ms, char *msg, size_t cap);

/* The child of EXEC {PORT}: relay fd 0 -> socket and socket -> fd 1 until the socket's read side ends
   (after stdin EOF the socket gets shutdown(SHUT_WR) and the relay goes on until the peer closes). */
static void relay(int s) {
    static unsigned char up[CHUNK], down[CHUNK];
    size_t uplen = 0, upoff = 0, downlen = 0, downoff = 0;
    int in_open = 1, sock_open = 1, shut = 0;
    fcntl(0, F_SETFL, O_NONBLOCK);
    fcntl(1, F_SETFL, O_NONBLOCK);
    fcntl(s, F_SETFL, O_NONBLOCK);
    for (;;) {
        if (!sock_open && downoff == downlen) _exit(0);
        if (!in_open && upoff == uplen && !shut) { shutdown(s, SHUT_WR); shut = 1; }
        struct pollfd p[3];
        int n = 0, ip = -1, sp = -1, op = -1;
        if (in_open && upoff == uplen) { ip = n; p[n++] = (struct pollfd){.fd = 0, .events = POLLIN}; }
        short sev = (short)((upoff < uplen ? POLLOUT : 0) | (sock_open && downoff == downlen ? POLLIN : 0));
        if (sev) { sp = n; p[n++] = (struct pollfd){.fd = s, .events = sev}; }
        if (downoff < downlen) { op = n; p[n++] = (struct pollfd){.fd = 1, .events = POLLOUT}; }
        if (poll(p, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; _exit(1); }
        if (ip >= 0 && p[ip].revents) {
            ssize_t r = read(0, up, sizeof up);
            if (r > 0) { uplen = (size_t)r; upoff = 0; }
            else if (r == 0 || (errno != EAGAIN && errno != EINTR)) in_open = 0;
        }
        if (sp >= 0 && (p[sp].revents & (POLLOUT | POLLERR | POLLHUP)) && upoff < uplen) {
            ssize_t w = send(s, up + upoff, uplen - upoff, MSG_NOSIGNAL);
            if (w > 0) upoff += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) { dprintf(2, "relay: send: %s\n", strerror(errno)); _exit(1); }
        }
        if (sp >= 0 && (p[sp].revents & (POLLIN | POLLERR | POLLHUP)) && sock_open && downoff == downlen) {
            ssize_t r = recv(s, down, sizeof down, 0);
            if (r > 0) { downlen = (size_t)r; downoff = 0; }
            else if (r == 0) sock_open = 0;
            else if (errno != EAGAIN && errno != EINTR) { dprintf(2, "relay: recv: %s\n", strerror(errno)); _exit(1); }
        }
        if (op >= 0 && p[op].revents) {
            ssize_t w = write(1, down + downoff, downlen - downoff);
            if (w > 0) downoff += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) _exit(1);
        }
    }
}

static void handle_exec(uint32_t id, const struct req *r) {
    int bad = 0, argc = 0;
    char **argv = get_vec(r, T_ARGV, &argc, &bad), **env = get_vec(r, T_ENV, NULL, &bad);
    char *shell = get_str(r, T_SHELL, &bad), *cwd = get_str(r, T_CWD, &bad), *user = get_str(r, T_USER, &bad);
    uint32_t timeout = 0, port = 0, window = 0;
    get_u32(r, T_TIMEOUT_MS, &timeout, &bad);
    get_u32(r, T_WINDOW, &window, &bad);
    int relay_port = get_u32(r, T_PORT, &port, &bad);
    const struct field *stdin_f = find(r, T_STDIN);
    int stdin_open = find(r, T_STDIN_OPEN) != NULL;
    struct ident ident;
    char msg[300];
    int p_out[2] = {-1, -1}, p_err[2] = {-1, -1}, p_in[2] = {-1, -1}, p_exec[2] = {-1, -1};
    char **envp = NULL;
    struct job *j = NULL;
    if (bad) { reply_error(id, EINVAL, "exec: a string field contains a NUL byte or an integer is malformed"); goto out; }
    if ((argc > 0) + (shell != NULL) + relay_port != 1) { reply_error(id, EINVAL, "exec: give exactly one of argv, shell or port"); goto out; }
    if (relay_port && (port == 0 || port > 65535)) { reply_error(id, EINVAL, "exec: port must be in 1..65535"); goto out; }
    if (job_in_table(id)) { reply_error(id, EEXIST, "exec: request id %u is already running", id); goto out; }
    if (host_mode) { reply_error(id, EPERM, "exec refused: agent runs in host test mode"); goto out; }
    if (resolve_user(user, &ident, msg, sizeof msg) < 0) { reply_error(id, ENOENT, "exec: %s", msg); goto out; }
    if (!(j = new_job(id, JOB_EXEC))) { reply_error(id, EAGAIN, "exec: too many concurrent jobs (%d)", MAX_JOBS); goto out; }
    if (pipe2(p_out, O_CLOEXEC) || pipe2(p_err, O_CLOEXEC) || pipe2(p_exec, O_CLOEXEC) ||
        ((stdin_f || stdin_open) && pipe2(p_in, O_CLOEXEC))) {
        int saved = errno;
        int *ends[] = {p_out, p_err, p_exec, p_in};
        for (int i = 0; i < 4; i++) { close_fd(&ends[i][0]); close_fd(&ends[i][1]); }
        reply_error(id, saved, "exec: pipe: %s", strerror(saved));
        j->used = 0;
        goto out;
    }
    /* Environment: the request's entries, then the base environment, then the defaults (first one wins). */
    char *defaults[4], home[300];
    snprintf(home, sizeof home, "HOME=%s", ident.home);
    defaults[0] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    defaults[1] = home;
    defaults[2] = "TERM=xterm";
    defaults[3] = NULL;
    int nenv = 0, k = 0;
    while (env[nenv]) nenv++;
    envp = xrealloc(NULL, sizeof(char *) * (size_t)(nenv + nbase + 4));
    for (int e = 0; e < nenv; e++) if (!has_key(envp, k, env[e])) envp[k++] = env[e];
    for (int e = 0; e < nbase; e++) if (!has_key(envp, k, base_env[e])) envp[k++] = base_env[e];
    for (int d = 0; defaults[d]; d++) if (!has_key(envp, k, defaults[d])) envp[k++] = defaults[d];
    envp[k] = NULL;
    char *sh_argv[] = {"/bin/sh", "-c", shell, NULL};
    char **run = shell ? sh_argv : argv;

    pid_t pid = fork();
    if (pid == 0) {
        /* Child: own session (so a timeout or signal reaches the whole process group), then drop to user. */
        int stage_err[2];
        child_signals();
        setsid();
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        dup2(p_in[0] >= 0 ? p_in[0] : null, 0);
        dup2(p_out[1], 1);
        dup2(p_err[1], 2);
        const char *stage = "chdir";
        if (relay_port) {
            char m4[300], m6[300];
            int s = probe_connect("127.0.0.1", port, 5000, m4, sizeof m4);
            if (s < 0) {  /* a service on ::1 only; the IPv4 error is the one reported */
                int e4 = errno;
                s = probe_connect("::1", port, 5000, m6, sizeof m6);
                if (s < 0) errno = e4;
            }
            if (s >= 0) {
                struct timeval none = {0, 0};
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
                setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
                relay(only_fds(s));  /* closes p_exec: the parent sees the connection succeed */
            }
            stage = "net";
        } else if (chdir(cwd && *cwd ? cwd : "/") == 0) {
            stage = "setgroups";
            if (setgroups((size_t)ident.ngroups, ident.groups) == 0 && (stage = "setgid", setgid(ident.gid) == 0) &&
                (stage = "setuid", setuid(ident.uid) == 0)) {
                environ = envp;  /* execvp searches the command's PATH, not ours */
                stage = "exec";
                execvp(run[0], run);
            }
        }
        stage_err[0] = errno;
        stage_err[1] = stage[0];
        if (write(p_exec[1], stage_err, sizeof stage_err) < 0) _exit(126);
        _exit(127);
    }
    int saved = errno;
    close(p_out[1]); close(p_err[1]); close(p_exec[1]);
    if (p_in[0] >= 0) close(p_in[0]);
    if (pid < 0) {
        reply_error(id, saved, "exec: fork: %s", strerror(saved));
        close(p_out[0]); close(p_err[0]); close(p_exec[0]);
        if (p_in[1] >= 0) close(p_in[1]);
        j->used = 0;
        goto out;
    }
    /* The exec pipe closes on a successful exec (or connection); otherwise it carries errno and the stage. */
    int stage_err[2];
    ssize_t got;
    do got = read(p_exec[0], stage_err, sizeof stage_err); while (got < 0 && errno == EINTR);
    close(p_exec[0]);
    j->pid = pid;
    j->out = p_out[0];
    j->err = p_err[0];
    j->in = p_in[1];
    j->window = window;
    fcntl(j->out, F_SETFL, O_NONBLOCK);
    fcntl(j->err, F_SETFL, O_NONBLOCK);
    if (got == (ssize_t)sizeof stage_err) {
        if (stage_err[1] == 'n')
            reply_error(id, stage_err[0], "connect: nothing accepts connections on port %u in the guest (%s)", port,
                        strerror(stage_err[0]));
        else {
            const char *what = stage_err[1] == 'c' ? "chdir" : stage_err[1] == 'e' ? "exec" : "set user";
            reply_error(id, stage_err[0], "exec: %s %s: %s", what,
                        stage_err[1] == 'c' ? (cwd && *cwd ? cwd : "/") : run[0], strerror(stage_err[0]));
        }
        close_fd(&j->out); close_fd(&j->err); close_fd(&j->in);
        j->kind = 0;  /* reaped silently */
        j->exited = 1;
        goto out;
    }
    if (j->in >= 0) {
        fcntl(j->in, F_SETFL, O_NONBLOCK);
        if (stdin_f && stdin_f->n) {
            j->inbuf = xrealloc(NULL, stdin_f->n);
            memcpy(j->inbuf, stdin_f->p, stdin_f->n);
            j->inlen = stdin_f->n;
        }
        j->in_open = stdin_open;
        if (!j->in_open && !j->inlen) close_fd(&j->in);
    }
    if (timeout) j->deadline = now_ms() + timeout;
    begin(M_STARTED, id);
    field_u32(T_PID, (uint32_t)pid);
    end();
out:
    free(envp);  /* pointers only: the strings are env's, base_env's and defaults */
    scrub_vec(argv); scrub_vec(env); scrub_free(shell); free(cwd); free(user);
}

static void handle_stdin(uint32_t id, const unsigned char *p, uint32_t n) {
    struct job *j = job_by_id(id);
    if (!j || j->kind != JOB_EXEC || (j->in < 0 && !j->in_open)) { reply_error(id, ENOENT, "stdin: no open stdin for id %u", id); return; }
    if (n == 0) { j->in_open = 0; if (j->inlen == j->inoff) close_fd(&j->in); return; }
    if (j->in < 0) { j->stdin_done += n; return; }  /* the command closed its stdin: drop the data */
    if (j->inoff == j->inlen) { drop_stdin(j); }  /* all written: start the buffer afresh */
    j->inbuf = xrealloc(j->inbuf, j->inlen + n);
    memcpy(j->inbuf + j->inlen, p, n);
    j->inlen += n;
}

/* Signals are fire-and-forget: a job that already ended is not an error (the host sees its EXIT). */
static void handle_signal(uint32_t id, const struct req *r) {
    int bad = 0;
    uint32_t sig = 0;
    if (!get_u32(r, T_SIGNAL, &sig, &bad) || bad || sig == 0 || sig > 64) { reply_error(id, EINVAL, "signal: bad signal number"); return; }
    struct job *j = job_by_id(id);
    if (j && kill(-j->pid, (int)sig) < 0) kill(j->pid, (int)sig);
}

/* A new host connection takes over a job started on an earlier one (after a restore). */
static void handle_attach(uint32_t id) {
    struct job *j = job_in_table(id);
    if (!j || j->kind != JOB_EXEC) { reply_error(id, ENOENT, "attach: no command with request id %u in the guest", id); return; }
    j->unacked = 0;
    begin(M_OK, id);
    field_u32(T_PID, (uint32_t)j->pid);
    if (j->in >= 0 || j->in_open) field(T_STDIN_OPEN, NULL, 0);
    if (j->window) field_u32(T_WINDOW, j->window);  /* the new host must ACK at that pace */
    end();
}

static void handle_ack(uint32_t id, const struct req *r) {
    int bad = 0;
    uint32_t n = 0, flags = 0;
    get_u32(r, T_LENGTH, &n, &bad);
    get_u32(r, T_FLAGS, &flags, &bad);
    if (bad) { reply_error(id, EINVAL, "ack: malformed fields"); return; }
    struct job *j = job_in_table(id);
    if (!j) return;  /* it ended meanwhile */
    if (flags & ACK_RESET) j->unacked = 0;
    else j->unacked -= n < j->unacked ? n : j->unacked;
}

/* ---------- probes (forked so a slow service never stalls the loop) ---------- */

/* Connect to an IPv4 or IPv6 literal with a timeout; -1 and a message on failure. */
static int probe_connect(const char *host, uint32_t port, uint32_t timeout_ms, char *msg, size_t cap) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons((uint16_t)port); len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons((uint16_t)port); len = sizeof *a6;
    } else { snprintf(msg, cap, "bad IP address %s", host); return -1; }
    int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (s < 0 || connect(s, (struct sockaddr *)&ss, len) < 0) {
        int saved = errno;
        snprintf(msg, cap, "connect %s port %u: %s", host, port, strerror(saved));
        if (s >= 0) close(s);
        errno = saved;
        return -1;
    }
    return s;
}

static void handle_probe(uint32_t id, int type, const struct req *r) {
    int bad = 0;
    uint32_t port = 0, timeout = 2000;
    char *host = get_str(r, T_HOST, &bad), *path = get_str(r, T_PATH, &bad);
    int has_port = get_u32(r, T_PORT, &port, &bad);
    get_u32(r, T_TIMEOUT_MS, &timeout, &bad);
    int p[2];
    struct job *j;
    if (bad || !has_port || port == 0 || port > 65535) { reply_error(id, EINVAL, "probe: needs a port in 1..65535"); goto out; }
    if (path && (path[0] != '/' || strpbrk(path, " \r\n"))) { reply_error(id, EINVAL, "probe: bad http path"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "probe refused: agent runs in host test mode"); goto out; }
    if (job_in_table(id) || !(j = new_job(id, JOB_PROBE))) { reply_error(id, EAGAIN, "probe: no free job slot"); goto out; }
    if (pipe2(p, O_CLOEXEC)) { reply_error(id, errno, "probe: pipe: %s", strerror(errno)); j->used = 0; goto out; }
    pid_t pid = fork();
    if (pid == 0) {
        char msg[300] = "", buf[512];
        child_signals();
        p[1] = only_fds(p[1]);
        int s = probe_connect(host ? host : "127.0.0.1", port, timeout, msg, sizeof msg);
        if (s < 0 && !host) {  /* a service listening on ::1 only; the IPv4 error is the one reported */
            char msg6[300];
            s = probe_connect("::1", port, timeout, msg6, sizeof msg6);
        }
        if (s >= 0 && type == M_HTTP_PROBE) {
            int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                             path ? path : "/");
            ssize_t got = write(s, buf, (size_t)n) == n ? read(s, buf, sizeof buf - 1) : -1;
            int code = 0;
            if (got > 0) { buf[got] = 0; if (sscanf(buf, "HTTP/%*s %d", &code) != 1) code = 0; }
            if (code <= 0) { snprintf(msg, sizeof msg, "no HTTP status line from port %u", port); s = -1; }
            else snprintf(msg, sizeof msg, "%d", code);
        }
        if (write(p[1], msg, strlen(msg)) < 0) _exit(2);
        _exit(s >= 0 ? 0 : 1);
    }
    close(p[1]);
    if (pid < 0) { reply_error(id, errno, "probe: fork: %s", strerror(errno)); close(p[0]); j->used = 0; goto out; }
    j->pid = pid;
    j->out = p[0];
    fcntl(j->out, F_SETFL, O_NONBLOCK);
    j->deadline = now_ms() + timeout + 1000;
out:
    free(host); free(path);
}

/* ---------- files (each optionally as a guest user, see as_user) ---------- */

static int mkdirs(char *path) {
    for (char *s = path + 1; *s; s++)
        if (*s == '/') { *s = 0; int rc = mkdir(path, 0755); *s = '/'; if (rc < 0 && errno != EEXIST) return -1; }
    return 0;
}

/* An absolute path without NUL bytes, trailing slashes removed (but "/" stays "/"). */
static char *get_path(const struct req *r, int tag, int *bad) {
    char *path = get_str(r, tag, bad);
    if (!path) return NULL;
    if (path[0] != '/') { *bad = 1; free(path); return NULL; }
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') path[--n] = 0;
    return path;
}

static int ftype(mode_t m) {
    return S_ISREG(m) ? FT_FILE : S_ISDIR(m) ? FT_DIR : S_ISLNK(m) ? FT_SYMLINK : FT_OTHER;
}

/* The fields of one STAT answer or LIST_DIR entry. */
static void stat_fields(const char *path, const struct stat *st) {
    field_str(T_PATH, path);
    field_u32(T_FTYPE, (uint32_t)ftype(st->st_mode));
    field_u64(T_SIZE, (uint64_t)st->st_size);
    field_u32(T_MODE, st->st_mode & 07777);
    field_u32(T_UID, st->st_uid);
    field_u32(T_GID, st->st_gid);
    const char *u = name_of(&user_names, "/etc/passwd", st->st_uid), *g = name_of(&group_names, "/etc/group", st->st_gid);
    if (u) field_str(T_UNAME, u);
    if (g) field_str(T_GNAME, g);
    field_u64(T_MTIME_NS, (uint64_t)((int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec));
    if (S_ISLNK(st->st_mode)) {
        char target[4096];
        ssize_t n = readlink(path, target, sizeof target);
        if (n >= 0) field(T_TARGET, target, (size_t)n);
    }
}

static void handle_write_file(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *owner = get_str(r, T_OWNER, &bad), *user = get_str(r, T_USER, &bad), msg[300];
    uint32_t mode = 0644, flags = 0;
    uint64_t offset = 0;
    int has_mode = get_u32(r, T_MODE, &mode, &bad);
    get_u32(r, T_FLAGS, &flags, &bad);
    get_u64(r, T_OFFSET, &offset, &bad);
    const struct field *data = find(r, T_DATA);
    struct ident ident;
    struct stat st;
    int fd = -1, created = 0;
    if (bad || !path || mode > 07777) { reply_error(id, EINVAL, "write_file: needs an absolute path and a mode <= 07777"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "write_file refused: agent runs in host test mode"); goto out; }
    if (owner && resolve_user(owner, &ident, msg, sizeof msg) < 0) { reply_error(id, EINVAL, "write_file: %s", msg); goto out; }
    if (as_user(id, user, "write_file") < 0) goto out;
    if ((flags & WF_MKDIRS) && mkdirs(path) < 0) { reply_error(id, errno, "write_file: mkdir for %s: %s", path, strerror(errno)); goto out; }
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        reply_error(id, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "write_file: %s is not a regular file", path);
        goto out;
    }
    /* O_NONBLOCK: a FIFO put at `path` meanwhile must not block PID 1 (it is refused below). */
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    if (fd >= 0) created = 1;
    else if (errno == EEXIST) fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) { reply_error(id, errno, "write_file: open %s: %s", path, strerror(errno)); goto out; }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) { reply_error(id, EINVAL, "write_file: %s is not a regular file", path); goto out; }
    if (offset == 0 && !created && ftruncate(fd, 0) < 0) { reply_error(id, errno, "write_file: truncate %s: %s", path, strerror(errno)); goto out; }
    size_t done = 0, n = data ? data->n : 0;
    while (done < n) {
        ssize_t w = pwrite(fd, data->p + done, n - done, (off_t)(offset + done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) { reply_error(id, errno, "write_file: write %s: %s", path, strerror(errno)); goto out; }
        done += (size_t)w;
    }
    if (offset == 0 && (((has_mode || created) && fchmod(fd, mode) < 0) || (owner && fchown(fd, ident.uid, ident.gid) < 0))) {
        reply_error(id, errno, "write_file: chmod/chown %s: %s", path, strerror(errno));
        goto out;
    }
    reply_ok(id);
out:
    if (fd >= 0) close(fd);
    free(path); free(owner); free(user);
}

static void handle_read_file(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *user = get_str(r, T_USER, &bad);
    uint64_t offset = 0;
    uint32_t length = CHUNK * 16;
    get_u64(r, T_OFFSET, &offset, &bad);
    get_u32(r, T_LENGTH, &length, &bad);
    struct stat st;
    int fd = -1;
    if (bad || !path || length > (1u << 20) || offset > INT64_MAX) { reply_error(id, EINVAL, "read_file: needs an absolute path and length <= 1 MiB"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "read_file refused: agent runs in host test mode"); goto out; }
    if (as_user(id, user, "read_file") < 0) goto out;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) < 0) { reply_error(id, errno, "read_file: %s: %s", path, strerror(errno)); goto out; }
    if (!S_ISREG(st.st_mode)) { reply_error(id, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "read_file: %s is not a regular file", path); goto out; }
    begin(M_OK, id);
    field_u64(T_SIZE, (uint64_t)st.st_size);
    field_u32(T_MODE, st.st_mode & 07777);
    field_u32(T_UID, st.st_uid);
    field_u32(T_GID, st.st_gid);
    field_u64(T_INO, (uint64_t)st.st_ino);
    field_u64(T_MTIME_NS, (uint64_t)((int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec));
    oreserve(5 + length);
    size_t at = olen;
    ssize_t got = pread(fd, obuf + at + 5, length, (off_t)offset);
    if (got < 0) got = 0;
    obuf[at] = T_DATA;
    put32(obuf + at + 1, (uint32_t)got);
    olen += 5 + (size_t)got;
    end();
out:
    if (fd >= 0) close(fd);
    free(path); free(user);
}

static void handle_stat(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *user = get_str(r, T_USER, &bad);
    struct stat st;
    if (bad || !path) { reply_error(id, EINVAL, "stat: needs an absolute path"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "stat refused: agent runs in host test mode"); goto out; }
    if (as_user(id, user, "stat") < 0) goto out;
    if (lstat(path, &st) < 0) { reply_error(id, errno, "stat %s: %s", path, strerror(errno)); goto out; }
    begin(M_OK, id);
    stat_fields(path, &st);
    end();
out:
    free(path); free(user);
}

/* LIST_DIR: depth-first, names sorted in each directory, symlinks never followed below the top. */
struct walk { uint32_t id; uint32_t max, count, depth; int too_many; };

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void entries_flush(struct walk *w, int reopen) {
    end();
    if (reopen) begin(M_ENTRIES, w->id);
}

/* Entries under `path` (a directory; buffer of PATH_MAX bytes), `level` directories below the top. */
static int walk_dir(struct walk *w, char *path, uint32_t level) {
    DIR *d = opendir(path);
    if (!d) return level == 0 ? -1 : 0;  /* an unreadable subdirectory is listed, not entered */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) { cap = cap ? cap * 2 : 64; names = xrealloc(names, cap * sizeof *names); }
        names[n++] = strdup(e->d_name);
        if (!names[n - 1]) { logmsg("out of memory"); abort(); }
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    size_t base = strlen(path);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        size_t len = strlen(names[i]);
        if (base + 1 + len >= 4096) continue;  /* deeper than PATH_MAX: not representable as a path */
        if (base > 1) path[base] = '/';
        memcpy(path + base + (base > 1), names[i], len + 1);
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (++w->count > w->max) { w->too_many = 1; rc = -1; break; }
            size_t rel = nest_begin(T_ENTRY);
            stat_fields(path, &st);
            nest_end(rel);
            if (frame_size() >= ENTRIES_FRAME) entries_flush(w, 1);
            if (S_ISDIR(st.st_mode) && level + 1 < w->depth) rc = walk_dir(w, path, level + 1);
        }
        path[base] = 0;
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

static void handle_list_dir(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *user = get_str(r, T_USER, &bad);
    uint32_t depth = 1, max = 10000;
    get_u32(r, T_DEPTH, &depth, &bad);
    get_u32(r, T_MAX_ENTRIES, &max, &bad);
    struct stat st;
    if (bad || !path || depth < 1 || depth > 64 || max < 1 || max > MAX_LIST) {
        reply_error(id, EINVAL, "list_dir: needs an absolute path, depth 1..64 and max_entries 1..%d", MAX_LIST);
        goto out;
    }
    if (host_mode) { reply_error(id, EPERM, "list_dir refused: agent runs in host test mode"); goto out; }
    if (as_user(id, user, "list_dir") < 0) goto out;
    if (stat(path, &st) < 0) { reply_error(id, errno, "list_dir %s: %s", path, strerror(errno)); goto out; }
    if (!S_ISDIR(st.st_mode)) { reply_error(id, ENOTDIR, "list_dir %s: Not a directory", path); goto out; }
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    struct walk w = {.id = id, .max = max, .depth = depth};
    begin(M_ENTRIES, id);
    int rc = walk_dir(&w, buf, 0);
    int saved = errno;
    entries_flush(&w, 0);
    if (w.too_many) reply_error(id, E2BIG, "list_dir %s: more than %u entries (max_entries)", path, max);
    else if (rc < 0) reply_error(id, saved, "list_dir %s: %s", path, strerror(saved));
    else { begin(M_OK, id); field_u32(T_COUNT, w.count); end(); }
out:
    free(path); free(user);
}

static void handle_mkdir(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *owner = get_str(r, T_OWNER, &bad), *user = get_str(r, T_USER, &bad), msg[300];
    uint32_t mode = 0755, flags = 0;
    get_u32(r, T_MODE, &mode, &bad);
    get_u32(r, T_FLAGS, &flags, &bad);
    struct ident ident;
    struct stat st;
    int created = 0;
    if (bad || !path || mode > 07777) { reply_error(id, EINVAL, "mkdir: needs an absolute path and a mode <= 07777"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "mkdir refused: agent runs in host test mode"); goto out; }
    if (owner && resolve_user(owner, &ident, msg, sizeof msg) < 0) { reply_error(id, EINVAL, "mkdir: %s", msg); goto out; }
    if (as_user(id, user, "mkdir") < 0) goto out;
    /* Every directory this call creates gets `owner`; missing parents 0755, the last one `mode`. */
    int parents = (flags & MKDIR_PARENTS) != 0;
    for (char *s = parents ? path + 1 : path + strlen(path);; s++) {
        int last = *s == 0;
        if (!last && *s != '/') continue;
        *s = 0;
        if (mkdir(path, 0700) == 0) {
            if (chmod(path, last ? mode : 0755) < 0 || (owner && chown(path, ident.uid, ident.gid) < 0)) {
                reply_error(id, errno, "mkdir: chmod/chown %s: %s", path, strerror(errno));
                goto out;
            }
            created = last;
        } else {
            int err = errno;
            int is_dir = err == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
            if (!is_dir || (last && !parents)) {
                if (err == EEXIST && !last) err = ENOTDIR;  /* a file where a parent directory should be */
                reply_error(id, err, "mkdir %s: %s", path, strerror(err));
                goto out;
            }
        }
        if (last) break;
        *s = '/';
    }
    begin(M_OK, id);
    field_u32(T_STATUS, (uint32_t)created);
    end();
out:
    free(path); free(owner); free(user);
}

/* Remove `name` under `dirfd` and everything below it, never following symlinks or leaving the
   filesystem `dev`. Runs in a forked child (a big tree must not stall PID 1). */
static int rm_tree(int at, const char *name, dev_t dev, int level, char *err, size_t cap) {
    struct stat st;
    if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT && level > 0) return 0;  /* removed meanwhile */
        snprintf(err, cap, "%d %s", errno, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(at, name, 0) == 0 || errno == ENOENT) return 0;
        snprintf(err, cap, "%d cannot remove %s: %s", errno, name, strerror(errno));
        return -1;
    }
    if (level > 0 && st.st_dev != dev) { snprintf(err, cap, "%d %s is a mount point", EBUSY, name); return -1; }
    if (level > 4096) { snprintf(err, cap, "%d directories nested too deep", ELOOP); return -1; }
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        snprintf(err, cap, "%d cannot open %s: %s", errno, name, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    for (int pass = 0; pass < 3; pass++) {  /* entries created while we remove: look again, a few times */
        struct dirent *e;
        int seen = 0;
        rewinddir(d);
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            seen = 1;
            if (rm_tree(dirfd(d), e->d_name, st.st_dev, level + 1, err, cap) < 0) { closedir(d); return -1; }
        }
        if (!seen) break;
    }
    closedir(d);
    if (unlinkat(at, name, AT_REMOVEDIR) == 0 || (errno == ENOENT && level > 0)) return 0;
    snprintf(err, cap, "%d cannot remove %s: %s", errno, name, strerror(errno));
    return -1;
}

static void handle_remove(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *user = get_str(r, T_USER, &bad), msg[300];
    uint32_t flags = 0;
    get_u32(r, T_FLAGS, &flags, &bad);
    struct ident ident;
    struct stat st;
    int p[2];
    struct job *j;
    if (bad || !path) { reply_error(id, EINVAL, "remove: needs an absolute path"); goto out; }
    if (strcmp(path, "/") == 0) { reply_error(id, EINVAL, "remove: refusing to remove /"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "remove refused: agent runs in host test mode"); goto out; }
    if (!(flags & REMOVE_RECURSIVE)) {
        if (as_user(id, user, "remove") < 0) goto out;
        if (lstat(path, &st) < 0 || (S_ISDIR(st.st_mode) ? rmdir(path) : unlink(path)) < 0) {
            reply_error(id, errno, "remove %s: %s", path, strerror(errno));
            goto out;
        }
        reply_ok(id);
        goto out;
    }
    if (user && resolve_user(user, &ident, msg, sizeof msg) < 0) { reply_error(id, EINVAL, "remove: %s", msg); goto out; }
    if (job_in_table(id) || !(j = new_job(id, JOB_TASK))) { reply_error(id, EAGAIN, "remove: no free job slot"); goto out; }
    if (pipe2(p, O_CLOEXEC)) { reply_error(id, errno, "remove: pipe: %s", strerror(errno)); j->used = 0; goto out; }
    pid_t pid = fork();
    if (pid == 0) {
        char err[400] = "", out[600];
        child_signals();
        p[1] = only_fds(p[1]);
        if (user && (setgroups((size_t)ident.ngroups, ident.groups) < 0 || setgid(ident.gid) < 0 || setuid(ident.uid) < 0)) {
            snprintf(err, sizeof err, "%d set user: %s", errno, strerror(errno));
        } else if (rm_tree(AT_FDCWD, path, 0, 0, err, sizeof err) == 0) {
            _exit(0);
        }
        const char *detail = strchr(err, ' ');
        int n = snprintf(out, sizeof out, "%d remove %s: %s", atoi(err), path, detail ? detail + 1 : err);
        if (write(p[1], out, (size_t)(n < (int)sizeof out ? n : (int)sizeof out - 1)) < 0) _exit(2);
        _exit(1);
    }
    close(p[1]);
    if (pid < 0) { reply_error(id, errno, "remove: fork: %s", strerror(errno)); close(p[0]); j->used = 0; goto out; }
    j->pid = pid;
    j->out = p[0];
    fcntl(j->out, F_SETFL, O_NONBLOCK);
out:
    free(path); free(user);
}

static void handle_rename(uint32_t id, const struct req *r) {
    int bad = 0;
    char *from = get_path(r, T_PATH, &bad), *to = get_path(r, T_NEW_PATH, &bad), *user = get_str(r, T_USER, &bad);
    uint32_t flags = 0;
    get_u32(r, T_FLAGS, &flags, &bad);
    if (bad || !from || !to) { reply_error(id, EINVAL, "rename: needs two absolute paths"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "rename refused: agent runs in host test mode"); goto out; }
    if (as_user(id, user, "rename") < 0) goto out;
    if (syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, (flags & RENAME_NO_REPLACE) ? 1u : 0u) < 0) {
        int err = errno;
        reply_error(id, err, "rename %s to %s: %s", from, to,
                    err == EXDEV ? "they are on different filesystems" : strerror(err));
        goto out;
    }
    reply_ok(id);
out:
    free(from); free(to); free(user);
}

static void handle_chmod(uint32_t id, const struct req *r) {
    int bad = 0;
    char *path = get_path(r, T_PATH, &bad), *user = get_str(r, T_USER, &bad);
    uint32_t mode = 0;
    int has_mode = get_u32(r, T_MODE, &mode, &bad);
    if (bad || !path || !has_mode || mode > 07777) { reply_error(id, EINVAL, "chmod: needs an absolute path and a mode <= 07777"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "chmod refused: agent runs in host test mode"); goto out; }
    if (as_user(id, user, "chmod") < 0) goto out;
    if (chmod(path, mode) < 0) { reply_error(id, errno, "chmod %s: %s", path, strerror(errno)); goto out; }
    reply_ok(id);
out:
    free(path); free(user);
}

/* ---------- sync / freeze, post-restore ---------- */

static int frozen_fd = -1;

static void handle_sync(uint32_t id, const struct req *r) {
    int bad = 0;
    uint32_t mode = SYNC_ONLY;
    get_u32(r, T_FLAGS, &mode, &bad);
    if (bad || mode > SYNC_THAW) { reply_error(id, EINVAL, "sync: flags must be 0 (sync), 1 (freeze) or 2 (thaw)"); return; }
    if (host_mode) { reply_error(id, EPERM, "sync refused: agent runs in host test mode"); return; }
    if (mode != SYNC_THAW) sync();
    if (mode == SYNC_FREEZE) {
        if (frozen_fd >= 0) { reply_error(id, EBUSY, "freeze: / is already frozen"); return; }
        frozen_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (frozen_fd < 0 || ioctl(frozen_fd, FIFREEZE, 0) < 0) {
            reply_error(id, errno, "freeze /: %s", strerror(errno));
            close_fd(&frozen_fd);
            return;
        }
    } else if (mode == SYNC_THAW && frozen_fd >= 0) {
        if (ioctl(frozen_fd, FITHAW, 0) < 0 && errno != EINVAL) { reply_error(id, errno, "thaw /: %s", strerror(errno)); return; }
        close_fd(&frozen_fd);
    }
    reply_ok(id);
}

/* Replace the kernel's boot_id as seen in /proc with a fresh one (the real one is read-only). */
static int set_boot_id(const char *uuid) {
    const char *src = "/dev/.amber-boot_id", *dst = "/proc/sys/kernel/random/boot_id";
    int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
    if (fd < 0) return -1;
    int ok = write(fd, uuid, strlen(uuid)) >= 0 && write(fd, "\n", 1) == 1;
    close(fd);
    if (!ok) return -1;
    umount2(dst, MNT_DETACH);  /* an earlier restore may have covered it already */
    return mount(src, dst, NULL, MS_BIND, NULL);
}

static void handle_post_restore(uint32_t id, const struct req *r) {
    int bad = 0;
    uint64_t ns = 0;
    int has_clock = get_u64(r, T_CLOCK_NS, &ns, &bad);
    const struct field *ent = find(r, T_ENTROPY);
    char *boot_id = get_str(r, T_BOOT_ID, &bad), *hostname = get_str(r, T_HOSTNAME, &bad);
    if (bad || (ent && ent->n > 4096)) { reply_error(id, EINVAL, "post_restore: malformed fields"); goto out; }
    if (host_mode) { reply_error(id, EPERM, "post_restore refused: agent runs in host test mode"); goto out; }
    if (has_clock) {
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0) { reply_error(id, errno, "set clock: %s", strerror(errno)); goto out; }
    }
    if (ent && ent->n) {
        /* Credit the host's bytes to the pool, then force the CRNG to rekey so clones diverge at once. */
        struct rand_pool_info *info = xrealloc(NULL, sizeof *info + ent->n);
        info->entropy_count = (int)ent->n * 8;
        info->buf_size = (int)ent->n;
        memcpy(info->buf, ent->p, ent->n);
        int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
        int rc = fd < 0 ? -1 : ioctl(fd, RNDADDENTROPY, info);
        if (rc == 0) rc = ioctl(fd, RNDRESEEDCRNG);
        int saved = errno;
        if (fd >= 0) close(fd);
        free(info);
        if (rc < 0) { reply_error(id, saved, "reseed RNG: %s", strerror(saved)); goto out; }
    }
    if (boot_id && set_boot_id(boot_id) < 0) { reply_error(id, errno, "boot_id: %s", strerror(errno)); goto out; }
    if (hostname && sethostname(hostname, strlen(hostname)) < 0) { reply_error(id, errno, "hostname: %s", strerror(errno)); goto out; }
    /* Output counted against a job's window went to a connection that no longer exists. */
    for (int i = 0; i < MAX_JOBS; i++) jobs[i].unacked = 0;
    reply_ok(id);
out:
    free(boot_id); free(hostname);
}

/* ---------- frame dispatch ---------- */

static struct req request;  /* static: 4096 fields are too big for the stack */

static void dispatch(int type, uint32_t id, const unsigned char *p, uint32_t n) {
    if (type == M_STDIN) { handle_stdin(id, p, n); return; }
    if (parse_fields(p, n, &request) < 0) { reply_error(id, EINVAL, "malformed fields in frame type %d", type); return; }
    user_names.n = group_names.n = 0;
    switch (type) {
    case M_PING:
        begin(M_OK, id);
        field_str(T_VERSION, VERSION);
        end();
        break;
    case M_EXEC: handle_exec(id, &request); break;
    case M_SIGNAL: handle_signal(id, &request); break;
    case M_WRITE_FILE: handle_write_file(id, &request); break;
    case M_READ_FILE: handle_read_file(id, &request); break;
    case M_TCP_PROBE: case M_HTTP_PROBE: handle_probe(id, type, &request); break;
    case M_SYNC: handle_sync(id, &request); break;
    case M_POST_RESTORE: handle_post_restore(id, &request); break;
    case M_SET_ENV: handle_set_env(id, &request); break;
    case M_STAT: handle_stat(id, &request); break;
    case M_LIST_DIR: handle_list_dir(id, &request); break;
    case M_MKDIR: handle_mkdir(id, &request); break;
    case M_REMOVE: handle_remove(id, &request); break;
    case M_RENAME: handle_rename(id, &request); break;
    case M_CHMOD: handle_chmod(id, &request); break;
    case M_ATTACH: handle_attach(id); break;
    case M_ACK: handle_ack(id, &request); break;
    default: reply_error(id, ENOSYS, "unknown request type %d", type);
    }
}

static unsigned char *ibuf;
static size_t ilen;
static int in_garbage;  /* one error reply per run of bytes skipped while resynchronizing */

static void parse_input(void) {
    size_t off = 0;
    while (ilen - off >= HDR) {
        unsigned char *h = ibuf + off;
        if (h[0] != 'A' || h[1] != 'M' || h[3] != 0) {
            if (!in_garbage) reply_error(0, EPROTO, "bad frame header: resynchronizing");
            in_garbage = 1;
            off++;
            continue;
        }
        uint32_t id = get32(h + 4), n = get32(h + 8);
        if (n > MAX_PAYLOAD) {
            reply_error(id, E2BIG, "frame payload of %u bytes exceeds the %u byte limit", n, MAX_PAYLOAD);
            off += 2;  /* skip the magic so the scan resynchronizes on the next frame */
            in_garbage = 1;
            continue;
        }
        if (ilen - off < HDR + n) break;
        in_garbage = 0;
        dispatch(h[2], id, h + HDR, n);
        as_agent();  /* whatever the handler did, the next frame starts as root */
        off += HDR + n;
    }
    if (!off) return;
    memmove(ibuf, ibuf + off, ilen - off);
    explicit_bzero(ibuf + (ilen - off), off);  /* no request (file data, env values) lingers in memory */
    ilen -= off;
}

/* ---------- job output and completion ---------- */

static void pump_pipe(struct job *j, int *fd, int type, size_t limit) {
    unsigned char buf[CHUNK];
    size_t total = 0;
    while (*fd >= 0 && total < limit) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { close_fd(fd); return; }
        total += (size_t)n;
        if (j->kind != JOB_EXEC) {
            j->res = xrealloc(j->res, j->reslen + (size_t)n);
            memcpy(j->res + j->reslen, buf, (size_t)n);
            j->reslen += (size_t)n;
        } else {
            begin(type, j->id);
            raw(buf, (size_t)n);
            end();
            j->unacked += (uint64_t)n;
        }
    }
}

/* Pipes of commands that have ended but whose background children still hold them: read and discarded
   until EOF, so those children never die of SIGPIPE (a start command that backgrounds a server). */
#define MAX_DRAIN 256
static int drain_fds[MAX_DRAIN];
static int ndrain;

static void keep_draining(int *fd) {
    if (*fd < 0) return;
    if (ndrain < MAX_DRAIN) { drain_fds[ndrain++] = *fd; *fd = -1; }
    else close_fd(fd);
}

static void drain(int i) {
    char buf[CHUNK];
    ssize_t n = read(drain_fds[i], buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close(drain_fds[i]);
        drain_fds[i] = drain_fds[--ndrain];
    }
}

static void finish_jobs(void) {
    for (int i = 0; i < MAX_JOBS; i++) {
        struct job *j = &jobs[i];
        if (!j->used || !j->exited) continue;
        /* Forward what the command wrote before it exited; later output of its background children is
           discarded (keep_draining) rather than turned into EPIPE. */
        pump_pipe(j, &j->out, M_STDOUT, 8u << 20);
        pump_pipe(j, &j->err, M_STDERR, 8u << 20);
        keep_draining(&j->out); keep_draining(&j->err); close_fd(&j->in);
        if (j->kind == JOB_EXEC) {
            begin(M_EXIT, j->id);
            if (WIFSIGNALED(j->status)) field_u32(T_SIGNAL, (uint32_t)WTERMSIG(j->status));
            else field_u32(T_EXIT_CODE, (uint32_t)WEXITSTATUS(j->status));
            if (j->timed_out) field(T_TIMED_OUT, NULL, 0);
            end();
        } else if (j->kind == JOB_PROBE) {
            char msg[320];
            size_t n = j->reslen < 300 ? j->reslen : 300;
            memcpy(msg, j->res ? (char *)j->res : "", n);
            msg[n] = 0;
            if (WIFEXITED(j->status) && WEXITSTATUS(j->status) == 0) {
                begin(M_OK, j->id);
                if (n) field_u32(T_STATUS, (uint32_t)atoi(msg));
                end();
            } else {
                reply_error(j->id, ETIMEDOUT, "%s", j->timed_out ? "probe timed out" : n ? msg : "probe failed");
            }
        } else if (j->kind == JOB_TASK) {  /* the child wrote "errno message" if it failed */
            char msg[600];
            size_t n = j->reslen < sizeof msg - 1 ? j->reslen : sizeof msg - 1;
            memcpy(msg, j->res ? (char *)j->res : "", n);
            msg[n] = 0;
            char *text = strchr(msg, ' ');
            if (WIFEXITED(j->status) && WEXITSTATUS(j->status) == 0) reply_ok(j->id);
            else reply_error(j->id, n ? atoi(msg) : EIO, "%s", text ? text + 1 : "remove: the task failed");
        }
        drop_stdin(j);
        free(j->res);
        j->used = 0;
    }
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < MAX_JOBS; i++)
            if (jobs[i].used && jobs[i].pid == pid && !jobs[i].exited) { jobs[i].exited = 1; jobs[i].status = status; }
}

/* ---------- boot ---------- */

static char cmdline[4096];

static const char *cmdline_arg(const char *key, const char *fallback) {
    static char value[256];
    size_t klen = strlen(key);
    for (char *p = cmdline; (p = strstr(p, key)); p += klen)
        if ((p == cmdline || p[-1] == ' ') && p[klen] == '=') {
            size_t n = strcspn(p + klen + 1, " \n");
            if (n >= sizeof value) n = sizeof value - 1;
            memcpy(value, p + klen + 1, n);
            value[n] = 0;
            return value;
        }
    return fallback;
}

static void must(int ok, const char *what) {
    if (ok) return;
    logmsg("boot failed: %s: %s", what, strerror(errno));
    sync();
    _exit(1);  /* PID 1 exiting panics the kernel; the host sees QEMU quit (-no-reboot) */
}

/* Modules in load order; lines "net:NAME" only when the VM has a network (each module costs time under TCG). */
static void load_modules(int network) {
    FILE *f = fopen("/lib/modules/load.list", "re");
    char line[128], path[256];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *name = line;
        if (strncmp(name, "net:", 4) == 0) {
            if (!network) continue;
            name += 4;
        }
        if (!*name) continue;
        snprintf(path, sizeof path, "/lib/modules/%s.ko", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)) logmsg("module %s: %s", name, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (f) fclose(f);
}

static void wait_for(const char *path, int ms) {
    struct stat st;
    for (int i = 0; i < ms / 5 && stat(path, &st) < 0; i++) usleep(5000);
}

static void mount_if(const char *src, const char *dst, const char *type, unsigned long flags, const char *data, mode_t mode) {
    mkdir(dst, mode);
    if (mount(src, dst, type, flags, data) < 0) logmsg("mount %s on %s: %s", type, dst, strerror(errno));
}

static void net_up(const char *ifname, const char *addr, const char *gateway) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    if (addr) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
        sin->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &sin->sin_addr);
        if (ioctl(s, SIOCSIFADDR, &ifr) < 0) logmsg("%s address: %s", ifname, strerror(errno));
        inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
        if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) logmsg("%s netmask: %s", ifname, strerror(errno));
    }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) logmsg("%s up: %s", ifname, strerror(errno));
    } else logmsg("%s: %s", ifname, strerror(errno));
    if (gateway) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway, *dst = (struct sockaddr_in *)&rt.rt_dst,
                           *mask = (struct sockaddr_in *)&rt.rt_genmask;
        gw->sin_family = dst->sin_family = mask->sin_family = AF_INET;
        inet_pton(AF_INET, gateway, &gw->sin_addr);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(s, SIOCADDRT, &rt) < 0) logmsg("default route: %s", strerror(errno));
    }
    close(s);
}

/* Mount the root disk and make it / for the rest of the VM's life. */
static void switch_root(void) {
    const char *root = cmdline_arg("amber.root", "/dev/vda");
    char rootdev[256], fstype[64], flags[256];
    snprintf(rootdev, sizeof rootdev, "%s", root);
    snprintf(fstype, sizeof fstype, "%s", cmdline_arg("amber.rootfstype", "ext4"));
    snprintf(flags, sizeof flags, "%s", cmdline_arg("amber.rootflags", ""));
    wait_for(rootdev, 20000);
    must(mount(rootdev, "/newroot", fstype, 0, *flags ? flags : NULL) == 0, "mount root disk");
    mkdir("/newroot/dev", 0755);
    must(mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) == 0, "move /dev");
    umount2("/proc", MNT_DETACH);
    umount2("/sys", MNT_DETACH);
    must(chdir("/newroot") == 0, "chdir /newroot");
    must(mount(".", "/", NULL, MS_MOVE, NULL) == 0, "move root to /");
    must(chroot(".") == 0, "chroot");
    must(chdir("/") == 0, "chdir /");
    mount_if("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555);
    mount_if("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555);
    mount_if("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666", 0755);
    mount_if("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777);
    const char *links[][2] = {{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
                              {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST) logmsg("symlink %s: %s", links[i][1], strerror(errno));
}

static void set_hostname(void) {
    char name[65] = "amber";
    const char *arg = cmdline_arg("amber.hostname", NULL);
    FILE *f;
    if (arg) snprintf(name, sizeof name, "%s", arg);
    else if ((f = fopen("/etc/hostname", "re"))) {
        if (fgets(name, sizeof name, f)) name[strcspn(name, " \n")] = 0;
        if (!*name) snprintf(name, sizeof name, "amber");
        fclose(f);
    }
    if (sethostname(name, strlen(name)) < 0) logmsg("sethostname: %s", strerror(errno));
}

/* The virtio-serial port whose name (in /sys/class/virtio-ports/<dev>/name) is `want`, opened once. */
static int open_port(const char *want) {
    for (int tries = 0; tries < 4000; tries++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[300], name[128] = "";
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            FILE *f = fopen(path, "re");
            if (!f) continue;
            if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
            fclose(f);
            if (strcmp(name, want) != 0) continue;
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            wait_for(path, 2000);
            int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
            closedir(d);
            return fd;
        }
        if (d) closedir(d);
        usleep(5000);
    }
    errno = ENOENT;
    return -1;
}

static void boot(void) {
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    int console = open("/dev/console", O_RDWR | O_NOCTTY);
    if (console >= 0) { dup2(console, 0); dup2(console, 1); dup2(console, 2); if (console > 2) close(console); }
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
    if (n > 0) cmdline[n] = 0;
    if (fd >= 0) close(fd);
    int network = strcmp(cmdline_arg("amber.net", "0"), "1") == 0;
    load_modules(network);
    switch_root();
    set_hostname();
    net_up("lo", "127.0.0.1", NULL);
    if (network) {
        net_up("eth0", "10.0.2.15", "10.0.2.2");  /* QEMU user-mode network defaults */
        int rf = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (rf >= 0) { if (write(rf, "nameserver 10.0.2.3\n", 20) < 0) logmsg("resolv.conf: %s", strerror(errno)); close(rf); }
    }
    in_fd = out_fd = open_port(cmdline_arg("amber.port", "amber.agent"));
    must(in_fd >= 0, "open the agent port");
    /* SIGIO tells us when the host (re)connects: virtio_console signals async owners on port open. */
    fcntl(in_fd, F_SETOWN, getpid());
    fcntl(in_fd, F_SETFL, O_RDWR | O_NONBLOCK | O_ASYNC);
    logmsg("ready");
}

/* ---------- main loop ---------- */

/* Host test mode only: the input ended, so write out every queued reply and stop. */
static int finish_host_mode(void) {
    fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) & ~O_NONBLOCK);
    while (opending()) {
        ssize_t w = write(out_fd, obuf + ohead, opending());
        if (w <= 0) return 1;
        ohead += (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Up to MAX_JOBS * 3 pipe ends + MAX_DRAIN: raise our soft fd limit; children get the original back. */
    getrlimit(RLIMIT_NOFILE, &child_nofile);
    struct rlimit mine = child_nofile;
    mine.rlim_cur = mine.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &mine) < 0) logmsg("fd limit: %s", strerror(errno));
    n_agent_groups = getgroups(256, agent_groups);
    if (n_agent_groups < 0) n_agent_groups = 0;
    if (getpid() != 1) {
        if (argc < 2 || strcmp(argv[1], "--serve-stdio") != 0) {
            fprintf(stderr, "usage: amber-agent --serve-stdio   (as PID 1 it boots the VM)\n");
            return 2;
        }
        host_mode = 1;
        in_fd = 0;
        out_fd = 1;
        fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) | O_NONBLOCK);
    } else {
        boot();
    }
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    size_t icap = HDR + MAX_PAYLOAD + CHUNK;
    ibuf = xrealloc(NULL, icap);
    int hup = 0;
    for (;;) {
        struct pollfd pfd[2 + 3 * MAX_JOBS + MAX_DRAIN];
        struct { struct job *j; int which; } who[2 + 3 * MAX_JOBS + MAX_DRAIN];
        int np = 0;
        pfd[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        int port_slot = -1;
        if (!hup) {
            port_slot = np;
            pfd[np++] = (struct pollfd){.fd = in_fd, .events = (short)(POLLIN | (opending() && out_fd == in_fd ? POLLOUT : 0))};
        }
        int out_slot = -1;
        if (out_fd != in_fd && opending()) { out_slot = np; pfd[np++] = (struct pollfd){.fd = out_fd, .events = POLLOUT}; }
        int64_t now = now_ms(), wait = hup ? 1000 : -1;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used || j->exited) continue;
            /* Backpressure: a slow host (or a full window) stalls the command, not our memory. */
            if (opending() < HIGH_WATER && (!j->window || j->unacked < j->window)) {
                if (j->out >= 0) { who[np].j = j; who[np].which = 1; pfd[np++] = (struct pollfd){.fd = j->out, .events = POLLIN}; }
                if (j->err >= 0) { who[np].j = j; who[np].which = 2; pfd[np++] = (struct pollfd){.fd = j->err, .events = POLLIN}; }
            }
            if (j->in >= 0 && j->inoff < j->inlen) { who[np].j = j; who[np].which = 3; pfd[np++] = (struct pollfd){.fd = j->in, .events = POLLOUT}; }
            if (j->deadline && !j->timed_out) {  /* a killed job only waits to be reaped: no busy loop */
                int64_t left = j->deadline - now;
                if (left < 0) left = 0;
                if (wait < 0 || left < wait) wait = left;
            }
        }
        int drain_slot = np;
        for (int i = 0; i < ndrain; i++) pfd[np++] = (struct pollfd){.fd = drain_fds[i], .events = POLLIN};
        if (poll(pfd, (nfds_t)np, (int)wait) < 0 && errno != EINTR) { logmsg("poll: %s", strerror(errno)); usleep(10000); continue; }
        if (pfd[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                if (si.ssi_signo == SIGIO) hup = 0;  /* host connection changed: look at the port again */
            reap();
        }
        if (hup && !host_mode) {
            hup = 0;  /* after the fallback timeout or SIGIO: re-check the port */
        } else if (port_slot >= 0 && pfd[port_slot].revents) {
            short re = pfd[port_slot].revents;
            if (re & POLLIN) {
                ssize_t n = read(in_fd, ibuf + ilen, icap - ilen);
                if (n > 0) { ilen += (size_t)n; parse_input(); }
                else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    if (host_mode) return finish_host_mode();  /* stdin closed: the host test is over */
                    hup = 1; ilen = 0;
                }
            } else if (re & (POLLHUP | POLLERR)) {
                if (host_mode) return finish_host_mode();
                hup = 1; ilen = 0;  /* host gone: a partial frame from it is worthless */
            }
        }
        if (opending() && (port_slot >= 0 || out_slot >= 0) && !hup) {
            ssize_t w = write(out_fd, obuf + ohead, opending());
            if (w > 0) ohead += (size_t)w;
            if (ohead == olen) ohead = olen = 0;  /* all sent: reuse the buffer from its start */
            if (w < 0 && errno != EAGAIN && errno != EINTR && host_mode) return 0;
        }
        for (int i = ndrain - 1; i >= 0; i--)  /* backwards: drain() may move the last entry into slot i */
            if (pfd[drain_slot + i].revents) drain(i);
        for (int i = 1; i < drain_slot; i++) {
            if (!pfd[i].revents || i == port_slot || i == out_slot) continue;
            struct job *j = who[i].j;
            if (who[i].which == 1) pump_pipe(j, &j->out, M_STDOUT, CHUNK * 2);
            else if (who[i].which == 2) pump_pipe(j, &j->err, M_STDERR, CHUNK * 2);
            else if (j->in >= 0) {
                ssize_t w = write(j->in, j->inbuf + j->inoff, j->inlen - j->inoff);
                if (w > 0) { j->inoff += (size_t)w; j->stdin_done += (size_t)w; }
                else if (w < 0 && errno != EAGAIN && errno != EINTR) { close_fd(&j->in); drop_stdin(j); }
                if (j->inoff == j->inlen) { drop_stdin(j); if (!j->in_open) close_fd(&j->in); }
            }
        }
        /* Stdin credit for the host: what reached each command (or was dropped) since the last report. */
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used || j->exited || !j->stdin_done || (j->stdin_done < STDIN_ACK_EVERY && j->inoff < j->inlen)) continue;
            begin(M_STDIN_ACK, j->id);
            field_u32(T_LENGTH, (uint32_t)j->stdin_done);
            end();
            j->stdin_done = 0;
        }
        now = now_ms();
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (j->used && !j->exited && j->deadline && now >= j->deadline && !j->timed_out) {
                j->timed_out = 1;
                kill(-j->pid, SIGKILL);
                kill(j->pid, SIGKILL);
            }
        }
        reap();
        finish_jobs();
    }
}
