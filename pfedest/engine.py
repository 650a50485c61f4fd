"""One round of training: sample clients, run their local updates, average the shared part.

Two engines run the same local update (:mod:`pfedest.algorithms`):

- ``"loop"`` trains the sampled clients one after another: the reference.
- ``"vmap"`` trains a chunk of clients in one batched computation with ``torch.func.vmap``.

Both see the same minibatches (drawn in :mod:`pfedest.sampling`) and agree to float tolerance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from .algorithms import Algorithm, Params, StepSizes
from .sampling import minibatch_stream
from .server import WeightedAverage

ENGINES = ("auto", "loop", "vmap")

#: Modules whose training-mode behaviour does not vectorize over clients (running statistics,
#: random masks), so ``engine="auto"`` falls back to the loop for networks that contain them.
_NOT_VECTORIZABLE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


@dataclass
class RoundResult:
    """What a round produced, besides the updated state.

    ``finite`` is false when a client's loss was not finite; the round then changed nothing.
    """

    loss_sum: float
    row_count: float
    bytes_up: int
    finite: bool = True


def choose_engine(engine: str, module: nn.Module, device: torch.device, n_params: int) -> str:
    """Resolve ``engine="auto"``; warn when ``"vmap"`` was asked of a module it cannot batch."""
    blockers = sorted({type(m).__name__ for m in module.modules() if isinstance(m, _NOT_VECTORIZABLE)})
    if engine == "vmap" and blockers:
        warnings.warn(f"engine='vmap' cannot batch clients through {blockers} in training mode; "
                      "using engine='loop'.", UserWarning, stacklevel=3)
        return "loop"
    if engine != "auto":
        return engine
    if blockers:
        return "loop"
    # Measured (shared/PERFORMANCE.md): on CPUs batching stops paying off for models of a few
    # 100k parameters, where the arithmetic dominates; on GPUs it always pays.
    if device.type == "cpu" and n_params > 100_000:
        return "loop"
    return "vmap"


def _trim(stream):
    """Drop the trailing fully masked steps of one client's stream (they change nothing)."""
    idx, mask = stream
    real = int((mask.sum(-1) > 0).nonzero().max()) + 1 if mask.any() else 0
    return idx[:real], mask[:real]


def _loop(update, shared: Params, personal: Params, streams):
    outs = []
    for c in range(next(iter(streams.values()))[0].shape[0]):
        mine = {name: _trim((idx[c], mask[c])) for name, (idx, mask) in streams.items()}
        outs.append(update(shared, {k: v[c] for k, v in personal.items()}, mine))
    stack = lambda dicts: {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]} if dicts[0] else {}
    client_shared = stack([o[0] for o in outs])
    client_personal = stack([o[1] for o in outs])
    totals = tuple(torch.stack([torch.as_tensor(o[2][i]) for o in outs]) for i in range(2))
    return client_shared, client_personal, totals


def _vmap(update, shared: Params, personal: Params, streams):
    return vmap(update, in_dims=(None, 0, 0))(shared, personal, streams)


def run_round(*, algorithm: Algorithm, loss, shared: Params, personal_state: Params, counts: np.ndarray,
              offsets: np.ndarray, sampled: np.ndarray, rng: np.random.Generator, batch_size: int,
              steps: Mapping[str, Optional[int]], lr: StepSizes, engine: str, server_lr: float,
              chunk_size: Optional[int], device: torch.device,
              aggregate: bool = True) -> tuple[Params, RoundResult]:
    """Train the ``sampled`` clients for one round and return the new shared parameters.

    ``personal_state`` (each tensor stacked over all clients) is updated in place for the sampled
    clients only. ``steps`` gives the step count of each of the algorithm's streams (``None``: one
    epoch). With ``aggregate=False`` the shared parameters come back unchanged (personalization).
    """
    update = partial(algorithm.local_update, loss, lr=lr)
    run = {"loop": _loop, "vmap": _vmap}[engine]
    streams_np = {name: minibatch_stream(rng, counts[sampled], batch_size, steps[name])
                  for name in algorithm.streams}
    server = WeightedAverage()
    loss_sum = row_count = 0.0
    written = []  # (rows, personal before the round) of chunks already written back
    chunk_size = chunk_size or len(sampled)
    for start in range(0, len(sampled), chunk_size):
        clients = sampled[start:start + chunk_size]
        streams = {}
        for name, (idx, mask) in streams_np.items():
            idx = idx[start:start + chunk_size] + offsets[clients][:, None, None]
            mask = mask[start:start + chunk_size]
            streams[name] = (torch.as_tensor(idx, device=device), torch.as_tensor(mask, device=device))
        rows = torch.as_tensor(clients, device=device)
        personal = {k: v[rows] for k, v in personal_state.items()}
        client_shared, client_personal, (sums, cnts) = run(update, shared, personal, streams)
        chunk_loss = sums.sum()
        if not torch.isfinite(chunk_loss):
            for done_rows, before in written:  # leave the state as it was before the round
                for k, v in before.items():
                    personal_state[k][done_rows] = v
            return dict(shared), RoundResult(float(chunk_loss), float(cnts.sum()), 0, finite=False)
        for k, v in client_personal.items():
            personal_state[k][rows] = v
        written.append((rows, personal))
        if aggregate:
            server.add(client_shared, torch.as_tensor(counts[clients], dtype=torch.float32, device=device))
        loss_sum = loss_sum + chunk_loss
        row_count = row_count + cnts.sum()
    bytes_per_client = sum(v.numel() * v.element_size() for v in shared.values())
    new_shared = server.step(shared, server_lr) if aggregate else dict(shared)
    return new_shared, RoundResult(float(loss_sum), float(row_count),
                                   bytes_per_client * len(sampled) if aggregate else 0)


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device`` (Linux and CUDA report it; elsewhere 4 GiB is assumed)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def bytes_per_client(module: nn.Module, example_row: torch.Tensor, batch_size: int) -> int:
    """What one client costs in a batched round: its copies of the parameters (shared and personal,
    with their gradients and the SGD update) and the activations of a minibatch, forward and backward."""
    n_params = sum(p.numel() for p in module.parameters())
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            module(example_row)
    finally:
        for hook in hooks:
            hook.remove()
    return 4 * (4 * n_params + 3 * batch_size * activations)


def auto_chunk_size(device: torch.device, per_client: int, share: float = 0.5) -> int:
    """Clients per batched chunk so that a chunk uses at most ``share`` of the free memory."""
    return max(1, int(share * free_memory_bytes(device)) // max(per_client, 1))
