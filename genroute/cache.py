"""Where genroute keeps derived files (assembled GGUF, built ONNX graphs, demo stores)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from genroute.errors import ConfigError, UsageError


def cache_dir(*parts: str, writable: bool = False) -> Path:
    """The cache directory (``$GENROUTE_CACHE_DIR`` or ``~/.cache/genroute``) joined with ``parts``, as ``owned_dir``
    makes and checks it: genroute loads and runs what it keeps there (the GGUF, LoRA adapters, the base model)."""
    root = os.environ.get("GENROUTE_CACHE_DIR") or Path.home() / ".cache" / "genroute"
    return owned_dir(Path(root).expanduser(), *parts, field="GENROUTE_CACHE_DIR", writable=writable)


def owned_dir(root: Path, *parts: str, field: str, writable: bool = False) -> Path:
    """``root`` joined with ``parts``: a directory genroute loads models or adapters from. Each directory from
    ``root`` down is made 0700 when missing (its parents as the umask says) and refused by ``check_owned`` when
    another user could put a file in it; ``root`` is resolved first, so a link there is not followed again later.
    A ``ConfigError`` naming ``field`` when it cannot be made (or, ``writable``, written to)."""
    path = root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        path = root.resolve()
        check_owned(path, field=field)
        for part in parts:  # each checked before anything is made in it
            path = path / part
            path.mkdir(mode=0o700, exist_ok=True)
            check_owned(path, field=field)
        # An existing read-only directory passes mkdir; a caller that must write there learns it now.
        if writable and not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as a cache directory: {exc.strerror or exc}", field=field) from exc
    return path


def check_owned(path: Path, *, field: str) -> Path:
    """``path``, a cache directory or a file genroute is about to load from one, if only this user (or root) can have
    written it: owned by this user or root, and writable by neither its group nor others (what ssh asks of
    ``~/.ssh``, pip of its cache). Otherwise a ``ConfigError`` naming ``field`` (the setting that chose the
    directory) saying why and what to do: another user who can write there can plant or replace a model or adapter
    genroute then loads and runs. Links are followed (what they lead to is what is loaded); no check where the system
    has no user ids (Windows)."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # pragma: no cover - Windows
        return path
    try:
        found = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as a cache directory: {exc.strerror or exc}", field=field) from exc
    what = "directory" if stat.S_ISDIR(found.st_mode) else "file"
    me = geteuid()
    if found.st_uid not in (me, 0):
        raise ConfigError(
            f"the cache {what} {path} belongs to another user (uid {found.st_uid}; you are uid {me}), who could put a "
            f"model or adapter there that genroute would load and run: if it is yours to take (a volume mounted from "
            f"the host into a container), chown -R {me} {path}; else use a directory of your own ({_where(field)}; "
            "one genroute creates is made 0700)", field=field)
    if found.st_mode & 0o022:
        mode = stat.S_IMODE(found.st_mode)
        raise ConfigError(
            f"the cache {what} {path} may be written by {_writers(mode)} (mode {mode:o}), who could put a model or "
            f"adapter there that genroute would load and run: chmod go-w {path}, or use a directory only you can "
            f"write to ({_where(field)})", field=field)
    return path


def _where(field: str) -> str:
    """How to point ``field``, the setting that chose the cache directory, elsewhere."""
    return f"{field} DIR" if field.startswith("--") else f"{field}=DIR"


