"""The keyed minibatch draws of :mod:`pfedest.core.sampling`, in torch, on the device that trains.

:class:`~pfedest.core.sampling.RoundKeys` hashes ``(seed, round, stream, client, epoch, position)``
with splitmix64 in NumPy. This module runs the same hash with torch integer operations, so a GPU
draws a round's minibatches itself instead of waiting for the CPU to draw them and copy them over;
the indices are exactly NumPy's (tests hold them equal).

torch has no unsigned 64-bit arithmetic on every device, so the words are held as ``int64``: sums
and products wrap modulo ``2**64`` alike in both, XOR is the same bits, and a logical right shift
is the arithmetic shift with the sign bits masked off. Keys are compared as integers: NumPy sorts
the uniforms ``k / 2**53``, monotone in the 53-bit ``k``, so sorting ``k`` gives the same order.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch

from .sampling import SPLITMIX64, RoundKeys

__all__ = ["client_keys", "minibatch_stream_torch", "draw_batches_torch", "use_torch_draws"]

_MASK64 = (1 << 64) - 1


def _signed(word: int) -> int:
    """The int64 that has the bits of the unsigned 64-bit ``word``."""
    word &= _MASK64
    return word - (1 << 64) if word >= 1 << 63 else word


_GOLDEN, _M1, _M2 = (_signed(w) for w in SPLITMIX64)
_PADDING = 1 << 62  # above every 53-bit key: padded positions sort last, as NumPy's inf does


def _shr(z: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's ``>>`` copies the sign bit)."""
    return (z >> shift) & ((1 << (64 - shift)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer (sampling's ``_mix``) on int64 words."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _combine(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _mix(h + _GOLDEN * (x + 1))


def client_keys(keys: RoundKeys, stream: int, clients: torch.Tensor) -> torch.Tensor:
    """Each client's word of ``stream`` (``keys.uniforms(stream, clients).keys``, as int64), on ``clients``' device.

    Parameters
    ----------
    keys : RoundKeys
        The round.
    stream : int
        The stream.
    clients : Tensor of int64, shape (n,)
        Global client indices (at least 0).

    Returns
    -------
    Tensor of int64, shape (n,)

    Examples
    --------
    >>> keys = RoundKeys(0, 1)
    >>> words = client_keys(keys, 0, torch.tensor([3, 7]))
    >>> words.numpy().view(np.uint64).tolist() == keys.uniforms(0, [3, 7]).keys.tolist()
    True
    """
    return _combine(torch.full_like(clients, _signed(keys.stream_key(stream))), clients.to(torch.int64))


def _words(client_words: torch.Tensor, n_epochs: int, width: int) -> torch.Tensor:
    """The 53-bit integers ``k`` behind ``ClientUniforms.random((n, n_epochs, width)) = k / 2**53``."""
    device = client_words.device
    per_epoch = _combine(client_words[:, None], torch.arange(n_epochs, device=device)[None, :])
    z = per_epoch[:, :, None] + _GOLDEN * torch.arange(1, width + 1, device=device)
    return _shr(_mix(z), 11)


def _permutations(client_words: torch.Tensor, counts: torch.Tensor, n_epochs: int, width: int) -> torch.Tensor:
    """``[clients, n_epochs, width]``: each row's first ``count`` entries permute ``range(count)``."""
    k = _words(client_words, n_epochs, width)
    k = torch.where(torch.arange(width, device=k.device)[None, None, :] < counts[:, None, None], k, _PADDING)
    return torch.sort(k, dim=-1, stable=True).indices


def minibatch_stream_torch(client_words: torch.Tensor, counts: np.ndarray, batch_size: int,
                           steps: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~pfedest.core.sampling.minibatch_stream` with keyed draws, computed on ``client_words``' device.

    Parameters
    ----------
    client_words : Tensor of int64, shape (n_clients,)
        :func:`client_keys` of the clients, in the order of ``counts``.
    counts : ndarray of int, shape (n_clients,)
        Rows of each client (all positive).
    batch_size : int
        Rows per minibatch.
    steps : int or None
        As in :func:`~pfedest.core.sampling.minibatch_stream`.

    Returns
    -------
    idx : Tensor of int64, shape (n_clients, max_steps, batch_size)
    mask : Tensor of float32, same shape
        Equal to ``minibatch_stream(keys.uniforms(stream, clients), counts, batch_size, steps)``.

    Examples
    --------
    >>> from pfedest.core.sampling import minibatch_stream
    >>> keys, counts = RoundKeys(0, 1), np.array([3, 5])
    >>> idx, mask = minibatch_stream_torch(client_keys(keys, 0, torch.tensor([4, 9])), counts, 2, None)
    >>> ref_idx, ref_mask = minibatch_stream(keys.uniforms(0, [4, 9]), counts, 2, None)
    >>> bool((idx.numpy() == ref_idx).all()), bool((mask.numpy() == ref_mask).all())
    (True, True)
    """
    device = client_words.device
    counts_np = np.asarray(counts, dtype=np.int64)
    n, width = len(counts_np), int(counts_np.max())
    cnt = torch.as_tensor(counts_np, device=device)
    if steps is None:
        n_steps = int(-(-width // batch_size))
        position = torch.arange(n_steps * batch_size, device=device).reshape(n_steps, batch_size)
        valid = position[None] < cnt[:, None, None]
        perm = _permutations(client_words, cnt, 1, width)[:, 0]
        flat = torch.where(valid, position[None], 0).reshape(n, -1)
        idx = torch.gather(perm, 1, flat).reshape(n, n_steps, batch_size)
    else:
        per_step_np = np.minimum(batch_size, counts_np)
        per_epoch_np = counts_np // per_step_np
        per_step = torch.as_tensor(per_step_np, device=device)[:, None, None]
        per_epoch = torch.as_tensor(per_epoch_np, device=device)[:, None, None]
        step = torch.arange(steps, device=device)[None, :, None]
        col = torch.arange(batch_size, device=device)[None, None, :]
        valid = (col < per_step).expand(n, steps, batch_size)
        epoch, step_in_epoch = step // per_epoch, step % per_epoch
        within = torch.where(valid, step_in_epoch * per_step + col, 0)
        n_epochs = int(np.max(-(-steps // per_epoch_np)))
        perm = _permutations(client_words, cnt, n_epochs, width)
        idx = perm[torch.arange(n, device=device)[:, None, None], epoch, within]
    idx = torch.where(valid, idx, 0).to(torch.int64)
    return idx, valid.to(torch.float32)


def draw_batches_torch(streams, keys: RoundKeys, counts: np.ndarray, batch_size: int,
                       steps: Mapping[str, Optional[int]], clients: np.ndarray, device: torch.device) -> dict:
    """:func:`pfedest.core.rounds.draw_batches` with ``RoundKeys``, drawn on ``device``: ``(idx, mask)``
    tensors per stream, equal to the NumPy draws.

    Parameters
    ----------
    streams : sequence of str
        The algorithm's stream names, in order (stream ``i`` is keyed by ``i``).
    keys : RoundKeys
        The round.
    counts : ndarray of int
        Rows of each client, in the order of ``clients``.
    batch_size : int
        Rows per minibatch.
    steps : dict of str to int or None
        Step count of each stream.
    clients : ndarray of int
        The clients' global indices.
    device : torch.device
        Where to draw.

    Returns
    -------
    dict of str to (Tensor, Tensor)

    Examples
    --------
    >>> out = draw_batches_torch(["joint"], RoundKeys(0, 1), np.array([4, 6]), 2, {"joint": None},
    ...                          np.array([0, 1]), torch.device("cpu"))
    >>> out["joint"][0].shape, out["joint"][1].sum().item()
    (torch.Size([2, 3, 2]), 10.0)
    """
    ids = torch.as_tensor(np.asarray(clients, dtype=np.int64), device=device)
    return {name: minibatch_stream_torch(client_keys(keys, i, ids), counts, batch_size, steps[name])
            for i, name in enumerate(streams)}


def use_torch_draws(device: torch.device) -> bool:
    """Whether rounds on ``device`` draw their keyed minibatches in torch (there) or in NumPy.

    On accelerators torch: the draws stay on the device and the CPU does not hold up the round.
    On a CPU NumPy, which measured faster there (docs/guide/gpu.rst, "Measured defaults").

    Examples
    --------
    >>> use_torch_draws(torch.device("cpu")), use_torch_draws(torch.device("cuda"))
    (False, True)
    """
    return torch.device(device).type != "cpu"
