"""FedAlt and FedSim: what one sampled client does in a round.

A local update is a short sequence of SGD steps over minibatch streams. It is written once, in
terms of a ``step`` function that the engine supplies: for one client it is :func:`sgd_step`
itself; for many clients at once it is the same step vmapped over a leading client axis (see
:mod:`pfedest.core.engine`). A stream is a sequence of ``(idx, mask)`` minibatches: global row
indices and a 0/1 mask, 0 marking padding. A fully masked step has a zero gradient and changes
nothing, which is how clients with fewer steps share one batched computation exactly.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML 2022:
FedAlt (their Algorithm 1) updates ``v`` with ``u`` fixed, then ``u`` with the new ``v`` fixed;
FedSim (Algorithm 2) updates both from the same minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
from torch.func import grad

from .types import Params

Stats = Tuple[torch.Tensor, torch.Tensor]  # (sum of row losses, number of rows)
Stream = Sequence[Tuple[torch.Tensor, torch.Tensor]]  # one (idx, mask) minibatch per step
# loss(shared, personal, idx, mask) -> (mean loss, stats); mask=None (every row real) only for a loss
# marked ``mask_optional`` (pfedest.core.model.make_loss), from the loop engine
LossFn = Callable[[Params, Params, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Stats]]
# step(shared, personal, idx, mask, lr_shared, lr_personal) -> (shared, personal, stats)
Step = Callable[..., Tuple[Params, Params, Stats]]


@dataclass(frozen=True)
class StepSizes:
    """Client learning rates for the shared and the personal block.

    Parameters
    ----------
    shared : float
        Learning rate of the shared parameters ``u``.
    personal : float
        Learning rate of the personal parameters ``v_i``.

    Examples
    --------
    >>> from pfedest.core.algorithms import StepSizes
    >>> StepSizes(shared=0.1, personal=0.5).personal
    0.5
    """

    shared: float
    personal: float


def sgd_update(params: Params, grads: Params, lr) -> Params:
    """``p - lr * g`` for every parameter, as new tensors.

    Examples
    --------
    >>> sgd_update({"w": torch.ones(2)}, {"w": torch.full((2,), 4.0)}, 0.25)["w"].tolist()
    [0.0, 0.0]
    """
    # One fused pass over the weights (p - lr * g would read and write them twice).
    return {k: torch.sub(p, grads[k], alpha=lr) for k, p in params.items()}


def trained_blocks(shared: Params, personal: Params, lr_shared, lr_personal) -> Tuple[int, ...]:
    """The blocks a step trains: ``0`` (shared) and/or ``1`` (personal), those given a learning rate.

    Examples
    --------
    >>> from pfedest.core.algorithms import trained_blocks
    >>> trained_blocks({"w": 0}, {"b": 0}, None, 0.1), trained_blocks({"w": 0}, {}, 0.1, 0.1)
    ((1,), (0,))
    """
    blocks = [(0, shared, lr_shared), (1, personal, lr_personal)]
    return tuple(i for i, params, lr in blocks if lr is not None and params)


def sgd_gradients(loss: LossFn, shared: Params, personal: Params, idx: torch.Tensor, mask: torch.Tensor,
                  trained: Tuple[int, ...], *, clip: Optional[float] = None, personal_l2: float = 0.0,
                  personal_anchor: Optional[Params] = None, autograd: bool = False):
    """The direction of one client's SGD step: the gradients of the ``trained`` blocks.

    The L2 term of the personal block is added and the gradient of the trained blocks is clipped
    (jointly) here, so the step itself is ``p - lr * g``; see :func:`sgd_step` for the parameters.
    ``autograd=True`` differentiates with ``torch.autograd.grad`` (half the per-call overhead of
    ``torch.func.grad``: the one-client loop's choice) instead of ``torch.func.grad``, which
    ``vmap`` needs. The two give the same gradients.

    Returns
    -------
    grads : dict of int to dict
        Block (``0`` shared, ``1`` personal) to its gradients.
    stats : (Tensor, Tensor)
        ``(loss sum, row count)`` of the minibatch, at the parameters given.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.algorithms import sgd_gradients
    >>> def loss(shared, personal, idx, mask):
    ...     err = (shared["w"] - 3.0) ** 2
    ...     return err, (err.detach(), mask.sum())
    >>> grads, _ = sgd_gradients(loss, {"w": torch.zeros(())}, {}, None, torch.ones(1), (0,), clip=1.0)
    >>> grads[0]["w"].item()  # -6 clipped to norm 1
    -1.0
    """
    if autograd:
        grads, stats = _autograd_gradients(loss, shared, personal, idx, mask, trained)
    else:
        grads, stats = grad(loss, argnums=trained, has_aux=True)(shared, personal, idx, mask)
    grads = dict(zip(trained, grads))
    if personal_l2 and 1 in grads:
        anchor = personal_anchor or {}
        # Zero on a fully masked step (padding of a client with fewer steps): such a step must
        # change nothing, penalty included. A product, not a branch, so that it vmaps.
        weight = personal_l2 if mask is None else personal_l2 * (mask.sum() > 0).to(mask.dtype)
        grads[1] = {k: g + weight * (personal[k] - anchor[k] if k in anchor else personal[k])
                    for k, g in grads[1].items()}
    if clip is not None:
        squares = [(g * g).sum() for block in grads.values() for g in block.values()]
        scale = (clip / (torch.stack(squares).sum().sqrt() + 1e-12)).clamp(max=1.0)
        grads = {b: {k: g * scale for k, g in block.items()} for b, block in grads.items()}
    return grads, stats


def _autograd_gradients(loss: LossFn, shared: Params, personal: Params, idx, mask, trained):
    blocks = [shared, personal]
    for b in trained:
        blocks[b] = {k: v.detach().requires_grad_() for k, v in blocks[b].items()}
    with torch.enable_grad():
        mean, stats = loss(blocks[0], blocks[1], idx, mask)
        leaves = [v for b in trained for v in blocks[b].values()]
        # materialize: a parameter the loss does not reach gets a zero gradient, as torch.func.grad gives
        flat = torch.autograd.grad(mean, leaves, allow_unused=True, materialize_grads=True)
    grads, start = [], 0
    for b in trained:
        names = list(blocks[b])
        grads.append(dict(zip(names, flat[start:start + len(names)])))
        start += len(names)
    return grads, stats


def sgd_step(loss: LossFn, shared: Params, personal: Params, idx: torch.Tensor, mask: torch.Tensor,
             lr_shared: Optional[float], lr_personal: Optional[float], *, clip: Optional[float] = None,
             personal_l2: float = 0.0, personal_anchor: Optional[Params] = None):
    """One client's SGD step on the blocks that get a learning rate (``None`` keeps a block fixed).

    Parameters
    ----------
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    shared, personal : dict of str to Tensor
    idx, mask : Tensor of shape (batch,)
        The minibatch: row indices and 0/1 weights.
    lr_shared, lr_personal : float or None
    clip : float, optional
        Scale the gradient of the trained blocks (jointly) to at most this norm.
    personal_l2 : float, default=0.0
        Adds ``personal_l2 / 2 * ||v - anchor||^2`` to the objective of the personal block.
    personal_anchor : dict, optional
        The anchor of the penalty (the personal starting value); zero when ``None``.

    Returns
    -------
    shared, personal : dict
        After the step.
    stats : tuple of Tensor
        The minibatch's ``(loss sum, row count)`` before the step.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.model import linear_loss
    >>> loss = linear_loss(torch.ones(4, 1), torch.full((4,), 2.0))
    >>> from pfedest.core.algorithms import sgd_step
    >>> shared, personal = {"w": torch.zeros(1)}, {"b": torch.zeros(())}
    >>> idx, mask = torch.arange(4), torch.ones(4)
    >>> u, v, (loss_sum, count) = sgd_step(loss, shared, personal, idx, mask, None, 0.25)
    >>> u["w"].item(), v["b"].item(), loss_sum.item(), count.item()
    (0.0, 1.0, 16.0, 4.0)
    """
    trained = trained_blocks(shared, personal, lr_shared, lr_personal)
    if not trained:
        return shared, personal, loss(shared, personal, idx, mask)[1]
    grads, stats = sgd_gradients(loss, shared, personal, idx, mask, trained, clip=clip,
                                 personal_l2=personal_l2, personal_anchor=personal_anchor, autograd=True)
    if 0 in grads:
        shared = sgd_update(shared, grads[0], lr_shared)
    if 1 in grads:
        personal = sgd_update(personal, grads[1], lr_personal)
    return shared, personal, stats


def _run_stream(step: Step, shared, personal, stream: Stream, lr_shared, lr_personal, totals):
    for idx, mask in stream:
        shared, personal, (loss_sum, count) = step(shared, personal, idx, mask, lr_shared, lr_personal)
        totals = (totals[0] + loss_sum, totals[1] + count)
    return shared, personal, totals


def fedalt(step: Step, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """FedAlt's local update: ``v`` with ``u`` fixed, then ``u`` with the new ``v`` fixed.

    Parameters
    ----------
    step : callable
        ``step(shared, personal, idx, mask, lr_shared, lr_personal) -> (shared, personal, (sum, count))``,
        :func:`sgd_step` with the loss bound, or its batched form.
    shared, personal : dict of str to Tensor
        The starting point ``(u, v_i)``.
    streams : dict
        ``"personal"`` and ``"shared"``: sequences of ``(idx, mask)`` minibatches.
    lr : StepSizes
        Client learning rates.

    Returns
    -------
    shared, personal : dict
        ``u_i`` (sent to the server) and ``v_i+`` (kept by the client).
    totals : tuple
        Sum of minibatch row losses and number of rows, over all local steps.

    Examples
    --------
    >>> import torch
    >>> from pfedest.core.model import linear_loss
    >>> loss = linear_loss(torch.ones(4, 1), torch.full((4,), 2.0))
    >>> from functools import partial
    >>> from pfedest.core.algorithms import StepSizes, fedalt, sgd_step
    >>> batch = [(torch.arange(4), torch.ones(4))]
    >>> u, v, (loss_sum, count) = fedalt(partial(sgd_step, loss), {"w": torch.zeros(1)},
    ...                                  {"b": torch.zeros(())}, {"personal": batch, "shared": batch},
    ...                                  StepSizes(shared=0.25, personal=0.25))
    >>> v["b"].item(), u["w"].item(), count.item()
    (1.0, 0.5, 8.0)
    """
    totals = (0.0, 0.0)
    shared, personal, totals = _run_stream(step, shared, personal, streams["personal"], None, lr.personal, totals)
    shared, personal, totals = _run_stream(step, shared, personal, streams["shared"], lr.shared, None, totals)
    return shared, personal, totals


def fedsim(step: Step, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """FedSim's local update: ``u`` and ``v`` take simultaneous SGD steps on the ``"joint"`` stream.

    Parameters and returns as :func:`fedalt`'s, with one stream: ``streams["joint"]``, a sequence
    of ``(idx, mask)`` minibatches.

    Examples
    --------
    >>> import torch
    >>> from functools import partial
    >>> from pfedest.core.algorithms import StepSizes, sgd_step
    >>> from pfedest.core.model import linear_loss
    >>> step = partial(sgd_step, linear_loss(torch.ones(4, 1), torch.full((4,), 2.0)))
    >>> joint = {"joint": [(torch.arange(4), torch.ones(4))]}
    >>> u, v, (loss_sum, _) = fedsim(step, {"w": torch.zeros(1)}, {"b": torch.zeros(())}, joint, StepSizes(0.25, 0.25))
    >>> u["w"].item(), v["b"].item(), loss_sum.item()
    (1.0, 1.0, 16.0)
    """
    return _run_stream(step, shared, personal, streams["joint"], lr.shared, lr.personal, (0.0, 0.0))


def personal_only(step: Step, shared: Params, personal: Params, streams: Mapping[str, Stream], lr: StepSizes):
    """Train ``v`` alone with ``u`` frozen: personalizing new clients, fine-tuning.

    Parameters and returns as :func:`fedalt`'s, with one stream, ``streams["personal"]``; only
    ``lr.personal`` is used and ``u`` comes back unchanged.

    Examples
    --------
    >>> import torch
    >>> from functools import partial
    >>> from pfedest.core.model import linear_loss
    >>> step = partial(sgd_step, linear_loss(torch.ones(4, 1), torch.full((4,), 2.0)))
    >>> u, v, _ = personal_only(step, {"w": torch.zeros(1)}, {"b": torch.zeros(())},
    ...                         {"personal": [(torch.arange(4), torch.ones(4))]}, StepSizes(0.25, 0.25))
    >>> u["w"].item(), v["b"].item()  # u frozen
    (0.0, 1.0)
    """
    return _run_stream(step, shared, personal, streams["personal"], None, lr.personal, (0.0, 0.0))


@dataclass(frozen=True)
class Algorithm:
    """A local update and the minibatch streams it consumes, each with the step count it uses.

    ``streams`` maps a stream name to ``"personal"`` or ``"shared"``: which of the estimator's
    step counts (``personal_steps``, ``shared_steps``) sets that stream's length.

    Parameters
    ----------
    name : str
        The registry key, e.g. ``"fedalt"``.
    local_update : callable
        ``local_update(step, shared, personal, streams, lr) -> (shared, personal, totals)``.
    streams : dict of str to str
        Stream name to ``"personal"`` or ``"shared"``.

    Examples
    --------
    >>> from pfedest.core.algorithms import ALGORITHMS
    >>> algo = ALGORITHMS["fedalt"]
    >>> algo.name, dict(algo.streams)
    ('fedalt', {'personal': 'personal', 'shared': 'shared'})
    """

    name: str
    local_update: Callable
    streams: Mapping[str, str]

    def steps(self, personal_steps: Optional[int], shared_steps: Optional[int]) -> dict:
        """Each stream's step count from the step counts of the two blocks (``None``: one epoch).

        Raises ``ValueError`` when every stream would take no step.

        Examples
        --------
        >>> ALGORITHMS["fedalt"].steps(personal_steps=2, shared_steps=None)
        {'personal': 2, 'shared': None}
        >>> ALGORITHMS["fedsim"].steps(personal_steps=2, shared_steps=5)
        {'joint': 5}
        """
        per_block = {"personal": personal_steps, "shared": shared_steps}
        steps = {name: per_block[block] for name, block in self.streams.items()}
        if all(s == 0 for s in steps.values()):
            raise ValueError(f"{self.name} would take no local step: personal_steps={personal_steps}, "
                             f"shared_steps={shared_steps}.")
        return steps


ALGORITHMS: dict[str, Algorithm] = {
    "fedalt": Algorithm("fedalt", fedalt, {"personal": "personal", "shared": "shared"}),
    "fedsim": Algorithm("fedsim", fedsim, {"joint": "shared"}),
    "personal_only": Algorithm("personal_only", personal_only, {"personal": "personal"}),
}