def _writers(mode: int) -> str:
    return {0o020: "its group", 0o002: "all users"}.get(mode & 0o022, "its group and all users")


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False, keep: bool = False,
                       same_mode: bool = False, durable: bool = False) -> bool:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file: every file genroute writes whole.

    The temporary file beside ``path`` has a random name and is created exclusively: a link planted at a guessable
    name (in a directory others can write to) is never followed, so no other file is overwritten; a link planted at
    ``path`` itself is replaced, not written through. ``private``: the file is readable by its owner only (0600: it
    holds captured inputs and outputs); otherwise the process umask decides, as for any file it creates. Either is
    what a new file gets when ``same_mode``: the file keeps the permission bits of the one it replaces (a config, a
    results file the user chmod'ed) when that is a regular file of this user's (``_own_mode``), not when it is a
    link (planted there, its target chose no mode for what is written in its place).
    ``keep``: a file already at ``path`` (another process made it first) is kept, not replaced. ``durable``: the data
    and the rename are fsync'd (a crash brings back neither half a file nor the old one). Returns whether ``data``
    was published at ``path``.
    """
    mode = 0o600 if private else 0o666
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 random names all taken
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if keep or durable:
                handle.flush()
                os.fsync(handle.fileno())
        if same_mode and (kept := _own_mode(path)) is not None:
            os.chmod(tmp, kept)
        if not keep:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails on anything at path, a link included
            except FileExistsError:
                return False
        if durable:
            _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def open_unlinked(path: Path, flags: int, *, field: str, mode: int = 0o666) -> int:
    """``os.open(path, flags, mode)`` that does not follow a link at ``path`` itself (``O_NOFOLLOW``): for a file
    genroute adds to or cuts in place in a directory the user chooses (a bench's ``results.jsonl``), where a link
    planted at its name would send the rows to, or cut, another file. ``UsageError`` naming ``field`` when a link is
    there, or anything but a regular file (a FIFO planted there would hang the read or the write: it is opened
    ``O_NONBLOCK``, checked with ``fstat``, and only a regular file is handed back, blocking again)."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | nonblock, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link: genroute does not write through one (a link planted in a "
                             "shared directory would send what it writes to another file); remove it",
                             field=field) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise _not_regular(path, field) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path, field)
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: Path, field: str) -> UsageError:
    return UsageError(f"{path} is not a regular file (a FIFO, device or directory there would hang or misdirect "
                      "what genroute reads and writes); remove it", field=field)


def _own_mode(path: Path) -> int | None:
    """The permission bits (``rwx`` only: no set-id or sticky bit) of the regular file at ``path`` when this user owns
    it, else ``None``. A link at ``path`` is not followed: planted there, to a file of another user's that everyone
    may read and write or to one of this user's that all may read (``~/.bashrc``), it chose the mode of the file
    written in its place (a rewritten config, 0600 when new, came out 0644). Nor is a file with more than one name
    taken as ours: a hard link planted at ``path`` (where ``fs.protected_hardlinks`` is 0) is this user's
    ``~/.bashrc`` under another name, as lstat sees it."""
    try:
        found = path.lstat()
    except OSError:  # nothing there: a new file
        return None
    owner = getattr(os, "geteuid", None)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1 or (owner is not None and found.st_uid != owner()):
        return None
    return stat.S_IMODE(found.st_mode) & 0o777


def _fsync_dir(directory: Path) -> None:
    """Make a rename itself durable: until the directory is synced, a crash can bring the old file back."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows cannot open a directory; the rename is as durable as it gets there
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write_via(path: Path, write: Callable[[Path], object], *, private: bool = False,
                     same_mode: bool = False) -> None:
    """Publish at ``path`` the file ``write`` makes at the path it is given: for a library that writes by name
    (gguf, safetensors, matplotlib, a weights package), which opens its file following links. ``write`` writes into
    a new directory beside ``path`` that only this user can enter (``mkdtemp``, 0700), so nothing anyone else plants
    is in its way; the file is then renamed over ``path`` (readers see nothing or the whole file) and the directory
    removed, whatever ``write`` raised. ``private``: the file is made 0600 before it is published; ``same_mode``: it
    keeps the mode of the one it replaces, as ``atomic_write_bytes``'s (``private`` or not: what a new file gets)."""
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp = staging / path.name
        write(tmp)
        if same_mode and (kept := _own_mode(path)) is not None:
            os.chmod(tmp, kept)
        elif private:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
