"""Room for the outcome store's next commits: what ``router.health()``'s probe checks, and the reason given for a
write SQLite refused with only "disk I/O error".

A full disk (``ENOSPC``) SQLite reports as such ("database or disk is full"), and the disk's free space shows it.
A disk quota (``EDQUOT``) and a file size limit (``EFBIG``: the process's ``RLIMIT_FSIZE``, ``ulimit -f``) fail the
same writes, but SQLite reports both as "disk I/O error" (``SQLITE_IOERR_WRITE``) and the free space shows neither:
``no_room`` looks for each, so they are reported as a full disk is.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
from pathlib import Path

from genroute.outcomes.sqlite_files import wal_file

#: The least room for the outcome store's probe to pass: a commit of a few records (16 pages of 4 KB).
ROOM_BYTES = 64 * 1024
#: What a write meets when there is no room for it (``EDQUOT`` is not defined everywhere).
_NO_ROOM = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if code is not None)


def no_room(path: Path, need: int = ROOM_BYTES) -> OSError | None:
    """The error a write of ``need`` bytes more to the store at ``path`` (its file, ``-wal`` or ``-shm``) would meet,
    worded for an operator, or ``None``: ``ENOSPC``, the disk's free space (root's: with the blocks kept for root,
    which its writes may use); ``EFBIG``, the process's file size limit; ``EDQUOT`` (or another of these), ``need``
    bytes allocated in an unnamed file beside it, then freed (a quota is this user's)."""
    disk = os.statvfs(path.parent)
    free = (disk.f_bfree if os.geteuid() == 0 else disk.f_bavail) * disk.f_frsize
    if free < need:
        return OSError(errno.ENOSPC, f"the disk holding the outcome store {str(path)!r} has {free} bytes free (less "
                                     f"than {need})")
    limit = _size_limit()
    if limit is not None:
        largest = max((_size(p) for p in (path, *_beside(path))), default=0)
        if largest + need > limit:
            return OSError(errno.EFBIG, f"the outcome store {str(path)!r} has a {largest}-byte file, and this "
                                        f"process may write no file past {limit} bytes (RLIMIT_FSIZE, ulimit -f)")
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:  # no way to ask without writing
        return None
    try:
        with tempfile.TemporaryFile(dir=path.parent) as probe:
            allocate(probe.fileno(), 0, need)
    except OSError as exc:
        if exc.errno not in _NO_ROOM:  # a directory it cannot write in, a filesystem without fallocate: unknown
            return None
        return OSError(exc.errno, f"{need} bytes could not be allocated beside the outcome store {str(path)!r} "
                                  f"({exc.strerror}), though its disk has {free} bytes free")
    return None


def hidden_cause(path: Path, exc: sqlite3.OperationalError) -> OSError | None:
    """For a write SQLite refused with an I/O error (``SQLITE_IOERR``: its word for a quota or a file size limit
    reached, and for a full disk where its ``-wal`` or ``-shm`` file cannot grow), the error ``no_room`` finds;
    ``None`` for any other failure, or when there is room after all."""
    if exc.sqlite_errorcode is None or exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_IOERR:
        return None
    try:
        return no_room(path)
    except OSError:  # the directory gone meanwhile: SQLite's own error says what happened
        return None


def _size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _beside(path: Path) -> tuple[Path, Path]:
    return wal_file(path), path.with_name(path.name + "-shm")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
