"""Checkpoint files: atomic writes, a checksum, and nothing but tensors and JSON inside.

A file is a header line, the SHA-256 of the payload, and the payload: ``torch.save`` of a dict of
tensors and strings, loaded back with ``torch.load(..., weights_only=True)`` (never arbitrary
pickle). It is written to a temporary file in the same folder and renamed over the target, so a
crash while saving never leaves a half-written file under the checkpoint's name.

A checkpoint folder belongs to one run at a time: the :class:`~pfedest.Checkpoint` callback holds
its lock (:data:`LOCK_FILE`, :class:`FolderInUseError` for a second run) for the whole fit, and
:data:`OWNERS_FILE` records which run wrote each file (:func:`read_owners`,
:func:`write_owners`), so that pruning deletes only the run's own files.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from ._files import FolderInUseError, atomic_write

__all__ = ["MAGIC", "LOCK_FILE", "OWNERS_FILE", "CheckpointError", "FolderInUseError", "save_checkpoint",
           "load_checkpoint", "checkpoint_path", "list_checkpoints", "latest_checkpoint", "read_owners",
           "write_owners"]

#: The first line of every checkpoint file.
MAGIC = b"PFEDEST-CHECKPOINT 1\n"
#: The lock file of a checkpoint folder, held by the run that writes to it.
LOCK_FILE = ".pfedest-checkpoint.lock"
#: Which run wrote which checkpoint file of the folder (JSON: file name to run id).
OWNERS_FILE = ".pfedest-checkpoint-owners.json"
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


class OtherFitCheckpoint(CheckpointError):
    """A checkpoint of another fit of the same model (one before a ``warm_start`` fit): not a point
    this fit can resume from, and no reason to stop it."""


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
        If the file is not a pfedest checkpoint, is truncated, its checksum does not match, or its
        payload is not a dict of tensors and plain values (the ``weights_only`` load refuses it).

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
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for what is not tensors and plain values; others for junk
        raise CheckpointError(f"{path} holds more than tensors and plain values: the weights_only load refused "
                              f"it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not the dict of a saved state.")
    return state


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
    """The newest checkpoint in ``directory`` that verifies and loads, skipping broken ones with a warning.

    A file is skipped (with a ``UserWarning`` naming it and why) if it is truncated or corrupted,
    unreadable, or fails the ``weights_only`` load; whether a file that loads fits the fit that
    resumes from it is for the estimator to say (:meth:`~pfedest.PartialPersonalizedClassifier.load_state_dict`).

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
        except (CheckpointError, OSError) as exc:
            warnings.warn(f"Skipping checkpoint {path}: {exc}", UserWarning, stacklevel=2)
    return None


def read_owners(directory) -> dict:
    """Which run wrote which checkpoint of ``directory``: file name to run id (empty if not recorded).

    Parameters
    ----------
    directory : str or Path
        The checkpoint folder.

    Returns
    -------
    dict of str to str
        A file written before owners were recorded, or whose record is unreadable, has no entry.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> read_owners(folder)
    {}
    >>> write_owners(folder, {"round-000002.ckpt": "run-a"})
    >>> read_owners(folder)
    {'round-000002.ckpt': 'run-a'}
    """
    try:
        owners = json.loads((Path(directory) / OWNERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(owners, dict):
        return {}
    return {k: v for k, v in owners.items() if isinstance(k, str) and isinstance(v, str)}


def write_owners(directory, owners: dict) -> None:
    """Record ``owners`` (file name to run id) for :func:`read_owners`, atomically.

    Parameters
    ----------
    directory : str or Path
        The checkpoint folder.
    owners : dict of str to str

    Returns
    -------
    None

    Examples
    --------
    :func:`read_owners` has one.
    """
    text = json.dumps(dict(sorted(owners.items())), indent=1)
    atomic_write(Path(directory) / OWNERS_FILE, lambda f: f.write(text.encode()))
