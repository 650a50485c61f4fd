"""Writing files so that a crash never leaves half of one (the one atomic write of pfedest), and
a folder that one owner at a time writes to (:class:`FolderLock`)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt


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


class FolderInUseError(RuntimeError):
    """Another owner (a process, or another thread of this one) holds the folder's :class:`FolderLock`.

    Parameters
    ----------
    *args
        The message, as for :class:`RuntimeError`.
    """


@dataclass
class _Hold:
    fd: int
    pid: int
    thread: threading.Thread
    owner: Callable[[], object]  # a weak reference to the owner


# The locks this process holds, by lock file: the OS lock (flock) tells processes apart, this table
# tells the threads of one process apart, which share the OS lock.
_HELD: dict = {}
_HELD_GUARD = threading.Lock()


class FolderLock:
    """An exclusive lock on a folder, held by one owner at a time, across processes and threads.

    The lock is an OS lock (``flock``; ``msvcrt.locking`` on Windows) on the file ``name`` in the
    folder, so the operating system releases it when its process ends, even by ``SIGKILL``. Within
    one process, the owner is an object (``acquire(owner)``): another owner in another thread is
    refused while the holder's thread is alive and the holder exists, but an owner in the holder's
    own thread takes the lock over (a fit that failed, whose owner never released it, does not
    keep the next fit of the same thread out). The file holds who holds it (process id, host,
    thread, since when, what for), for the message of the one refused; it is never deleted.

    Parameters
    ----------
    directory : str or Path
        The folder; it must exist.
    name : str, default=".pfedest.lock"
        The lock file's name in it.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> class Owner:
    ...     pass
    >>> first, second = Owner(), Owner()
    >>> lock = FolderLock(folder)
    >>> lock.acquire(first, "a fit")
    >>> t = threading.Thread(target=lambda: print(lock.try_acquire(second, "another fit")))
    >>> t.start(); t.join()
    False
    >>> lock.release(first)
    >>> t = threading.Thread(target=lambda: print(lock.try_acquire(second, "another fit")))
    >>> t.start(); t.join()
    True
    """

    def __init__(self, directory, name: str = ".pfedest.lock"):
        self.directory = Path(directory)
        self.path = self.directory / name

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def holder(self) -> Optional[dict]:
        """Who holds the lock, as its file says (``None`` if it says nothing readable)."""
        try:
            info = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self, owner, what: str = "") -> None:
        """Take the lock for ``owner`` (kept by a weak reference); :class:`FolderInUseError` if another holds it.

        ``what`` says what for, in the message of a later owner who is refused. An ``OSError``
        (no write permission) passes through.
        """
        key = self._key()
        me = threading.current_thread()
        with _HELD_GUARD:
            hold = _HELD.get(key)
            if hold is not None and hold.pid != os.getpid():  # inherited through fork: not ours
                del _HELD[key]
                hold = None
            if hold is not None:
                held_by = hold.owner()
                if held_by is not None and held_by is not owner and hold.thread is not me and hold.thread.is_alive():
                    raise FolderInUseError(
                        f"{self.directory} is in use by {self._describe(self.holder())} in another thread of this "
                        "process; wait for it to finish, or give this one another folder.")
                hold.owner, hold.thread = weakref.ref(owner), me
                self._write(hold.fd, what)
                weakref.finalize(owner, _release_if_orphaned, key)
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock(fd)
            except OSError:
                os.close(fd)
                raise FolderInUseError(
                    f"{self.directory} is in use by {self._describe(self.holder())}; wait for it to finish, or give "
                    "this one another folder.") from None
            self._write(fd, what)
            _HELD[key] = _Hold(fd, os.getpid(), me, weakref.ref(owner))
        weakref.finalize(owner, _release_if_orphaned, key)  # an owner that is gone holds nothing

    def try_acquire(self, owner, what: str = "") -> bool:
        """:meth:`acquire`, returning whether the lock was taken instead of raising."""
        try:
            self.acquire(owner, what)
        except FolderInUseError:
            return False
        return True

    def release(self, owner) -> None:
        """Let the lock go if ``owner`` holds it (a no-op otherwise)."""
        _release(self._key(), lambda held_by: held_by is owner)

    @staticmethod
    def _write(fd: int, what: str) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "thread": threading.current_thread().name,
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode())
        except OSError:  # the lock holds without its note
            pass

    @staticmethod
    def _describe(info: Optional[dict]) -> str:
        if not info:
            return "another owner"
        what = f"{info.get('what')} " if info.get("what") else ""
        return (f"{what}(process {info.get('pid')} on {info.get('host')}, thread {info.get('thread')!r}, "
                f"since {info.get('since')})")


def _release(key: str, release_if: Callable[[object], bool]) -> None:
    """Unlock and forget the lock file ``key`` if this process holds it and ``release_if(owner)``."""
    with _HELD_GUARD:
        hold = _HELD.get(key)
        if hold is None or hold.pid != os.getpid() or not release_if(hold.owner()):
            return
        del _HELD[key]
        try:
            os.ftruncate(hold.fd, 0)
        except OSError:
            pass
        _unlock(hold.fd)
        os.close(hold.fd)


def _release_if_orphaned(key: str) -> None:
    _release(key, lambda held_by: held_by is None)


def _lock(fd: int) -> None:
    """Lock ``fd`` exclusively without waiting; ``OSError`` if another holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows: lock the first byte
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
