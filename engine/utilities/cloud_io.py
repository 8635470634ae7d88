"""Paths that may be fsspec URLs: loggers' `save_dir`, checkpoint `dirpath`, `save_checkpoint`/`ckpt_path`.

A plain path or a `file://` URL is a local path: it is handled with `os` (a `file://` prefix is simply dropped), so
local files keep every guarantee below. Any other `protocol://` (`memory://`, `s3://`, `gs://`, ...) goes through
fsspec, imported only when such a URL is seen; a protocol whose backend package is missing (s3fs, gcsfs) fails with
the package to install.

Atomic writes (a reader sees the old file or the new one, never half of one):
- local: a temporary file in the target's directory, flushed and fsync'ed, then `os.replace`d over the target;
  the file gets the mode a plain `open()` would give it (0666 minus the umask, i.e. 0644 usually), not the 0600 of
  the temporary file.
- object stores (s3, gs/gcs, az/abfs, ...): one upload of the whole object, which these stores make visible all at
  once; a temporary object and a rename would be a non-atomic copy there.
- other fsspec filesystems (memory, sftp, ...): a temporary file next to the target, then `fs.mv`; atomic when the
  backend's move is a rename (memory, sftp), a copy and delete otherwise.
Remote `version_N` allocation cannot lock (object stores have no real directories): two runs started at the same
moment on the same remote root may pick the same version; give each run its own `version=` to be sure.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["is_remote", "normalize", "filesystem", "join", "exists", "isfile", "isdir", "listdir", "makedirs",
           "remove", "read_bytes", "atomic_write", "atomic_text", "default_file_mode", "OBJECT_STORES"]

_LOCAL = ("file", "local")
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "cos", "tos"})


def _text(path: str | os.PathLike[str]) -> str:
    return path if isinstance(path, str) else os.fspath(path)


def _protocol(path: str) -> str:
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head and "/" not in head else ""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a URL handled by fsspec (`memory://`, `s3://`, ...); False for a local path or a `file://` URL."""
    proto = _protocol(_text(path))
    return bool(proto) and proto not in _LOCAL


def normalize(path: str | os.PathLike[str]) -> str:
    """A remote URL as given (without a trailing '/'); a local path with `file://`, `~` and `$VARS` resolved."""
    text = _text(path)
    proto = _protocol(text)
    if proto and proto not in _LOCAL:
        stripped = text.rstrip("/")
        return stripped if not stripped.endswith(":") else text
    if proto:
        text = text.split("://", 1)[1]
    return os.path.expanduser(os.path.expandvars(text))


def _strip_file(path: str | os.PathLike[str]) -> str:
    """`file://x` -> `x`; anything else as text, unchanged."""
    text = _text(path)
    return text.split("://", 1)[1] if _protocol(text) in _LOCAL else text


def filesystem(url: str) -> tuple[Any, str]:
    """(the fsspec filesystem, the path inside it) for a remote URL; names the package to install if missing."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover  (fsspec is a dependency)
        raise ImportError(f"{url!r} is an fsspec URL but fsspec is not installed: `pip install fsspec`") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        proto = _protocol(url)
        raise ImportError(f"{url!r}: fsspec has no working backend for the {proto!r} protocol ({exc}); install the "
                          f"package that provides it (s3:// -> s3fs, gs:// -> gcsfs, az:// -> adlfs)") from exc


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}


def join(base: str, *names: str) -> str:
    """`base/name/...`: os.path.join for local paths, '/' for URLs."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(n.strip("/") for n in names if n)])
    return os.path.join(base, *names)


def _ask(path: str, local: Callable[[str], bool], remote: str) -> bool:
    """`local(path)` for a local path, else the fsspec filesystem's method named `remote`."""
    path = _strip_file(path)
    if not is_remote(path):
        return local(path)
    fs, p = filesystem(path)
    return bool(getattr(fs, remote)(p))


def exists(path: str) -> bool:
    return _ask(path, os.path.exists, "exists")


def isfile(path: str) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def isdir(path: str) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def listdir(path: str, dirs_only: bool = False) -> list[str]:
    """The names in directory `path` (only subdirectories with `dirs_only`); [] when it does not exist."""
    path = _strip_file(path)
    if not is_remote(path):
        try:
            entries = list(os.scandir(path))
        except OSError:
            return []
        names = []
        for entry in entries:
            with contextlib.suppress(OSError):
                if not dirs_only or entry.is_dir():
                    names.append(entry.name)
        return names
    fs, p = filesystem(path)
    try:
        infos = fs.ls(p, detail=True)
    except (FileNotFoundError, OSError):
        return []
    root = p.rstrip("/")
    return [info["name"].rstrip("/").rsplit("/", 1)[-1] for info in infos
            if (not dirs_only or info.get("type") == "directory") and info["name"].rstrip("/") != root]


def modified(path: str) -> float:
    """The modification time of a file, in seconds (0.0 where a remote filesystem does not say)."""
    path = _strip_file(path)
    if not is_remote(path):
        return os.path.getmtime(path)
    fs, p = filesystem(path)
    try:
        stamp = fs.modified(p)
    except (NotImplementedError, OSError, AttributeError):
        return 0.0
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def makedirs(path: str) -> None:
    """Create `path` and its parents (a no-op on object stores, which have no directories)."""
    path = _strip_file(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, p = filesystem(path)
    fs.makedirs(p, exist_ok=True)


def remove(path: str) -> None:
    """Delete the file `path` (a symlink itself, locally)."""
    path = _strip_file(path)
    if not is_remote(path):
        os.remove(path)
        return
    fs, p = filesystem(path)
    fs.rm_file(p)


def read_bytes(path: str) -> bytes:
    path = _strip_file(path)
    if not is_remote(path):
        with open(path, "rb") as fh:
            return fh.read()
    fs, p = filesystem(path)
    with fs.open(p, "rb") as fh:
        return fh.read()


def default_file_mode() -> int:
    """The mode `open(path, 'w')` gives a new file: 0o666 minus the process umask, read from /proc on Linux so
    the umask is never changed, even for an instant, while other threads create files."""
    umask = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    if umask is None:  # pragma: no cover  (no /proc: set and restore)
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old content or the new, never part (see the module docs)."""
    path = _strip_file(path)
    if not is_remote(path):
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            os.fchmod(fd, default_file_mode())
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    fs, p = filesystem(path)
    if _protocols(fs) & OBJECT_STORES:
        with fs.open(p, "wb") as fh:  # one upload: the object appears whole or not at all
            fh.write(data)
        return
    parent, _, name = p.rstrip("/").rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if parent else f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp)
        raise


@contextlib.contextmanager
def atomic_text(path: str, fsync: bool = False) -> Iterator[IO[str]]:
    """A text file (utf-8, no newline translation) that replaces `path` only when the block succeeds."""
    path = _strip_file(path)
    if not is_remote(path):
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            os.fchmod(fd, default_file_mode())
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                yield fh
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    buf = io.StringIO(newline="")
    yield buf
    atomic_write(path, buf.getvalue().encode("utf-8"))
