"""FedAlt and FedSim: what one sampled client does in a round.

Each local update is a pure function of the shared parameters ``u``, the client's personal
parameters ``v`` (dicts of tensors) and the client's minibatch streams, so the engine can run it
for one client at a time or ``torch.func.vmap`` it over many clients at once. A minibatch is a
row of global data indices with a mask (0 marks padding), and ``loss(u, v, idx, mask)`` is the
mask-weighted mean loss on those rows; a fully masked step has a zero gradient and changes
nothing, which is how clients with fewer steps share one batched computation exactly.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML 2022:
FedAlt (their Algorithm 1) updates ``v`` with ``u`` fixed, then ``u`` with the new ``v`` fixed;
FedSim (Algorithm 2) updates both from the same minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch.func import grad

Params = Dict[str, torch.Tensor]
Stream = Tuple[torch.Tensor, torch.Tensor]  # (indices [steps, batch], mask [steps, batch])
# loss(shared, personal, idx, mask) -> (mean loss, (sum of row losses, number of rows))
LossFn = Callable[[Params, Params, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class StepSizes:
    """Client learning rates for the shared and the personal block."""

    shared: float
    personal: float


def _sgd(params: Params, grads: Params, lr: float) -> Params:
    return {k: p - lr * grads[k] for k, p in params.items()}


def _loss_stats(loss: LossFn, shared: Params, personal: Params, idx, mask):
    return loss(shared, personal, idx, mask)[1]


def sgd_step(loss: LossFn, shared: Params, personal: Params, idx: torch.Tensor, mask: torch.Tensor,
             lr_shared: Optional[float], lr_personal: Optional[float]):
    """One SGD step on the blocks that get a learning rate (``None`` keeps a block fixed).

    Returns the new ``(shared, personal)`` and the step's ``(loss sum, row count)``.
    """
    blocks = [(0, shared, lr_shared), (1, personal, lr_personal)]
    trained = tuple(i for i, params, lr in blocks if lr is not None and params)
    if not trained:
        return shared, personal, _loss_stats(loss, shared, personal, idx, mask)
    grads, stats = grad(loss, argnums=trained, has_aux=True)(shared, personal, idx, mask)
    grads = dict(zip(trained, grads))
    if 0 in grads:
        shared = _sgd(shared, grads[0], lr_shared)
    if 1 in grads:
        personal = _sgd(personal, grads[1], lr_personal)
    return shared, personal, stats


def _run_stream(loss, shared, personal, stream: Stream, lr_shared, lr_personal, totals):
    idx, mask = stream
    for step in range(idx.shape[0]):
        shared, personal, (loss_sum, count) = sgd_step(loss, shared, personal, idx[step], mask[step],
                                                       lr_shared, lr_personal)
        totals = (totals[0] + loss_sum, totals[1] + count)
    return shared, personal, totals


def fedalt(loss: LossFn, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """FedAlt's local update: ``v`` with ``u`` fixed, then ``u`` with the new ``v`` fixed.

    Parameters
    ----------
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    shared, personal : dict of str to Tensor
        The client's starting point ``(u, v_i)``.
    streams : dict
        ``"personal"`` and ``"shared"``: ``(idx, mask)`` of shape ``[steps, batch]`` each.
    lr : StepSizes
        Client learning rates.

    Returns
    -------
    shared, personal : dict
        ``u_i`` (sent to the server) and ``v_i+`` (kept by the client).
    totals : tuple of Tensor
        Sum of minibatch row losses and number of rows, over all local steps.
    """
    totals = (0.0, 0.0)
    shared, personal, totals = _run_stream(loss, shared, personal, streams["personal"], None, lr.personal, totals)
    shared, personal, totals = _run_stream(loss, shared, personal, streams["shared"], lr.shared, None, totals)
    return shared, personal, totals


def fedsim(loss: LossFn, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """FedSim's local update: ``u`` and ``v`` take simultaneous SGD steps on the ``"joint"`` stream.

    Parameters and returns as in :func:`fedalt`.
    """
    return _run_stream(loss, shared, personal, streams["joint"], lr.shared, lr.personal, (0.0, 0.0))


def personal_only(loss: LossFn, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """Train ``v`` alone with ``u`` frozen: personalizing new clients, fine-tuning."""
    return _run_stream(loss, shared, personal, streams["personal"], None, lr.personal, (0.0, 0.0))


@dataclass(frozen=True)
class Algorithm:
    """A local update and the minibatch streams it consumes, each with the step count it uses.

    ``streams`` maps a stream name to ``"personal"`` or ``"shared"``: which of the estimator's
    step counts (``personal_steps``, ``shared_steps``) sets that stream's length.
    """

    name: str
    local_update: Callable
    streams: Mapping[str, str]


ALGORITHMS: dict[str, Algorithm] = {
    "fedalt": Algorithm("fedalt", fedalt, {"personal": "personal", "shared": "shared"}),
    "fedsim": Algorithm("fedsim", fedsim, {"joint": "shared"}),
    "personal_only": Algorithm("personal_only", personal_only, {"personal": "personal"}),
}
