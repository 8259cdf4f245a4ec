"""File operations of the guest agent (the machines files API underneath), as root and as a guest user."""

from __future__ import annotations

import errno
import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from amber.vm import AgentError, FileType, MicroVM


def sh(vm: MicroVM, script: str) -> str:
    r = vm.exec(shell=script)
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode()


@pytest.fixture(autouse=True)
def scratch(vm: MicroVM) -> Iterator[None]:
    """/tmp/t: a fresh directory tree for each test, owned by root, plus /home/app/t owned by app."""
    sh(vm, "rm -rf /tmp/t /home/app/t; mkdir -p /tmp/t; mkdir /home/app/t; chown app:app /home/app/t")
    yield
    sh(vm, "umount /tmp/t/d/mnt 2>/dev/null; rm -rf /tmp/t /home/app/t /dev/shm/t")


def agent_errno(excinfo: pytest.ExceptionInfo[AgentError]) -> int:
    return excinfo.value.errno


def test_stat_reports_type_size_mode_owner_names_mtime_and_link_target(vm: MicroVM) -> None:
    sh(vm, "cd /tmp/t && printf hello > f && chown app:staff f && chmod 4751 f && mkdir d && ln -s f link "
           "&& ln -s /nowhere dangling && touch -d '2001-02-03 04:05:06' f")
    f = vm.agent.stat("/tmp/t/f")
    assert (f.path, f.name, f.type, f.size, f.mode, f.uid, f.gid, f.user, f.group) == (
        "/tmp/t/f", "f", FileType.FILE, 5, 0o4751, 1000, 50, "app", "staff")
    assert f.mtime.year == 2001 and f.symlink_target is None and not f.is_dir
    d = vm.agent.stat("/tmp/t/d/")  # trailing slashes are ignored
    assert (d.path, d.type, d.is_dir, d.user, d.group) == ("/tmp/t/d", FileType.DIR, True, "root", "root")
    assert abs(d.mtime.timestamp() - time.time()) < 120
    link = vm.agent.stat("/tmp/t/link")  # lstat: the link itself
    assert (link.type, link.symlink_target, link.size) == (FileType.SYMLINK, "f", 1)
    assert vm.agent.stat("/tmp/t/dangling").symlink_target == "/nowhere"
    assert vm.agent.stat("/dev/null").type == FileType.OTHER
    # An id without a name in /etc/passwd and /etc/group has no name.
    sh(vm, "touch /tmp/t/n && chown 4321:4322 /tmp/t/n")
    n = vm.agent.stat("/tmp/t/n")
    assert (n.uid, n.gid, n.user, n.group) == (4321, 4322, None, None)


def test_stat_errors_carry_errno_and_name_only_the_guest_path(vm: MicroVM) -> None:
    with pytest.raises(AgentError) as e:
        vm.agent.stat("/tmp/t/missing")
    assert agent_errno(e) == errno.ENOENT and str(e.value) == "stat /tmp/t/missing: No such file or directory"
    sh(vm, "touch /tmp/t/file")
    with pytest.raises(AgentError) as e:
        vm.agent.stat("/tmp/t/file/below")
    assert agent_errno(e) == errno.ENOTDIR
    sh(vm, "touch /root/private")
    with pytest.raises(AgentError) as e:
        vm.agent.stat("/root/private", user="app")  # /root is 0700
    assert agent_errno(e) == errno.EACCES
    assert vm.agent.stat("/root/private").user == "root"  # and root again right after
    with pytest.raises(AgentError, match="user nosuch not found") as e:
        vm.agent.stat("/tmp", user="nosuch")
    assert agent_errno(e) == errno.EINVAL
    assert vm.agent.exists("/tmp/t/file") and not vm.agent.exists("/tmp/t/missing")
    assert not vm.agent.exists("/tmp/t/file/below")
    with pytest.raises(AgentError):
        vm.agent.exists("/root/private", user="app")  # not knowing is not "absent"


def test_list_dir_by_depth_sorted_without_following_symlinks(vm: MicroVM) -> None:
    sh(vm, "cd /tmp/t && mkdir -p b/c/deep a && touch b/z b/y a/x b/c/deep/w && ln -s /etc l")
    children = vm.agent.list_dir("/tmp/t")
    assert [(e.name, e.type) for e in children] == [("a", FileType.DIR), ("b", FileType.DIR),
                                                     ("l", FileType.SYMLINK)]
    two = [e.path for e in vm.agent.list_dir("/tmp/t", depth=2)]
    assert two == ["/tmp/t/a", "/tmp/t/a/x", "/tmp/t/b", "/tmp/t/b/c", "/tmp/t/b/y", "/tmp/t/b/z", "/tmp/t/l"]
    everything = [e.path for e in vm.agent.list_dir("/tmp/t", depth=10)]
    assert "/tmp/t/b/c/deep/w" in everything and not any(p.startswith("/tmp/t/l/") for p in everything)
    assert [e.path for e in vm.agent.list_dir("/tmp/t/l")][:1] == ["/tmp/t/l/group"]  # the top may be a link
    assert vm.agent.list_dir("/tmp/t/a/")[0].path == "/tmp/t/a/x"
    assert {e.path for e in vm.agent.list_dir("/", depth=1)} >= {"/tmp", "/etc", "/bin"}


