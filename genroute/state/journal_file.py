"""The checks a ``state.journal`` file passes before a router uses it (``genroute.state.journal``): what cannot be the
journal, or that another user could write into, is a ``ConfigError`` naming ``state.journal``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from genroute.errors import ConfigError

FIELD = "state.journal"


def _check_directory(directory: Path) -> None:
    """Refuse a directory that another user owns or may write (``/tmp``, sticky or not): SQLite makes the journal's
    ``-wal`` and ``-shm`` files beside it and reads a ``-wal`` it finds there, and the owners' locks are there too, so
    whoever may add files to it could add rows this router replays to the shared budget, or free a live owner's rows."""
    found = directory.stat()
    me = os.geteuid()
    if found.st_uid not in (me, 0):
        raise ConfigError(f"the journal's directory {directory} belongs to another user (uid {found.st_uid}; you are "
                          f"uid {me}), who could put a -wal file beside the journal that this router would replay to "
                          "the shared budget: name a file in a directory of your own (one genroute makes is 0700)",
                          field=FIELD)
    if stat.S_ISDIR(found.st_mode) and found.st_mode & 0o022:
        raise ConfigError(f"the journal's directory {directory} may be written by its group or other users (mode "
                          f"{stat.S_IMODE(found.st_mode):o}), who could put a -wal file beside the journal that this "
                          "router would replay to the shared budget: name a file in a directory only you can write "
                          "(one genroute makes is 0700)", field=FIELD)


def check_file(path: Path) -> None:
    """Refuse what cannot be the journal (a directory, a link, a file another user owns or may write, or one in a
    directory they may write); make the file (and the directories up to it that are missing, 0700) readable and
    writable by its owner only when missing."""
    try:
        import fcntl  # noqa: F401 - the owners' locks
    except ImportError:  # pragma: no cover - Windows
        raise ConfigError("needs POSIX file locks (fcntl), which this system lacks", field=FIELD) from None
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    _check_directory(path.parent)
    try:
        found = path.lstat()
    except FileNotFoundError:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600))
        except FileExistsError:  # another process made it first: checked below
            pass
        found = path.lstat()
    if stat.S_ISDIR(found.st_mode):
        raise ConfigError(f"{path} is a directory: name a file in it (e.g. {path / 'journal.db'})", field=FIELD)
    if not stat.S_ISREG(found.st_mode):
        raise ConfigError(f"{path} is not a regular file (a link, FIFO or device): genroute does not write its "
                          "journal through one; remove it or name another path", field=FIELD)
    me = os.geteuid()
    if found.st_uid != me:
        raise ConfigError(f"the journal {path} belongs to another user (uid {found.st_uid}; you are uid {me}), who "
                          "could add writes that this router would replay to the shared budget: name a file of your "
                          "own", field=FIELD)
    if found.st_mode & 0o022:
        raise ConfigError(f"the journal {path} may be written by its group or other users (mode "
                          f"{stat.S_IMODE(found.st_mode):o}), who could add writes that this router would replay to "
                          f"the shared budget: chmod 600 {path}", field=FIELD)
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"cannot write the journal {path}: the file is read-only", field=FIELD)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the journal {path}: its directory is read-only (SQLite writes a -wal and a "
                          "-shm file beside it)", field=FIELD)
