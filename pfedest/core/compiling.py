"""When and how the batched SGD step is compiled with ``torch.compile``.

Three things make compiling a default that is safe to leave on:

- :func:`choose_compile` resolves ``compile="auto"``: compile only where it was measured to pay
  (CUDA, the vmap engine) and only when the fit runs enough batched steps to earn the one-time cost
  back.
- :func:`bucket_size`: a chunk of ``n`` clients is padded with clients that train nothing up to
  the next of a few sizes per octave, so a fit (or a grid search of fits) compiles a bounded number
  of shapes, not one per chunk size.
- :func:`compile_step` gives every compiled step its own code object. Every ``vmap``-ed function
  shares the code of ``torch.func``'s wrapper, and ``torch._dynamo`` keeps at most
  ``recompile_limit`` (8) compiled versions per code object, then runs eager (one logged
  warning). Without this a whole process compiled at most 8 steps: a FedAlt fit with two chunk
  sizes needs 6, a grid search of fits many more.
"""

from __future__ import annotations

import types
from typing import Mapping, Tuple

import torch

from .types import Params

__all__ = ["AUTO_COMPILE_MIN_STEPS", "COMPILE_OPTIONS", "bucket_size", "choose_compile", "compile_step",
           "pad_clients"]

#: ``compile="auto"`` compiles when a fit is planned to run at least this many batched steps
#: (rounds x local steps x chunks). Break-even estimate: compiling saved about 2 ms per batched
#: step on an H200 (eager vmap is launch-bound at about 3 ms a step, compiled about 0.7 ms at 100
#: clients: docs/guide/gpu.rst) against a one-time compile of about 30 s for FedAlt's three step
#: kinds (32 s cold on the CPU, PERFORMANCE.md); the GPU's own compile time is measured by
#: benchmarks/gpu_check.sh.
AUTO_COMPILE_MIN_STEPS = 15_000

#: Options of every ``torch.compile`` call (a test may select the ``"eager"`` backend).
COMPILE_OPTIONS = {"dynamic": False}


def choose_compile(compile, engine: str, device: torch.device, planned_steps: int) -> bool:
    """Resolve the ``compile`` setting of a fit.

    Parameters
    ----------
    compile : bool or "auto"
        The setting. ``True``/``False`` are kept (compiling applies to the vmap engine only).
    engine : {"loop", "vmap"}
        The resolved engine.
    device : torch.device
        Where the fit trains.
    planned_steps : int
        Batched steps the fit plans to run: rounds x local steps per round x chunks per round.

    Returns
    -------
    bool
        ``"auto"``: true on CUDA with the vmap engine when ``planned_steps`` reaches
        :data:`AUTO_COMPILE_MIN_STEPS`; never on a CPU (a compile of tens of seconds there bought
        1.3-1.9x at 100 clients a round, docs/guide/gpu.rst), nor with the loop engine.

    Examples
    --------
    >>> cuda, cpu = torch.device("cuda"), torch.device("cpu")
    >>> choose_compile("auto", "vmap", cuda, 300 * 10), choose_compile("auto", "vmap", cuda, 3000 * 10)
    (False, True)
    >>> choose_compile("auto", "vmap", cpu, 10**9), choose_compile(True, "vmap", cpu, 1)
    (False, True)
    """
    if compile != "auto":
        return bool(compile) and engine == "vmap"
    return engine == "vmap" and torch.device(device).type == "cuda" and planned_steps >= AUTO_COMPILE_MIN_STEPS


def bucket_size(n: int) -> int:
    """The smallest size ``>= n`` of the form ``k * 2**j`` with ``k`` in 4..7 (or ``n`` itself up to 8).

    A chunk of ``n`` clients is padded to it: at most a quarter of it is padding, and sizes up to
    ``N`` fall into at most about ``4 * log2(N)`` buckets.

    Examples
    --------
    >>> [bucket_size(n) for n in (1, 8, 9, 10, 100, 1000, 1024, 1025, 10_000)]
    [1, 8, 10, 10, 112, 1024, 1024, 1280, 10240]
    """
    if n <= 8:
        return max(int(n), 1)
    step = 1 << (int(n).bit_length() - 3)  # n in [2**j, 2**(j+1)): steps of 2**(j-2)
    return -(-int(n) // step) * step


def pad_clients(personal: Params, streams: Mapping, size: int) -> Tuple[Params, dict]:
    """Pad a chunk's personal parameters and minibatches with clients that train nothing, to ``size``.

    A padded client copies the first client's personal parameters and has fully masked minibatches,
    so every step leaves it as it was (:mod:`pfedest.core.algorithms`); the caller drops its rows.

    Examples
    --------
    >>> p, s = pad_clients({"b": torch.ones(2, 3)}, {"joint": (torch.ones(2, 4, 5, dtype=torch.int64),
    ...                                                        torch.ones(2, 4, 5))}, 3)
    >>> p["b"].shape, s["joint"][0].shape, s["joint"][1][2].sum().item()
    (torch.Size([3, 3]), torch.Size([3, 4, 5]), 0.0)
    """
    n = next(iter(streams.values()))[0].shape[0]
    extra = size - n
    if extra <= 0:
        return dict(personal), dict(streams)
    padded_personal = {k: torch.cat([v, v[:1].expand(extra, *v.shape[1:])]) for k, v in personal.items()}
    padded_streams = {name: (torch.cat([idx, idx.new_zeros(extra, *idx.shape[1:])]),
                             torch.cat([mask, mask.new_zeros(extra, *mask.shape[1:])]))
                      for name, (idx, mask) in streams.items()}
    return padded_personal, padded_streams


def compile_step(fn):
    """``torch.compile`` of ``fn`` through a wrapper with a code object of its own.

    ``torch._dynamo`` caches compiled versions per code object, at most ``recompile_limit`` of
    them, and every ``vmap``-ed function runs the same wrapper code: without a code object of its
    own each compiled step would share (and soon exhaust) one cache.

    Examples
    --------
    >>> compile_step(lambda x: x + 1).__name__
    'batched_step'
    """
    def call(*args):
        return fn(*args)

    own = types.FunctionType(call.__code__.replace(co_name="batched_step"), call.__globals__, "batched_step",
                             None, call.__closure__)
    compiled = torch.compile(own, **COMPILE_OPTIONS)
    compiled.__name__ = "batched_step"
    return compiled