def test_list_dir_limits_and_errors(vm: MicroVM) -> None:
    sh(vm, "cd /tmp/t && i=0; while [ $i -lt 30 ]; do touch f$i; i=$((i+1)); done")
    assert len(vm.agent.list_dir("/tmp/t", max_entries=30)) == 30
    with pytest.raises(AgentError, match="more than 29 entries") as e:
        vm.agent.list_dir("/tmp/t", max_entries=29)
    assert agent_errno(e) == errno.E2BIG
    with pytest.raises(AgentError) as e:
        vm.agent.list_dir("/tmp/t/f1")
    assert agent_errno(e) == errno.ENOTDIR
    with pytest.raises(AgentError) as e:
        vm.agent.list_dir("/root", user="app")
    assert agent_errno(e) == errno.EACCES
    with pytest.raises(ValueError):
        vm.agent.list_dir("/tmp", depth=0)
    # An unreadable subdirectory is listed but not entered.
    sh(vm, "mkdir -p /home/app/t/open /home/app/t/closed && touch /home/app/t/closed/secret "
           "&& chmod 700 /home/app/t/closed")
    seen = [e.path for e in vm.agent.list_dir("/home/app/t", depth=3, user="daemon")]
    assert seen == ["/home/app/t/closed", "/home/app/t/open"]


def test_mkdir_parents_mode_owner_and_as_user(vm: MicroVM) -> None:
    assert vm.agent.mkdir("/tmp/t/x/y/z", mode=0o700, owner="app:staff") is True
    out = sh(vm, "stat -c '%n %a %u %g' /tmp/t/x /tmp/t/x/y /tmp/t/x/y/z")
    assert out.splitlines() == ["/tmp/t/x 755 1000 50", "/tmp/t/x/y 755 1000 50", "/tmp/t/x/y/z 700 1000 50"]
    assert vm.agent.mkdir("/tmp/t/x/y/z") is False  # parents=True: an existing directory is fine
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/tmp/t/x/y/z", parents=False)
    assert agent_errno(e) == errno.EEXIST
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/tmp/t/no/such/parent", parents=False)
    assert agent_errno(e) == errno.ENOENT
    sh(vm, "touch /tmp/t/file")
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/tmp/t/file")
    assert agent_errno(e) == errno.EEXIST
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/tmp/t/file/sub")
    assert agent_errno(e) == errno.ENOTDIR
    assert vm.agent.mkdir("/home/app/t/mine/sub", user="app", mode=0o750)
    assert sh(vm, "stat -c '%u %g %a' /home/app/t/mine/sub") == "1000 1000 750\n"
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/root/nope", user="app")
    assert agent_errno(e) == errno.EACCES
    with pytest.raises(AgentError) as e:
        vm.agent.mkdir("/home/app/t/given", user="app", owner="root")  # chown to another user needs root
    assert agent_errno(e) == errno.EPERM


def test_remove_files_dirs_and_trees(vm: MicroVM) -> None:
    sh(vm, "cd /tmp/t && touch f && mkdir e && mkdir -p d/a/b && touch d/a/b/c d/x && ln -s /tmp/t/keep d/link "
           "&& mkdir keep && touch keep/precious")
    vm.agent.remove("/tmp/t/f")
    vm.agent.remove("/tmp/t/e")
    with pytest.raises(AgentError) as e:
        vm.agent.remove("/tmp/t/d")
    assert agent_errno(e) == errno.ENOTEMPTY
    vm.agent.remove("/tmp/t/d", recursive=True)
    assert sh(vm, "ls /tmp/t; ls /tmp/t/keep") == "keep\nprecious\n"  # the symlink's target survived
    with pytest.raises(AgentError) as e:
        vm.agent.remove("/tmp/t/missing")
    assert agent_errno(e) == errno.ENOENT
    with pytest.raises(AgentError) as e:
        vm.agent.remove("/tmp/t/missing", recursive=True)
    assert agent_errno(e) == errno.ENOENT
    with pytest.raises(AgentError, match="refusing to remove /") as e:
        vm.agent.remove("/", recursive=True)
    assert agent_errno(e) == errno.EINVAL
    # Never into another filesystem: a mount below stays, with a clear error.
    sh(vm, "mkdir -p /tmp/t/d/mnt && mount -t tmpfs none /tmp/t/d/mnt && touch /tmp/t/d/mnt/other-fs")
    with pytest.raises(AgentError, match="is a mount point") as e:
        vm.agent.remove("/tmp/t/d", recursive=True)
    assert agent_errno(e) == errno.EBUSY
    assert sh(vm, "ls /tmp/t/d/mnt") == "other-fs\n"


