"""Writing files so that no reader ever sees half of one: temp file beside, flush, rename.

One helper for the whole project (the model's files, the manifest, cleaning's decisions and journal,
downloads): a crash, a full disk or Ctrl-C mid-write leaves the old file, never a cut-short one.
stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644, prefix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path`.

    A crash or an interrupt mid-write leaves the old file (or none), never half a file; the temporary
    file is a dot-file, so nothing that lists pictures or datasets ever sees it. `mode`: mkstemp makes
    the file owner-only, and a web server may run as another user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}-", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, binary: bool = False, *, mode: int = 0o644, prefix: str | None = None,
                newline: str | None = None) -> Iterator[IO]:
    """`open(path, "w")` that replaces `path` only once the block is done, flushed to disk (atomic_path)."""
    with atomic_path(path, mode, prefix) as tmp, (
        open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline=newline)
    ) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically, flushed to disk before it replaces the old file."""
    with atomic_open(path, binary=True, mode=mode) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done (a few renames): they are delivered right after.

    Only the main thread can receive Python's signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the filesystem allows a directory to be synced)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
