"""A busybox-static root filesystem tree, built from the host's /bin/busybox (Debian busybox-static).

Shared by the OCI, rootfs and VM tests: it is the smallest real Linux userland we can make offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "app:x:1000:1000:app user:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n"


def require_busybox() -> Path:
    if not BUSYBOX.exists():
        raise RuntimeError("busybox-static is missing: /bin/busybox not found (run `make test` to install it)")
    return BUSYBOX


def applets() -> list[str]:
    out = subprocess.run([str(require_busybox()), "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and a != "busybox"]


def make_busybox_tree(root: Path) -> Path:
    """Write a minimal busybox rootfs into ``root`` (created if needed) and return it.

    Layout: /bin/busybox plus one symlink per applet, /etc/passwd and /etc/group with root, app (1000)
    and nobody, /tmp (1777), /root, /home/app (owned by 1000), empty /proc /sys /dev mount points.
    """
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "etc", "root", "tmp", "proc", "sys", "dev", "home/app", "var", "usr/bin", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(require_busybox(), root / "bin" / "busybox")
    for applet in applets():
        link = root / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "hostname").write_text("amber\n")
    os.chown(root / "home" / "app", 1000, 1000)
    return root