def test_remove_as_a_user_checks_its_permissions(vm: MicroVM) -> None:
    sh(vm, "touch /tmp/t/roots")  # /tmp/t: root's, 0755
    with pytest.raises(AgentError) as e:
        vm.agent.remove("/tmp/t/roots", user="app")
    assert agent_errno(e) == errno.EACCES
    sh(vm, "chmod 1777 /tmp/t")  # sticky: only the owner may remove
    with pytest.raises(AgentError) as e:
        vm.agent.remove("/tmp/t/roots", user="app")
    assert agent_errno(e) == errno.EPERM
    sh(vm, "chmod 0777 /tmp/t")
    vm.agent.remove("/tmp/t/roots", user="app")
    assert not vm.agent.exists("/tmp/t/roots")
    sh(vm, "mkdir -p /home/app/t/tree/sub && touch /home/app/t/tree/sub/f && chown -R app /home/app/t/tree "
           "&& mkdir /home/app/t/tree/rootdir && touch /home/app/t/tree/rootdir/r")
    with pytest.raises(AgentError, match="remove /home/app/t/tree: cannot remove r: Permission denied") as e:
        vm.agent.remove("/home/app/t/tree", recursive=True, user="app")
    assert agent_errno(e) == errno.EACCES
    assert sh(vm, "ls /home/app/t/tree/rootdir") == "r\n"  # root's file is still there


def test_rename_across_directories_replace_and_filesystems(vm: MicroVM) -> None:
    sh(vm, "cd /tmp/t && mkdir a b && echo one > a/f && echo two > b/g && mkdir -p /dev/shm/t")
    vm.agent.rename("/tmp/t/a/f", "/tmp/t/b/f")
    assert sh(vm, "ls /tmp/t/a; cat /tmp/t/b/f") == "one\n"
    with pytest.raises(AgentError) as e:
        vm.agent.rename("/tmp/t/b/f", "/tmp/t/b/g", replace=False)
    assert agent_errno(e) == errno.EEXIST
    vm.agent.rename("/tmp/t/b/f", "/tmp/t/b/g")
    assert sh(vm, "ls /tmp/t/b; cat /tmp/t/b/g") == "g\none\n"
    with pytest.raises(AgentError, match="different filesystems") as e:
        vm.agent.rename("/tmp/t/b/g", "/dev/shm/t/g")  # ext4 root -> tmpfs
    assert agent_errno(e) == errno.EXDEV
    with pytest.raises(AgentError) as e:
        vm.agent.rename("/tmp/t/b/missing", "/tmp/t/b/x")
    assert agent_errno(e) == errno.ENOENT
    sh(vm, "echo mine > /home/app/t/m && chown app /home/app/t/m")
    vm.agent.rename("/home/app/t/m", "/home/app/t/renamed", user="app")
    with pytest.raises(AgentError) as e:
        vm.agent.rename("/home/app/t/renamed", "/tmp/t/stolen", user="app")  # /tmp/t is not app's to write
    assert agent_errno(e) == errno.EACCES


def test_chmod_as_root_and_as_a_user(vm: MicroVM) -> None:
    sh(vm, "touch /tmp/t/f /home/app/t/g && chown app /home/app/t/g")
    vm.agent.chmod("/tmp/t/f", 0o2755)
    assert vm.agent.stat("/tmp/t/f").mode == 0o2755
    vm.agent.chmod("/home/app/t/g", 0o600, user="app")
    assert vm.agent.stat("/home/app/t/g").mode == 0o600
    with pytest.raises(AgentError) as e:
        vm.agent.chmod("/tmp/t/f", 0o777, user="app")
    assert agent_errno(e) == errno.EPERM
    with pytest.raises(ValueError):
        vm.agent.chmod("/tmp/t/f", 0o17777)


