"""Randomness of a round: which clients take part, and the minibatches each one sees.

Everything random is drawn here with a NumPy ``Generator``, outside the training computation,
so the loop and the vectorized engine see identical minibatches and a run is reproducible from
``random_state`` alone.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def sample_clients(rng: np.random.Generator, eligible: np.ndarray, n_sampled: int) -> np.ndarray:
    """``n_sampled`` distinct clients of ``eligible`` drawn uniformly without replacement, sorted.

    All of them when ``n_sampled >= len(eligible)`` (full participation draws nothing).

    Parameters
    ----------
    rng : numpy.random.Generator
        The run's generator.
    eligible : array-like of int
        The clients that may take part.
    n_sampled : int
        How many to draw.

    Returns
    -------
    ndarray
        The sampled clients, sorted.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> picked = sample_clients(rng, np.arange(10), 3)
    >>> len(set(picked.tolist())), bool((np.diff(picked) > 0).all())
    (3, True)
    >>> sample_clients(rng, [4, 2, 7], 5).tolist()
    [2, 4, 7]
    """
    eligible = np.asarray(eligible)
    if n_sampled >= len(eligible):
        return np.sort(eligible)
    return np.sort(rng.choice(eligible, size=n_sampled, replace=False))


def _permutations(rng: np.random.Generator, counts: np.ndarray, n_epochs: int) -> np.ndarray:
    """``[clients, n_epochs, max(counts)]``: in each row the first ``count`` entries permute ``range(count)``."""
    width = int(counts.max())
    keys = rng.random((len(counts), n_epochs, width))
    keys = np.where(np.arange(width)[None, None, :] < counts[:, None, None], keys, np.inf)
    return np.argsort(keys, axis=-1, kind="stable")


def minibatch_stream(rng: np.random.Generator, counts: np.ndarray, batch_size: int,
                     steps: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (local to each client) and a 0/1 mask for each client's local steps.

    Parameters
    ----------
    rng : numpy.random.Generator
    counts : ndarray of int, shape (n_clients,)
        Rows held by each client (all positive).
    batch_size : int
        Rows per minibatch.
    steps : int or None
        ``None``: one epoch, ``ceil(count / batch_size)`` steps for each client, the last one
        possibly partial. An int: that many steps for every client, each of
        ``b = min(batch_size, count)`` distinct rows, going through shuffled epochs of
        ``count // b`` minibatches (the ``count % b`` rows left over sit out that epoch).

    Returns
    -------
    idx : ndarray of int64, shape (n_clients, max_steps, batch_size)
    mask : ndarray of float32, same shape
        1 for real rows, 0 for padding (masked rows point at row 0).

    Examples
    --------
    One epoch of two clients with 3 and 5 rows, in minibatches of 2:

    >>> idx, mask = minibatch_stream(np.random.default_rng(0), np.array([3, 5]), 2, None)
    >>> idx.shape, mask.sum(axis=(1, 2)).tolist()
    ((2, 3, 2), [3.0, 5.0])
    >>> sorted(idx[1][mask[1] == 1].tolist())  # every row of client 1 once
    [0, 1, 2, 3, 4]
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    if steps is None:
        n_steps = int(-(-counts.max() // batch_size))
        position = np.arange(n_steps * batch_size).reshape(n_steps, batch_size)
        valid = position[None] < counts[:, None, None]
        perm = _permutations(rng, counts, 1)[:, 0]
        flat = np.where(valid, position[None], 0).reshape(n, -1)
        idx = np.take_along_axis(perm, flat, axis=1).reshape(n, n_steps, batch_size)
    else:
        # Epochs of k = count // b full minibatches of b = min(batch_size, count) distinct rows; the
        # count % b rows left over are dropped for that epoch (each epoch is shuffled afresh), so
        # no minibatch holds a row twice.
        per_step = np.minimum(batch_size, counts)
        per_epoch = counts // per_step
        step = np.arange(steps)[None, :, None]
        col = np.arange(batch_size)[None, None, :]
        valid = np.broadcast_to(col < per_step[:, None, None], (n, steps, batch_size))
        epoch, step_in_epoch = np.divmod(step, per_epoch[:, None, None])
        within = np.where(valid, step_in_epoch * per_step[:, None, None] + col, 0)
        perm = _permutations(rng, counts, int(np.max(-(-steps // per_epoch))))
        idx = perm[np.arange(n)[:, None, None], epoch, within]
    idx = np.where(valid, idx, 0).astype(np.int64)
    return idx, valid.astype(np.float32)
