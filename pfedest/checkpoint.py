"""Checkpoint files: atomic writes, a checksum, and nothing but tensors and JSON inside.

A file is a header line, the SHA-256 of the payload, and the payload: ``torch.save`` of a dict of
tensors and strings, loaded back with ``torch.load(..., weights_only=True)`` (never arbitrary
pickle). It is written to a temporary file in the same folder and renamed over the target, so a
crash while saving never leaves a half-written file under the checkpoint's name.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

MAGIC = b"PFEDEST-CHECKPOINT 1\n"
_NAME = re.compile(r"^round-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, corrupted, or for another model or version."""


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` (tensors, strings, numbers, nested dicts) atomically to ``path``.

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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + digest + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path) -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is not a pfedest checkpoint, is truncated, or its checksum does not match.
    """
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a pfedest checkpoint (bad header).")
    digest, sep, payload = data[len(MAGIC):].partition(b"\n")
    if not sep or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is truncated or corrupted (checksum mismatch).")
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")


def checkpoint_path(directory, round_number: int) -> Path:
    """Where the checkpoint after ``round_number`` rounds goes."""
    return Path(directory) / f"round-{round_number:06d}.ckpt"


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in ``directory``, newest (most rounds) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(directory) -> Optional[tuple[Path, dict]]:
    """The newest checkpoint in ``directory`` that verifies, skipping broken ones with a warning."""
    for path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path)
        except (CheckpointError, OSError, RuntimeError, EOFError) as exc:
            warnings.warn(f"Skipping checkpoint {path}: {exc}", UserWarning, stacklevel=2)
    return None