def test_chunked_round_trip_as_root_and_as_a_user(vm: MicroVM) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    pieces = (data[i:i + 100_000] for i in range(0, len(data), 100_000))  # any sizes in, 1 MiB frames out
    assert vm.agent.write_file_chunks("/tmp/t/big", pieces) == len(data)
    assert sh(vm, "sha256sum /tmp/t/big | cut -d' ' -f1").strip() == hashlib.sha256(data).hexdigest()
    assert vm.agent.stat("/tmp/t/big").mode == 0o644
    chunks = list(vm.agent.read_file_chunks("/tmp/t/big"))
    assert [len(c) for c in chunks] == [1 << 20] * 3 + [12345] and b"".join(chunks) == data
    part = b"".join(vm.agent.read_file_chunks("/tmp/t/big", offset=1000, length=2_500_000, chunk=300_000))
    assert part == data[1000:2_501_000]
    assert list(vm.agent.read_file_chunks("/tmp/t/big", offset=len(data))) == []
    reader = vm.agent.read_file_chunks("/tmp/t/big")
    assert len(next(reader)) == 1 << 20
    reader.close()  # stopping early leaves nothing behind on the connection
    assert vm.agent.ping().startswith("amber-agent")
    # An existing file keeps its mode unless one is given; owner and parents on request.
    sh(vm, "chmod 600 /tmp/t/big")
    vm.agent.write_file_chunks("/tmp/t/big", [b"short"])
    assert (vm.agent.stat("/tmp/t/big").mode, sh(vm, "cat /tmp/t/big")) == (0o600, "short")
    vm.agent.write_file_chunks("/tmp/t/new/dir/f", iter([]), make_parents=True, mode=0o640, owner="app:staff")
    f = vm.agent.stat("/tmp/t/new/dir/f")
    assert (f.size, f.mode, f.user, f.group) == (0, 0o640, "app", "staff")
    # As a user: its files, its permissions.
    vm.agent.write_file_chunks("/home/app/t/mine", [b"a" * 10, b"b" * 10], user="app")
    mine = vm.agent.stat("/home/app/t/mine")
    assert (mine.uid, mine.gid, mine.size) == (1000, 1000, 20)
    assert b"".join(vm.agent.read_file_chunks("/home/app/t/mine", user="app")) == b"a" * 10 + b"b" * 10
    sh(vm, "echo secret > /root/secret && chmod 600 /root/secret")
    with pytest.raises(AgentError) as e:
        b"".join(vm.agent.read_file_chunks("/root/secret", user="app"))
    assert agent_errno(e) == errno.EACCES
    with pytest.raises(AgentError) as e:
        vm.agent.write_file_chunks("/root/x", [b"x"], user="app")
    assert agent_errno(e) == errno.EACCES
    with pytest.raises(AgentError) as e:
        b"".join(vm.agent.read_file_chunks("/tmp/t"))
    assert agent_errno(e) == errno.EISDIR
    with pytest.raises(AgentError) as e:
        vm.agent.write_file_chunks("/tmp/t", [b"x"])
    assert agent_errno(e) == errno.EISDIR
    with pytest.raises(AgentError) as e:
        b"".join(vm.agent.read_file_chunks("/tmp/t/missing"))
    assert agent_errno(e) == errno.ENOENT
    sh(vm, "mkfifo /tmp/t/fifo")  # must not block PID 1
    with pytest.raises(AgentError, match="not a regular file"):
        b"".join(vm.agent.read_file_chunks("/tmp/t/fifo"))
    with pytest.raises(AgentError, match="not a regular file"):
        vm.agent.write_file_chunks("/tmp/t/fifo", [b"x"])


def test_atomic_write_replaces_in_one_step_and_leaves_no_temporary(vm: MicroVM) -> None:
    sh(vm, "echo old > /tmp/t/f && chmod 640 /tmp/t/f")
    vm.agent.write_file_chunks("/tmp/t/f", [b"new ", b"content"], atomic=True)
    assert sh(vm, "cat /tmp/t/f; ls -a /tmp/t") == "new content.\n..\nf\n"
    assert vm.agent.stat("/tmp/t/f").mode == 0o640  # the replaced file's mode is kept

    def failing() -> Iterator[bytes]:
        yield b"x" * (2 << 20)
        raise RuntimeError("the upload broke")

    with pytest.raises(RuntimeError, match="the upload broke"):
        vm.agent.write_file_chunks("/tmp/t/f", failing(), atomic=True)
    assert sh(vm, "cat /tmp/t/f; ls -a /tmp/t") == "new content.\n..\nf\n"


def test_transfers_never_hold_the_whole_file_on_the_host(vm: MicroVM) -> None:
    size = 24 << 20

    def produce() -> Iterator[bytes]:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            yield block

    tracemalloc.start()
    try:
        assert vm.agent.write_file_chunks("/dev/shm/t-big", produce()) == size
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = sum(len(c) for c in vm.agent.read_file_chunks("/dev/shm/t-big"))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        vm.exec(["rm", "-f", "/dev/shm/t-big"])
    assert total == size
    assert write_peak < 12 << 20 and read_peak < 12 << 20, (write_peak, read_peak)  # a few chunks, not 24 MiB
