"""One round of federated training, in three steps that each caller composes as it needs.

1. :func:`draw_batches`: the sampled clients' minibatches, keyed by (seed, round, stream, client).
2. :func:`client_updates`: run the algorithm's local update for every sampled client (in chunks,
   through an engine), write their personal parameters back, and average what they send.
3. :func:`server_update`: the server optimizer's step on that average.

:func:`run_round` is the three in a row, as the estimator and the theory driver use them; a Flower
node calls :func:`draw_batches` and :func:`client_updates` for its one client, and the Flower
server :func:`server_update` (FedJAX's split of client and server update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from .algorithms import Algorithm, Params, StepSizes
from .sampling import RoundKeys, minibatch_stream
from .server import ServerOptimizer, WeightedAverage
from .torch_draws import draw_batches_torch, use_torch_draws

__all__ = ["RoundResult", "draw_batches", "client_updates", "server_update", "run_round"]


@dataclass
class RoundResult:
    """What a round produced, besides the updated state.

    ``finite`` is false when a client's loss was not finite; the round then changed nothing.

    Parameters
    ----------
    loss_sum : float
        Sum of the row losses over all local steps of the sampled clients.
    row_count : float
        Number of rows those losses were summed over.
    bytes_up : int
        Bytes of shared parameters sent to the server (0 without aggregation).
    finite : bool, default=True
        False when a client's loss was not finite.

    Examples
    --------
    >>> result = RoundResult(loss_sum=6.0, row_count=4.0, bytes_up=32)
    >>> result.loss_sum / result.row_count, result.finite
    (1.5, True)
    """

    loss_sum: float
    row_count: float
    bytes_up: int
    finite: bool = True


def draw_batches(algorithm: Algorithm, rng, counts: np.ndarray, batch_size: int,
                 steps: Mapping[str, Optional[int]], keys: Optional[np.ndarray] = None,
                 device: Optional[torch.device] = None) -> dict:
    """The minibatches of each of ``algorithm``'s streams for clients with ``counts`` rows.

    Parameters
    ----------
    algorithm : Algorithm
        Its ``streams`` name the draws (``"personal"``/``"shared"`` for FedAlt, ``"joint"`` for FedSim).
    rng : RoundKeys or numpy.random.Generator
        A :class:`~pfedest.core.sampling.RoundKeys` keys stream ``i`` of the algorithm by the
        clients' ``keys``, so a client's minibatches do not depend on who else is sampled; a
        Generator draws all streams from itself in turn.
    counts : ndarray of int
        Rows of each client.
    batch_size : int
        Rows per minibatch.
    steps : dict of str to int or None
        Step count of each stream (``None``: one epoch).
    keys : ndarray of int, optional
        Each client's identity in the whole federation (with ``RoundKeys``); default ``0..n-1``.
    device : torch.device, optional
        Where the round trains. With ``RoundKeys`` on an accelerator the draws are made there, in
        torch (:mod:`pfedest.core.torch_draws`; the same indices), and come back as tensors.

    Returns
    -------
    dict of str to (ndarray, ndarray) or (Tensor, Tensor)
        ``(idx, mask)`` per stream, each of shape ``[clients, steps, batch]``; ``idx`` indexes each
        client's own rows.

    Examples
    --------
    >>> from pfedest.core.algorithms import ALGORITHMS
    >>> from pfedest.core.sampling import RoundKeys
    >>> batches = draw_batches(ALGORITHMS["fedsim"], RoundKeys(0, 1), np.array([4, 6]), 2, {"joint": None})
    >>> idx, mask = batches["joint"]
    >>> idx.shape, mask.sum(axis=(1, 2)).astype(int).tolist()  # one epoch each: 2 and 3 steps of 2 rows
    ((2, 3, 2), [4, 6])
    """
    counts = np.asarray(counts)
    if isinstance(rng, RoundKeys):
        keys = np.arange(len(counts)) if keys is None else np.asarray(keys)
        if device is not None and use_torch_draws(device):
            return draw_batches_torch(algorithm.streams, rng, counts, batch_size, steps, keys, device)
        sources = {name: rng.uniforms(i, keys) for i, name in enumerate(algorithm.streams)}
    else:
        sources = {name: rng for name in algorithm.streams}
    return {name: minibatch_stream(sources[name], counts, batch_size, steps[name]) for name in algorithm.streams}


def client_updates(algorithm: Algorithm, engine, shared: Params, personal_state: Params, sampled: np.ndarray,
                   batches: Mapping, offsets: np.ndarray, lr: StepSizes, *, weights: Optional[np.ndarray] = None,
                   chunk_size: Optional[int] = None, device: torch.device = torch.device("cpu"),
                   average=None) -> tuple[Optional[Params], RoundResult]:
    """Run the local update of every ``sampled`` client; return the weighted mean of their shared parameters.

    Parameters
    ----------
    algorithm : Algorithm
        The local update (:data:`~pfedest.core.algorithms.ALGORITHMS`).
    engine : LoopEngine or VmapEngine
        Runs a chunk of clients' updates.
    shared : dict of str to Tensor
        The server's shared parameters ``u`` (not changed).
    personal_state : dict of str to Tensor
        Personal parameters stacked over all clients; the sampled clients' rows are updated in place.
    sampled : ndarray of int
        The clients of the round (rows of ``personal_state``).
    batches : dict
        :func:`draw_batches` for the sampled clients, in the order of ``sampled``.
    offsets : ndarray of int
        Each client's first row in the data (indexed like ``personal_state``).
    lr : StepSizes
        Client learning rates.
    weights : ndarray of float, optional
        Each sampled client's weight in the average (row counts for FedAvg); ``None``: nothing is
        averaged (personalization), and the mean returned is ``None``.
    chunk_size : int, optional
        Clients per engine call (``None``: all at once).
    device : torch.device, default=cpu
        Where the tensors live.
    average : WeightedAverage or PrivateSum, optional
        What combines the clients' shared parameters (``add`` chunks, then ``mean``); default a
        fresh :class:`~pfedest.core.server.WeightedAverage`. A
        :class:`~pfedest.core.privacy.PrivateSum` clips and noises them (DP-FedAvg).

    Returns
    -------
    mean : dict of str to Tensor or None
        The weighted mean of the clients' shared parameters.
    result : RoundResult
        Loss totals and bytes sent. If a client's loss is not finite, ``personal_state`` is left as
        it was, ``mean`` is ``None`` and ``result.finite`` is false.
    """
    average = WeightedAverage() if average is None else average
    loss_sum = row_count = 0.0
    written = []  # (rows, personal before the round) of chunks already written back
    chunk_size = chunk_size or max(len(sampled), 1)  # Poisson sampling (privacy) can sample no client
    for start in range(0, len(sampled), chunk_size):
        chunk = slice(start, start + chunk_size)
        clients = sampled[chunk]
        first = torch.as_tensor(offsets[clients], device=device)[:, None, None]
        streams = {name: (torch.as_tensor(idx[chunk], device=device) + first,
                          torch.as_tensor(mask[chunk], device=device))
                   for name, (idx, mask) in batches.items()}
        rows = torch.as_tensor(clients, device=device)
        personal = {k: v[rows] for k, v in personal_state.items()}
        client_shared, client_personal, (sums, cnts) = engine.local_updates(algorithm, shared, personal, streams, lr)
        chunk_loss = sums.sum()
        if not torch.isfinite(chunk_loss):
            for done_rows, before in written:  # leave the state as it was before the round
                for k, v in before.items():
                    personal_state[k][done_rows] = v
            return None, RoundResult(float(chunk_loss), float(cnts.sum()), 0, finite=False)
        for k, v in client_personal.items():
            personal_state[k][rows] = v
        written.append((rows, personal))
        if weights is not None:
            average.add(client_shared, torch.as_tensor(np.asarray(weights)[chunk], dtype=torch.float32, device=device))
        loss_sum = loss_sum + chunk_loss
        row_count = row_count + cnts.sum()
    bytes_up = sum(v.numel() * v.element_size() for v in shared.values()) * len(sampled) if weights is not None else 0
    return (average.mean() if weights is not None else None), RoundResult(float(loss_sum), float(row_count), bytes_up)


def server_update(optimizer: ServerOptimizer, shared: Params, mean: Params) -> Params:
    """The server's step from ``shared`` given the clients' weighted ``mean`` (SGD at lr 1: the mean itself).

    Examples
    --------
    >>> new = server_update(ServerOptimizer("sgd", lr=0.5), {"w": torch.zeros(1)}, {"w": torch.ones(1)})
    >>> new["w"].tolist()
    [0.5]
    """
    return optimizer.step(shared, mean)


def run_round(*, algorithm: Algorithm, engine, shared: Params, personal_state: Params, counts: np.ndarray,
              offsets: np.ndarray, sampled: np.ndarray, rng, batch_size: int,
              steps: Mapping[str, Optional[int]], lr: StepSizes, server_lr: float = 1.0,
              chunk_size: Optional[int] = None, device: torch.device = torch.device("cpu"), aggregate: bool = True,
              server_optimizer: Optional[ServerOptimizer] = None,
              weights: Optional[np.ndarray] = None, average=None) -> tuple[Params, RoundResult]:
    """Train the ``sampled`` clients for one round and return the new shared parameters.

    :func:`draw_batches`, :func:`client_updates` and :func:`server_update` in a row. With
    ``aggregate=False`` the shared parameters come back unchanged (personalization). If a client's
    loss is not finite, the round is undone and ``finite`` is false.

    Parameters
    ----------
    algorithm, engine, shared, personal_state, offsets, sampled, lr, chunk_size, device
        As in :func:`client_updates` (``personal_state`` is updated in place).
    counts : ndarray of int
        Rows per client, indexed like ``personal_state``.
    rng : numpy.random.Generator or RoundKeys
        Draws the minibatches (:func:`draw_batches`; keyed by each client's index in ``counts``).
    batch_size : int
        Rows per minibatch.
    steps : dict of str to int or None
        Step count of each stream (``None``: one epoch).
    server_lr : float, default=1.0
        Learning rate of the default server optimizer (SGD; 1.0: plain averaging).
    aggregate : bool, default=True
        Average the shared parameters; ``False`` leaves them unchanged.
    server_optimizer : ServerOptimizer, optional
        Applied to the averaged shared parameters.
    weights : ndarray of float, optional
        Each client's weight in the average, indexed like ``counts``; ``None`` uses ``counts``.
    average : PrivateSum, optional
        Combines the clients' shared parameters instead of the weighted mean (:func:`client_updates`).

    Returns
    -------
    new_shared : dict of str to Tensor
    result : RoundResult

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.model import linear_loss
    >>> loss = linear_loss(torch.ones(6, 1), torch.full((6,), 2.0))
    >>> from pfedest.core.algorithms import ALGORITHMS
    >>> from pfedest.core.engine import make_engine
    >>> shared, personal = {"w": torch.zeros(1)}, {"b": torch.zeros(2)}
    >>> new_shared, result = run_round(
    ...     algorithm=ALGORITHMS["fedalt"], engine=make_engine("loop", loss, shared),
    ...     shared=shared, personal_state=personal, counts=np.array([3, 3]),
    ...     offsets=np.array([0, 3]), sampled=np.array([0, 1]), rng=np.random.default_rng(0),
    ...     batch_size=3, steps={"personal": 1, "shared": 1}, lr=StepSizes(0.25, 0.25))
    >>> personal["b"].tolist(), new_shared["w"].tolist(), result.row_count
    ([1.0, 1.0], [0.5], 12.0)
    """
    batches = draw_batches(algorithm, rng, np.asarray(counts)[sampled], batch_size, steps, keys=sampled,
                           device=device) if len(sampled) else {}
    weight = None
    if aggregate:
        weight = np.asarray(counts if weights is None else weights)[sampled]
    mean, result = client_updates(algorithm, engine, shared, personal_state, sampled, batches, offsets, lr,
                                  weights=weight, chunk_size=chunk_size, device=device, average=average)
    if mean is None:
        return dict(shared), result
    return server_update(server_optimizer or ServerOptimizer("sgd", lr=server_lr), shared, mean), result
