"""Randomness of a round: which clients take part, and the minibatches each one sees.

Everything random is drawn here, outside the training computation, so the loop and the vectorized
engine see identical minibatches and a run is reproducible from ``random_state`` alone.

Minibatches are drawn either from a NumPy ``Generator`` or from :class:`RoundKeys`: keys that
are a hash of ``(seed, round, stream, client, epoch, position)``, so a client's minibatches do not
depend on which other clients train with it, and a node of a real federation that knows only the
seed, the round and its own client index draws the very minibatches the simulator does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

# splitmix64 (Steele, Lea and Flood, 2014): its increment and its bijective 64-bit finalizer
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_BLOCK_WORDS = 1 << 15  # 256 KiB of uint64 per temporary

#: splitmix64's constants as Python ints (increment, first and second multiplier), for ports of
#: the hash to other array libraries (:mod:`pfedest.core.torch_draws`).
SPLITMIX64 = (int(_GOLDEN), int(_M1), int(_M2))

#: The stream of a round's keys (:class:`RoundKeys`) that seeds the dropout masks of its local steps;
#: each algorithm numbers its minibatch streams from 0.
DROPOUT_STREAM = 2**32


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on a uint64 array (a bijection of 64-bit words)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _combine(h: np.ndarray, x) -> np.ndarray:
    """Hash ``x`` into ``h``; for a fixed ``h`` distinct ``x`` give distinct words (``_GOLDEN`` is odd)."""
    return _mix(h + _GOLDEN * (np.asarray(x, dtype=np.uint64) + np.uint64(1)))


_WORD = 2**64 - 1


def _combine_int(h: int, x: int) -> int:
    """:func:`_combine` of one word, on Python ints (the same uint64 arithmetic, wrapped by masking)."""
    z = (h + int(_GOLDEN) * (x + 1)) & _WORD
    z = ((z ^ (z >> 30)) * int(_M1)) & _WORD
    z = ((z ^ (z >> 27)) * int(_M2)) & _WORD
    return z ^ (z >> 31)


def _word(value, name: str) -> np.ndarray:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}.")
    return np.array([int(value)], dtype=np.uint64)


@dataclass(frozen=True)
class RoundKeys:
    """The minibatch randomness of round ``round_number`` of the run seeded by ``seed``.

    :meth:`uniforms` gives the keys of one stream for some clients; each key is a hash of
    ``(seed, round_number, stream, client, epoch, position)`` alone. Pass a ``RoundKeys`` as
    ``rng`` to :func:`pfedest.core.rounds.run_round`.

    Parameters
    ----------
    seed : int
        The run's seed, in ``[0, 2**64)``.
    round_number : int
        The round, in ``[0, 2**64)``.

    Examples
    --------
    >>> keys = RoundKeys(seed=0, round_number=1)
    >>> a = keys.uniforms(0, [3, 7]).random((2, 1, 4))
    >>> b = keys.uniforms(0, [7]).random((1, 1, 4))  # client 7 alone: its keys are the same
    >>> bool((a[1] == b[0]).all()), bool((a[0] == a[1]).all())
    (True, False)
    """

    seed: int
    round_number: int

    def __post_init__(self):
        _word(self.seed, "seed")
        _word(self.round_number, "round_number")

    def uniforms(self, stream: int, clients) -> "ClientUniforms":
        """The keys of stream ``stream`` for ``clients`` (global client indices, in this order).

        Parameters
        ----------
        stream : int
            Which of the round's minibatch streams (FedAlt's personal and shared streams differ).
        clients : array-like of int
            The clients' indices in the whole federation (a node's ``partition-id``).

        Returns
        -------
        ClientUniforms
        """
        h = np.array([self.stream_key(stream)], dtype=np.uint64)
        clients = np.asarray(clients)
        if clients.ndim != 1 or (clients.size and (not np.issubdtype(clients.dtype, np.integer) or clients.min() < 0)):
            raise ValueError(f"clients must be a 1-d array of integers >= 0, got {clients!r}.")
        return ClientUniforms(_combine(h, clients.astype(np.uint64)))


    def stream_key(self, stream: int) -> int:
        """The word of ``(seed, round_number, stream)`` that each client's index is hashed into.

        Examples
        --------
        >>> RoundKeys(0, 1).stream_key(0) != RoundKeys(0, 1).stream_key(1)
        True
        """
        _word(stream, "stream")
        # _combine on Python ints (three words: NumPy's per-call cost was a quarter of a one-client draw)
        return _combine_int(_combine_int(_combine_int(0, int(self.seed)), int(self.round_number)), int(stream))


class ClientUniforms:
    """Uniform numbers in ``[0, 1)`` for some clients, drawn as ``Generator.random`` draws them.

    ``random((n_clients, n_epochs, width))[c, e, j]`` depends only on the client's key and on
    ``(e, j)``: not on the shape asked for, nor on the other clients. Made by
    :meth:`RoundKeys.uniforms`.

    Parameters
    ----------
    keys : ndarray of uint64, shape (n_clients,)
        One word per client.

    Examples
    --------
    >>> u = RoundKeys(0, 1).uniforms(0, [5])
    >>> small, large = u.random((1, 1, 3)), u.random((1, 2, 6))
    >>> bool((small == large[:, :1, :3]).all()), bool(((0 <= large) & (large < 1)).all())
    (True, True)
    """

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.keys)

    def random(self, shape) -> np.ndarray:
        """Keys of shape ``(n_clients, n_epochs, width)``, float64 in ``[0, 1)``."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[0] != len(self.keys):
            raise ValueError(f"Expected a shape (n_clients={len(self.keys)}, n_epochs, width), got {shape}.")
        n, n_epochs, width = shape
        per_epoch = _combine(self.keys[:, None], np.arange(n_epochs, dtype=np.uint64)[None, :])
        offsets = _GOLDEN * np.arange(1, width + 1, dtype=np.uint64)  # word j is _combine(per_epoch, j)
        out = np.empty(shape, dtype=np.float64)
        # Blocks of clients that stay in cache, mixed in place: the hash makes ~10 passes over the
        # words, and large temporaries are much slower (docs/guide/gpu.rst, "Measured defaults").
        block = max(1, _BLOCK_WORDS // max(1, n_epochs * width))
        for start in range(0, n, block):
            z = per_epoch[start:start + block, :, None] + offsets
            t = np.empty_like(z)
            for shift, factor in ((30, _M1), (27, _M2), (31, None)):  # _mix, in place
                np.right_shift(z, np.uint64(shift), out=t)
                z ^= t
                if factor is not None:
                    z *= factor
            # the top 53 bits, as Generator.random does: every double k / 2**53, k < 2**53
            z >>= np.uint64(11)
            np.multiply(z, 1.0 / 2**53, out=out[start:start + block], casting="unsafe")
        return out


Source = Union[np.random.Generator, ClientUniforms]


def n_sampled(clients_per_round, n_available: int) -> int:
    """How many of ``n_available`` clients a round samples: a count (at most all of them), or a
    fraction in (0, 1] of them (at least one).

    Examples
    --------
    >>> n_sampled(10, 4), n_sampled(0.5, 5), n_sampled(0.01, 5), n_sampled(1.0, 5)
    (4, 2, 1, 5)
    """
    if isinstance(clients_per_round, (float, np.floating)):
        return max(1, min(n_available, int(round(clients_per_round * n_available))))
    return min(int(clients_per_round), n_available)


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


def _permutations(rng: Source, counts: np.ndarray, n_epochs: int) -> np.ndarray:
    """``[clients, n_epochs, max(counts)]``: in each row the first ``count`` entries permute ``range(count)``."""
    width = int(counts.max())
    keys = rng.random((len(counts), n_epochs, width))
    keys = np.where(np.arange(width)[None, None, :] < counts[:, None, None], keys, np.inf)
    return np.argsort(keys, axis=-1, kind="stable")


def minibatch_stream(rng: Source, counts: np.ndarray, batch_size: int,
                     steps: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (local to each client) and a 0/1 mask for each client's local steps.

    Parameters
    ----------
    rng : numpy.random.Generator or ClientUniforms
        Draws the shuffles. With :class:`ClientUniforms` (one key per client, in the order of
        ``counts``) a client's minibatches depend on its key, count, ``batch_size`` and ``steps``
        only: the other clients change nothing but the padding.
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
