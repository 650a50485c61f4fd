"""How the sampled clients' local updates run: one after another, or batched over clients.

Two engines run the same local update (:mod:`pfedest.core.algorithms`); a round
(:mod:`pfedest.core.rounds`) hands each a chunk of clients:

- ``"loop"`` (:class:`LoopEngine`) trains the sampled clients one after another: the reference.
- ``"vmap"`` (:class:`VmapEngine`) trains a chunk of clients in one batched computation: each SGD
  step's gradients ``torch.func.vmap``-ed over the clients, the updates applied to stacked copies.

Both see the same minibatches (drawn in :mod:`pfedest.core.sampling`) and agree to float tolerance.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Mapping, Optional

import torch
from torch import nn
from torch.func import vmap

from .algorithms import Algorithm, Params, StepSizes, sgd_gradients, sgd_step, sgd_update, trained_blocks
from .compiling import bucket_size, compile_step, pad_clients

ENGINES = ("auto", "loop", "vmap")

#: Above this many parameters ``engine="auto"`` trains clients one after another on a CPU.
CPU_VMAP_MAX_PARAMS = 500_000

#: Below this many clients a round ``engine="auto"`` trains them one after another on a CPU: with
#: 1-3 clients the batched step's overhead made fits 0.45-1.05x as fast as the loop, with 5 or more
#: 1.05-4x (docs/guide/gpu.rst, "Measured defaults").
CPU_VMAP_MIN_CLIENTS = 5

#: Modules whose training-mode behaviour does not vectorize over clients (batch norm updates its
#: running statistics in place), so ``engine="auto"`` falls back to the loop for networks that contain
#: them. Dropout vectorizes: each client draws its own masks (``vmap(randomness="different")``).
_NOT_VECTORIZABLE = (nn.modules.batchnorm._BatchNorm,)


def choose_engine(engine: str, module: nn.Module, device: torch.device, n_params: int,
                  clients_per_round: Optional[int] = None) -> str:
    """Resolve ``engine="auto"``; warn when ``"vmap"`` was asked of a module it cannot batch.

    Parameters
    ----------
    engine : {"auto", "loop", "vmap"}
        The engine asked for.
    module : torch.nn.Module
        The network; batch norm rules out ``"vmap"``.
    device : torch.device
        Where training runs.
    n_params : int
        Number of parameters of the network (above :data:`CPU_VMAP_MAX_PARAMS`, a CPU uses ``"loop"``).
    clients_per_round : int, optional
        Clients a round trains (below :data:`CPU_VMAP_MIN_CLIENTS`, a CPU uses ``"loop"``).

    Returns
    -------
    str
        ``"loop"`` or ``"vmap"``.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.engine import choose_engine
    >>> cpu = torch.device("cpu")
    >>> choose_engine("auto", torch.nn.Linear(3, 2), cpu, n_params=8)
    'vmap'
    >>> choose_engine("auto", torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), cpu, 8)
    'loop'
    >>> choose_engine("auto", torch.nn.Linear(3, 2), cpu, n_params=8, clients_per_round=2)
    'loop'
    """
    blockers = sorted({type(m).__name__ for m in module.modules() if isinstance(m, _NOT_VECTORIZABLE)})
    if engine == "vmap" and blockers:
        warnings.warn(f"engine='vmap' cannot batch clients through {blockers} in training mode; "
                      "using engine='loop'.", UserWarning, stacklevel=3)
        return "loop"
    if engine != "auto":
        return engine
    if blockers:
        return "loop"
    # On CPUs batching stops paying once the arithmetic dominates (docs/guide/gpu.rst, "Measured defaults").
    if device.type == "cpu" and (n_params > CPU_VMAP_MAX_PARAMS
                                 or (clients_per_round is not None and clients_per_round < CPU_VMAP_MIN_CLIENTS)):
        return "loop"
    return "vmap"


def _trim(idx: torch.Tensor, mask: torch.Tensor, mask_optional: bool = False):
    """One client's minibatches as a list, without the trailing fully masked steps (no-ops).

    With ``mask_optional`` (a loss that counts every row it is given when ``mask=None``) each step is
    its real rows alone: the same mean, without the masked reduction, and batch statistics (batch
    norm) see no padding rows. Fully masked steps, no-ops either way, are left out."""
    rows = (mask > 0).sum(-1).tolist()
    if not mask_optional:
        real = max((s + 1 for s, n in enumerate(rows) if n), default=0)
        return [(idx[s], mask[s]) for s in range(real)]
    full = mask.shape[-1]
    return [(idx[s] if n == full else idx[s][mask[s] > 0], None) for s, n in enumerate(rows) if n]


def _add_note(exc: Exception, sizes: list) -> None:
    """Say where an error of the network came from (Python 3.11+ prints notes under the message)."""
    if not hasattr(exc, "add_note"):
        return
    hint = (" A minibatch of 1 row cannot train a layer that needs several (BatchNorm1d): change batch_size so "
            "that no client's rows leave 1 over, or set personal_steps/shared_steps (minibatches of "
            "min(batch_size, rows) rows)." if 1 in sizes else "")
    exc.add_note(f"pfedest: raised in a client's local steps, on minibatches of {sizes} rows.{hint}")


def _stack(dicts):
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]} if dicts and dicts[0] else {}


class LoopEngine:
    """Clients one after another, each running :func:`~pfedest.core.algorithms.sgd_step` on its own
    parameters: the reference the batched engine is tested against.

    Parameters
    ----------
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    **step_options
        ``clip``, ``personal_l2``, ``personal_anchor`` of :func:`~pfedest.core.algorithms.sgd_step`.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.model import linear_loss
    >>> loss = linear_loss(torch.ones(6, 1), torch.full((6,), 2.0))
    >>> from pfedest.core.algorithms import ALGORITHMS, StepSizes
    >>> from pfedest.core.engine import LoopEngine
    >>> batch = (torch.tensor([[[0, 1, 2]], [[3, 4, 5]]]), torch.ones(2, 1, 3))
    >>> u, v, (sums, counts) = LoopEngine(loss).local_updates(
    ...     ALGORITHMS["fedsim"], {"w": torch.zeros(1)}, {"b": torch.zeros(2)},
    ...     {"joint": batch}, StepSizes(0.25, 0.25))
    >>> u["w"].tolist(), v["b"].tolist(), counts.tolist()
    ([[1.0], [1.0]], [1.0, 1.0], [3.0, 3.0])
    """

    name = "loop"

    def __init__(self, loss, **step_options):
        self._step = partial(sgd_step, loss, **step_options)
        # a loss that takes mask=None is spared the masked reduction on minibatches without padding
        self._mask_optional = bool(getattr(loss, "mask_optional", False))

    def local_updates(self, algorithm: Algorithm, shared: Params, personal: Params, streams, lr: StepSizes):
        """Run ``algorithm``'s local update for each client of the chunk.

        ``personal`` is stacked over the chunk's clients; ``streams`` maps each stream name to
        ``(idx, mask)`` of shape ``[clients, steps, batch]``. Returns the clients' shared and
        personal parameters stacked over clients, and their ``(loss sum, row count)``.
        """
        outs = []
        for c in range(next(iter(streams.values()))[0].shape[0]):
            mine = {name: _trim(idx[c], mask[c], self._mask_optional) for name, (idx, mask) in streams.items()}
            try:
                outs.append(algorithm.local_update(self._step, shared, {k: v[c] for k, v in personal.items()},
                                                   mine, lr))
            except Exception as exc:
                _add_note(exc, sorted({len(i) for steps in mine.values() for i, _ in steps}))
                raise
        totals = tuple(torch.stack([torch.as_tensor(o[2][i]) for o in outs]) for i in range(2))
        return _stack([o[0] for o in outs]), _stack([o[1] for o in outs]), totals


class VmapEngine:
    """All clients of a chunk at once: each SGD step's gradients are ``torch.func.vmap``-ed over a
    leading client axis, then applied in place to the engine's stacked copies.

    The shared parameters enter unbatched (every client starts from the same ``u``) and become
    batched at the first step that trains them. Updating in place, not allocating new parameters
    each step, matters on CPUs: a 100-client chunk of a 51k-parameter model is 20 MB a copy, and
    fresh memory of that size costs page faults on every step. With ``compile=True`` the batched
    gradient of each distinct step is compiled once with ``torch.compile`` (a one-time cost,
    :ref:`measured-defaults`; worth it for long runs and on GPUs).

    Parameters
    ----------
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    shared_dims : dict of str to int
        Number of dimensions of each unbatched shared tensor.
    compile : bool, default=False
        Compile each distinct step with ``torch.compile``.
    **step_options
        ``clip``, ``personal_l2``, ``personal_anchor`` of :func:`~pfedest.core.algorithms.sgd_step`.

    Examples
    --------
    The same update as :class:`LoopEngine`'s example, batched:

    >>> import torch
    >>> from pfedest.core.algorithms import ALGORITHMS, StepSizes
    >>> from pfedest.core.model import linear_loss
    >>> batch = (torch.tensor([[[0, 1, 2]], [[3, 4, 5]]]), torch.ones(2, 1, 3))
    >>> args = (ALGORITHMS["fedsim"], {"w": torch.zeros(1)}, {"b": torch.zeros(2)}, {"joint": batch},
    ...         StepSizes(0.25, 0.25))
    >>> loss = linear_loss(torch.ones(6, 1), torch.full((6,), 2.0))
    >>> batched, looped = VmapEngine(loss, {"w": 1}).local_updates(*args), LoopEngine(loss).local_updates(*args)
    >>> torch.equal(batched[0]["w"], looped[0]["w"]), batched[0]["w"].tolist()
    (True, [[1.0], [1.0]])
    """

    name = "vmap"

    def __init__(self, loss, shared_dims: Mapping[str, int], compile: bool = False, **step_options):
        self._loss = loss
        self._step_options = step_options
        self._shared_dims = dict(shared_dims)
        self._compile = compile
        self._batched_fns = {}

    def _batched(self, shared: Params) -> bool:
        return any(v.dim() > self._shared_dims[k] for k, v in shared.items())

    def _batched_fn(self, batched: bool, trained: tuple, n_clients: int):
        """The per-client gradients (or, training nothing, the loss stats), vmapped; built once per
        kind (and, compiled, per number of clients: each its own compiled function, so that no
        cache of torch._dynamo's runs past its recompile limit)."""
        key = (batched, trained, n_clients if self._compile else None)
        fn = self._batched_fns.get(key)
        if fn is None:
            if trained:
                one_client = partial(sgd_gradients, self._loss, trained=trained, **self._step_options)
            else:
                def one_client(shared, personal, idx, mask):
                    return self._loss(shared, personal, idx, mask)[1]
            # each client its own random numbers (dropout masks), from the generator the round seeded
            fn = vmap(one_client, in_dims=(0 if batched else None, 0, 0, 0), randomness="different")
            if self._compile:
                fn = compile_step(fn)
            self._batched_fns[key] = fn
        return fn

    def _step(self, shared, personal, idx, mask, lr_shared, lr_personal):
        """:func:`~pfedest.core.algorithms.sgd_step` for every client of the chunk at once.

        Updates ``personal`` and a batched ``shared`` in place: only :meth:`local_updates`, which
        owns those tensors, calls it.
        """
        trained = trained_blocks(shared, personal, lr_shared, lr_personal)
        batched = self._batched(shared)
        out = self._batched_fn(batched, trained, idx.shape[0])(shared, personal, idx, mask)
        if not trained:
            return shared, personal, out
        grads, stats = out
        if 0 in grads:
            if batched:
                _sgd_in_place(shared, grads[0], lr_shared)
            else:  # the first step on u: broadcasting against the gradients gives each client its copy
                shared = sgd_update(shared, grads[0], lr_shared)
        if 1 in grads:
            _sgd_in_place(personal, grads[1], lr_personal)
        return shared, personal, stats

    def local_updates(self, algorithm: Algorithm, shared: Params, personal: Params, streams, lr: StepSizes):
        """As :meth:`LoopEngine.local_updates`, batched."""
        n_clients = next(iter(streams.values()))[0].shape[0]
        if self._compile and bucket_size(n_clients) > n_clients:
            # compiled steps see a few sizes per octave, not one per chunk size (pfedest.core.compiling)
            personal, streams = pad_clients(personal, streams, bucket_size(n_clients))
            out = self.local_updates(algorithm, shared, personal, streams, lr)
            return tuple({k: v[:n_clients] for k, v in part.items()} for part in out[:2]) + (
                tuple(t[:n_clients] if torch.is_tensor(t) and t.dim() else t for t in out[2]),)
        per_step = {name: [(idx[:, s], mask[:, s]) for s in range(idx.shape[1])]
                    for name, (idx, mask) in streams.items()}
        # The steps update this copy in place; the caller's tensors keep the values before the
        # round (run_round restores them when a round fails).
        personal = {k: v.clone() for k, v in personal.items()}
        new_shared, new_personal, totals = algorithm.local_update(self._step, shared, personal, per_step, lr)
        if not self._batched(new_shared):  # no shared step ran: every client returns u itself
            new_shared = {k: v.expand(n_clients, *v.shape) for k, v in new_shared.items()}
        return new_shared, new_personal, totals


def _sgd_in_place(params: Params, grads: Params, lr: float) -> None:
    with torch.no_grad():
        for k, p in params.items():
            p.sub_(grads[k], alpha=lr)


def make_engine(name: str, loss, shared: Params, compile: bool = False, **step_options):
    """The engine called ``name`` (``"loop"`` or ``"vmap"``) for this loss and shared-parameter layout.

    ``step_options`` (``clip``, ``personal_l2``, ``personal_anchor``) go to every
    :func:`~pfedest.core.algorithms.sgd_step`.

    Parameters
    ----------
    name : {"loop", "vmap"}
        The engine.
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    shared : dict of str to Tensor
        The shared parameters (their layout; values are not kept).
    compile : bool, default=False
        Compile the batched steps (``"vmap"`` only).
    **step_options
        Passed to every :func:`~pfedest.core.algorithms.sgd_step`.

    Returns
    -------
    LoopEngine or VmapEngine

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.engine import make_engine
    >>> make_engine("vmap", loss=None, shared={"w": torch.zeros(2, 3)}).name
    'vmap'
    """
    if name == "loop":
        return LoopEngine(loss, **step_options)
    if name == "vmap":
        return VmapEngine(loss, {k: v.dim() for k, v in shared.items()}, compile=compile, **step_options)
    raise ValueError(f"Unknown engine {name!r}; expected 'loop' or 'vmap'.")


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device`` (Linux and CUDA report it; elsewhere 4 GiB is assumed).

    Parameters
    ----------
    device : torch.device
        A CPU or CUDA device.

    Returns
    -------
    int
        Free bytes.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.engine import free_memory_bytes
    >>> free_memory_bytes(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def bytes_per_client(module: nn.Module, example_row: torch.Tensor, batch_size: int) -> int:
    """What one client costs in a batched round: its copies of the parameters (shared and personal,
    with their gradients and the SGD update) and the activations of a minibatch, forward and backward.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    example_row : Tensor of shape (1, n_features)
        One input row, run forward once to count activations.
    batch_size : int
        Rows per minibatch.

    Returns
    -------
    int
        Estimated bytes (float32).

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.engine import bytes_per_client
    >>> bytes_per_client(torch.nn.Linear(3, 2), torch.zeros(1, 3), batch_size=4)  # 4 * (4*8 + 3*4*2)
    224
    """
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


#: On CPUs a chunk of a few hundred MiB runs faster than one chunk of all clients (:ref:`measured-defaults`).
CPU_CHUNK_BYTES = 256 * 2**20


def auto_chunk_size(device: torch.device, per_client: int, share: float = 0.5) -> int:
    """Clients per batched chunk: at most ``share`` of the free memory (and 256 MiB on a CPU).

    Parameters
    ----------
    device : torch.device
        Where training runs.
    per_client : int
        Bytes one client costs (:func:`bytes_per_client`).
    share : float, default=0.5
        Fraction of the free memory to use.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.engine import auto_chunk_size
    >>> auto_chunk_size(torch.device("cpu"), per_client=2**30)
    1
    >>> auto_chunk_size(torch.device("cpu"), per_client=2**20) <= 256
    True
    """
    budget = int(share * free_memory_bytes(device))
    if device.type == "cpu":
        budget = min(budget, CPU_CHUNK_BYTES)
    return max(1, budget // max(per_client, 1))
