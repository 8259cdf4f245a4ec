"""What the agent's file requests answer: ``FileStat`` (STAT, LIST_DIR) and ``FileInfo`` (READ_FILE)."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from amber.vm.protocol import Frame, Tag, WireFileType


@dataclass(frozen=True)
class FileInfo:
    """A whole file read by ``read_file`` with its mode and owner ids."""

    data: bytes
    mode: int
    uid: int
    gid: int


class FileType(StrEnum):
    """What a path is (the machines API's FileInfo ``type`` vocabulary)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


_FILE_TYPES: Final[dict[int, FileType]] = {
    WireFileType.FILE: FileType.FILE,
    WireFileType.DIR: FileType.DIR,
    WireFileType.SYMLINK: FileType.SYMLINK,
}


@dataclass(frozen=True)
class FileStat:
    """One path as the guest sees it (``lstat``: a symlink is reported, not followed).

    ``mode`` holds the permission bits with set-id and sticky bits (``st_mode & 0o7777``); ``user`` and
    ``group`` are names from the guest's /etc/passwd and /etc/group (None when the id has no name there).
    """

    path: str
    type: FileType
    size: int
    mode: int
    uid: int
    gid: int
    user: str | None
    group: str | None
    mtime_ns: int
    symlink_target: str | None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or "/"

    @property
    def is_dir(self) -> bool:
        return self.type == FileType.DIR

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)

    @classmethod
    def from_frame(cls, frame: Frame) -> FileStat:
        mtime = frame.u64(Tag.MTIME_NS) or 0
        if mtime >= 1 << 63:  # signed on the wire: before 1970
            mtime -= 1 << 64
        target = frame.get(Tag.TARGET)
        return cls(
            path=frame.text(Tag.PATH) or "",
            type=_FILE_TYPES.get(frame.u32(Tag.FTYPE) or 0, FileType.OTHER),
            size=frame.u64(Tag.SIZE) or 0,
            mode=frame.u32(Tag.MODE) or 0,
            uid=frame.u32(Tag.UID) or 0,
            gid=frame.u32(Tag.GID) or 0,
            user=frame.text(Tag.UNAME),
            group=frame.text(Tag.GNAME),
            mtime_ns=mtime,
            symlink_target=None if target is None else os.fsdecode(target),
        )
