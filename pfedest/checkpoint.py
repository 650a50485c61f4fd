"""Checkpoint files: atomic writes, a checksum, and nothing but tensors and JSON inside.

A file is a header line, the SHA-256 of the payload, and the payload: ``torch.save`` of a dict of
tensors and strings, loaded back with ``torch.load(..., weights_only=True)`` (never arbitrary
pickle). It is written to a temporary file in the same folder and renamed over the target, so a
crash while saving never leaves a half-written file under the checkpoint's name.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from ._files import atomic_write

MAGIC = b"PFEDEST-CHECKPOINT 1\n"
_NAME = re.compile(r"^round-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, corrupted, or for another model or version.

    Parameters
    ----------
    *args
        The message, as for :class:`ValueError`.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "round-000001.ckpt"
    >>> _ = path.write_bytes(b"not a checkpoint")
    >>> try:
    ...     load_checkpoint(path)
    ... except CheckpointError as exc:
    ...     print("bad header" in str(exc))
    True
    """


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` (tensors, strings, numbers, nested dicts) atomically to ``path``.

    Parameters
    ----------
    state : dict
        Tensors, strings, numbers and nested dicts of them.
    path : str or Path
        The target file; its folder must exist.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "round-000001.ckpt"
    >>> _ = save_checkpoint({"w": torch.ones(2)}, path)
    >>> load_checkpoint(path)["w"]
    tensor([1., 1.])
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write(path, lambda f: f.write(MAGIC + digest + b"\n" + payload))
    return path


def load_checkpoint(path) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.

    Returns
    -------
    dict
        The saved state, tensors on the CPU.

    Raises
    ------
    CheckpointError
        If the file is not a pfedest checkpoint, is truncated, or its checksum does not match.

    Examples
    --------
    >>> import tempfile, torch
    >>> path = save_checkpoint({"round": 3, "w": torch.zeros(1)}, Path(tempfile.mkdtemp()) / "a.ckpt")
    >>> load_checkpoint(path)["round"]
    3
    """
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a pfedest checkpoint (bad header).")
    digest, sep, payload = data[len(MAGIC):].partition(b"\n")
    if not sep or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is truncated or corrupted (checksum mismatch).")
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")


def checkpoint_path(directory, round_number: int) -> Path:
    """Where the checkpoint after ``round_number`` rounds goes.

    Parameters
    ----------
    directory : str or Path
        The checkpoint folder.
    round_number : int
        Rounds completed.

    Returns
    -------
    Path

    Examples
    --------
    >>> checkpoint_path("ckpts", 12).name
    'round-000012.ckpt'
    """
    return Path(directory) / f"round-{round_number:06d}.ckpt"


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in ``directory``, newest (most rounds) first.

    Parameters
    ----------
    directory : str or Path
        The checkpoint folder (a missing folder has none).

    Returns
    -------
    list of Path

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for r in (2, 10):
    ...     _ = save_checkpoint({"round": r}, checkpoint_path(folder, r))
    >>> [p.name for p in list_checkpoints(folder)]
    ['round-000010.ckpt', 'round-000002.ckpt']
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(directory) -> Optional[tuple[Path, dict]]:
    """The newest checkpoint in ``directory`` that verifies, skipping broken ones with a warning.

    Parameters
    ----------
    directory : str or Path
        The checkpoint folder.

    Returns
    -------
    (Path, dict) or None
        The file and its state, or ``None`` if no checkpoint verifies.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> latest_checkpoint(folder) is None
    True
    >>> _ = save_checkpoint({"round": 4}, checkpoint_path(folder, 4))
    >>> path, state = latest_checkpoint(folder)
    >>> path.name, state["round"]
    ('round-000004.ckpt', 4)
    """
    for path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path)
        except (CheckpointError, OSError, RuntimeError, EOFError) as exc:
            warnings.warn(f"Skipping checkpoint {path}: {exc}", UserWarning, stacklevel=2)
    return None
