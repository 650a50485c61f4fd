"""Writing files so that a crash never leaves half of one: the one atomic write of pfedest."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file's bytes and the rename are both flushed to disk (``fsync`` of the file, then of its
    folder), so after a crash or ``SIGKILL`` ``path`` holds either its old content or the new, whole.
    The temporary name is unique, so two processes writing the same path never collide; the last
    rename wins.

    Parameters
    ----------
    path : str or Path
        The target; its folder must exist.
    write : callable
        Writes the content to the binary file object it is given.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(target, lambda f: f.write(b"hello")).read_bytes()
    b'hello'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass
    return path
