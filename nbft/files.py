"""How nbft writes its own files: atomically, and read-modify-write under a lock.

Every JSON, YAML and HTML file nbft writes (run folders, cards, reports) goes through ``write_atomic``: the
text goes to a temporary file in the same folder, is flushed to disk (fsync), then renamed over the target
(``os.replace``), so a reader or a crash sees the old file or the new one, never half of one; ``write_new``
creates a file the same way, only where none exists (``os.link``: a run's ``.lock``). ``locked(path)``
holds an exclusive ``fcntl`` lock on ``.<name>.lock`` beside ``path`` for a read-modify-write (metrics.json is
written by a notebook kernel while the runner reads it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any


#: errno values that mean "no room to write": the disk is full, or the user's quota is spent.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def disk_full(e: BaseException) -> bool:
    """Is ``e`` a full disk (or quota)?"""
    return isinstance(e, OSError) and e.errno in DISK_FULL


def write_atomic(path: str | Path, data: str | bytes, encoding: str = "utf-8", in_place_if_full: bool = False) -> Path:
    """Write ``data`` to ``path`` all at once: temp file + fsync + ``os.replace`` (+ fsync of the folder).

    ``in_place_if_full`` (small files whose readers ignore trailing whitespace: status.json): when the disk is full,
    so that no temporary file can be made, ``data`` is written over the file's own blocks instead, padded with
    spaces to its old length — possible whenever it is no longer than the file already is (``write_status`` keeps a
    reserve of trailing spaces for that)."""
    path = Path(path)
    blob = data.encode(encoding) if isinstance(data, str) else data
    try:
        with _written_temp(path, blob) as tmp:
            os.replace(tmp, path)
    except BaseException as e:
        if in_place_if_full and disk_full(e) and _overwrite_in_place(path, blob):
            return path
        raise
    _sync_folder(path)
    return path


def write_new(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> bool:
    """Create ``path`` holding ``data``, never visible half-written: temp file + fsync, then ``os.link`` makes it
    ``path`` (refused when ``path`` exists: False, ``path`` left as it is; + fsync of the folder); True when created
    (a run's ``.lock``: ``runs.acquire``)."""
    path = Path(path)
    with _written_temp(path, data.encode(encoding) if isinstance(data, str) else data) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    _sync_folder(path)
    return True


@contextlib.contextmanager
def _written_temp(path: Path, blob: bytes):
    """``blob`` written whole to a new temporary file beside ``path`` and flushed to disk (fsync): the first half of
    ``write_atomic`` and ``write_new``, which then move or link it into place. Yields its path; it is removed after
    the block if it is still there."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _sync_folder(path: Path) -> None:
    """The rename or link that made ``path`` on disk too (fsync of its folder; nothing where that cannot be done)."""
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _overwrite_in_place(path: Path, blob: bytes) -> bool:
    """``blob`` over ``path``'s existing blocks, padded with spaces to its length (no new block is needed); False
    when the file is missing or shorter than ``blob``."""
    blob = blob.rstrip(b" ")  # the reserve the caller asked for is what this uses up
    try:
        size = path.stat().st_size
        if len(blob) > size:
            return False
        with open(path, "r+b") as f:
            f.write(blob + b" " * (size - len(blob)))
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def write_json(path: str | Path, obj: Any, indent: int = 1, ensure_ascii: bool = True) -> Path:
    """``obj`` as JSON (numpy/torch scalars and paths converted), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=_jsonable))


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | Path):
    """An exclusive lock for a read-modify-write of ``path`` (``fcntl.flock`` on ``.<name>.lock`` beside it;
    released when the block ends or the process dies)."""
    import fcntl

    with open(lock_path(path), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class DecodeError(ValueError):
    """A text file that is not UTF-8; the message names the file, line and column."""


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (a leading byte-order mark, as Excel writes, is dropped); a decode error names the
    file, the line and the column of the first bad byte."""
    blob = Path(path).read_bytes()
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = blob.count(b"\n", 0, e.start) + 1
        col = e.start - (blob.rfind(b"\n", 0, e.start) + 1) + 1
        raise DecodeError(f"{path} line {line}: not UTF-8 text (byte 0x{blob[e.start]:02x} at column {col}); "
                          "save the file as UTF-8") from None


def project_root(start: str | Path | None = None, installed: bool = True) -> Path | None:
    """The nbft project: the nearest folder at or above ``start`` (the working directory) holding notebooks/ and
    params/, else (``installed``) the one nbft itself is in (an editable install), else None."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents, *([Path(__file__).resolve().parent.parent] if installed else [])):
        if (d / "notebooks").is_dir() and (d / "params").is_dir():
            return d
    return None


def relative(path: str | Path, run_dir: str | Path | None = None) -> str:
    """``path`` as a report shows it, with nothing of the machine's folders in it: ``runs/<run>/...`` under the run
    folder ``run_dir`` (or another run beside it), relative to the project under the project (``project_root``),
    else its bare name. Anything that is not an absolute path (a relative path, a built-in name, a hub id, "")
    comes back as it is."""
    text = str(path)
    p = Path(os.path.expanduser(text))
    if not p.is_absolute():
        return text
    roots = [(Path(run_dir).parent, "runs")] if run_dir else []
    root = project_root()
    if root is not None:
        roots.append((root, ""))
    for base, prefix in roots:
        for a, b in ((p, base), (p.resolve(), base.resolve())):
            if a == b or b in a.parents:
                return (Path(prefix) / a.relative_to(b)).as_posix() if prefix or a != b else "."
    return p.name or text
