"""The guard against harmful personalization (``guard="validation"``): fallback, decision, state.

Personalization raises the mean accuracy but leaves some clients worse than a model that is not
personalized (Pillutla et al., 2022). With ``guard="validation"`` the estimator

1. trains a *fallback* alongside: a global copy of the personal block, updated FedAvg-style in
   every training round by the round's sampled clients (each takes ``personal_steps`` local steps
   on it with the round's shared part fixed, the server averages them as it averages the shared
   part), so that ``(shared, fallback)`` is a model every client shares (:func:`fallback_updater`);
2. holds out ``validation_fraction`` of each client's rows from training, keyed per client so
   that a Flower node holds out the same rows (:func:`guard_holdout`; ``early_stopping``, when
   also on, monitors these rows);
3. after training, scores each client's held-out rows under its personal model and under the
   fallback with the estimator's per-row loss (the classifier's: 0/1 error, what its ``score``
   counts), and keeps the personal model only where it beats the fallback by ``guard_margin``
   standard errors of the paired per-row difference (:func:`pfedest.core.guard.decide`);
   the other clients are answered by the fallback (:func:`decide_clients`, :func:`guarded_personal`).

Why a fallback trained alongside rather than the average of the personal parts:
``docs/guide/guard.rst`` (measured by ``benchmarks/guard.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import CheckpointError
from .core.algorithms import ALGORITHMS
from .core.engine import make_engine
from .core.guard import EVIDENCE_FIELDS, decide, holdout_mask
from .core.model import personalized_logits
from .core.rounds import client_updates, draw_batches
from .core.sampling import RoundKeys

__all__ = ["FALLBACK_UPDATE", "GUARD_ATTRIBUTES", "check_guard", "fallback_updater", "decide_clients",
           "guarded_personal", "unseen_part", "extend_guard", "forget_guard", "guard_state", "load_guard_state", "holds_out", "guard_holdout"]

#: The fallback's local update: the personal block alone, the shared part fixed.
FALLBACK_UPDATE = ALGORITHMS["personal_only"]
#: The fitted attributes the guard sets.
GUARD_ATTRIBUTES = ("fallback_params_", "guard_weights_", "guard_evidence_")


def check_guard(est) -> None:
    """Refuse ``guard`` on a model without a personal part (there is nothing to guard)."""
    if est.guard is not None and not est.personal_params_:
        raise ValueError(f"guard={est.guard!r} chooses per client between its personal part and a shared "
                         "fallback, but this model has no personal part (split='none'); use guard=None.")


def holds_out(est, stages) -> bool:
    """Whether this call of training holds out each client's validation rows for the guard."""
    if est.guard is None:
        return False
    return "train" in stages or ("personalize" in stages and hasattr(est, "guard_weights_"))


def guard_holdout(data, fraction: float, seed: int):
    """``(train, valid)``: each client's held-out rows (:func:`pfedest.core.guard.holdout_mask`, keyed by
    the client's index, as a Flower node keys them by its partition-id) and the rest."""
    labels = data.y.cpu().numpy()
    held = np.zeros(len(labels), dtype=bool)
    for i in np.flatnonzero(data.counts):
        rows = slice(data.offsets[i], data.offsets[i] + data.counts[i])
        held[rows] = holdout_mask(labels[rows], fraction, seed, i)
    return _subset(data, ~held), _subset(data, held)


def _subset(data, keep):
    clients = data.row_clients()[keep]
    index = torch.as_tensor(np.flatnonzero(keep), device=data.X.device)
    counts = np.bincount(clients, minlength=len(data.counts))
    return type(data)(X=data.X[index], y=data.y[index], counts=counts,
                      offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]))


def forget_guard(est) -> None:
    """Drop the guard's fitted attributes (a fit without the guard, or starting over)."""
    for name in GUARD_ATTRIBUTES:
        if hasattr(est, name):
            delattr(est, name)


def _ensure_fallback(est) -> None:
    """The fallback starts where the personal parts start: their mean at the first training round
    (the initial block, or the pre-trained one after ``pretrain_rounds``)."""
    if getattr(est, "fallback_params_", None) is None:
        est.fallback_params_ = {k: v.mean(0).clone() for k, v in est.personal_params_.items()}
        n = len(est.clients_)
        # until the end of the fit decides, every client answers with its personal part (what
        # callbacks evaluating mid-fit should see)
        est.guard_weights_ = np.ones(n)
        est.guard_evidence_ = _empty_evidence(n)


def _empty_evidence(n: int) -> dict:
    return {name: (np.zeros(n, dtype=np.int64) if name == "n_valid" else np.full(n, np.nan))
            for name in EVIDENCE_FIELDS}


def fallback_updater(est, fit, data, loss, chunk_size, weights):
    """A function ``(shared, sampled, round_number, lr)`` that runs one FedAvg round of the fallback.

    Each sampled client trains a copy of ``est.fallback_params_`` for ``personal_steps`` steps
    (one epoch by default) with ``shared`` (the round's starting shared part, as a Flower node
    receives it) fixed, on minibatches keyed by (seed, round, client) like every other draw; the
    copies are averaged with the round's ``weights``. ``loss`` is the stage's training loss.
    """
    _ensure_fallback(est)
    engine = make_engine(est.engine_, loss, est.shared_params_, clip=est.clip_grad_norm)
    steps = FALLBACK_UPDATE.steps(est.personal_steps, est.shared_steps)

    def update(shared, sampled, round_number, lr) -> None:
        sampled = np.asarray(sampled)
        state = {k: v.expand(len(sampled), *v.shape).clone() for k, v in est.fallback_params_.items()}
        batches = draw_batches(FALLBACK_UPDATE, RoundKeys(fit.seed, round_number), data.counts[sampled],
                               est.batch_size, steps, keys=sampled)
        _, result = client_updates(FALLBACK_UPDATE, engine, shared, state, np.arange(len(sampled)), batches,
                                   data.offsets[sampled], lr, chunk_size=chunk_size, device=est.device_)
        if not result.finite:
            raise FloatingPointError(f"Training diverged in round {round_number}: the guard's fallback loss became "
                                     f"NaN or infinite. Lower personal_lr or lr (now {lr.personal:g}).")
        w = torch.as_tensor(np.asarray(weights, dtype=float)[sampled], device=est.device_)
        w = w / w.sum()
        est.fallback_params_ = {k: torch.tensordot(w.to(v.dtype), v, dims=1) for k, v in state.items()}

    return update


def row_losses(est, valid, personal) -> torch.Tensor:
    """The estimator's per-row loss of each held-out row under ``personal`` (stacked over clients, or
    one block for all)."""
    module = est.module_
    rows = torch.as_tensor(valid.row_clients(), device=valid.X.device)
    if next(iter(personal.values())).dim() == next(iter(est.personal_params_.values())).dim() - 1:
        personal, rows = {k: v[None] for k, v in personal.items()}, torch.zeros_like(rows)
    with torch.no_grad():
        out = personalized_logits(module, dict(module.named_buffers()), est.shared_params_, personal, valid.X, rows)
        return est._row_losses(out, valid.y)


def decide_clients(est, valid, clients) -> None:
    """Decide for ``clients`` (indices) from the held-out rows ``valid``; the others keep their decision."""
    _ensure_fallback(est)
    personal = row_losses(est, valid, est.personal_params_).double().cpu().numpy()
    fallback = row_losses(est, valid, est.fallback_params_).double().cpu().numpy()
    weights, evidence = decide(personal, fallback, valid.row_clients(), len(est.clients_), est.guard_margin)
    clients = np.asarray(clients, dtype=np.int64)
    est.guard_weights_[clients] = weights[clients]
    for name, values in evidence.as_dict().items():
        est.guard_evidence_[name][clients] = values[clients]


def extend_guard(est, n_new: int) -> None:
    """New clients (``personalize``) get the fallback until their own held-out rows decide."""
    if hasattr(est, "guard_weights_"):
        est.guard_weights_ = np.concatenate([est.guard_weights_, np.zeros(n_new)])
        empty = _empty_evidence(n_new)
        est.guard_evidence_ = {k: np.concatenate([v, empty[k]]) for k, v in est.guard_evidence_.items()}


def guarded_personal(est):
    """The personal parts ``predict`` uses: each client's own where it keeps it, the fallback elsewhere."""
    weights = getattr(est, "guard_weights_", None)
    if weights is None:
        return est.personal_params_
    out = {}
    for k, v in est.personal_params_.items():
        w = torch.as_tensor(weights, dtype=v.dtype, device=v.device).reshape(-1, *([1] * (v.dim() - 1)))
        out[k] = w * v + (1 - w) * est.fallback_params_[k]
    return out


def unseen_part(est, personal):
    """``personal`` with one more entry for clients the model does not know (``unseen_clients="average"``):
    the fallback with the guard, the average personal part without."""
    if getattr(est, "guard_weights_", None) is None:
        return {k: torch.cat([v, v.mean(0, keepdim=True)]) for k, v in personal.items()}
    return {k: torch.cat([v, est.fallback_params_[k][None]]) for k, v in personal.items()}


def guard_state(est) -> dict:
    """The guard's part of ``state_dict()``: tensors only (``weights_only`` loading); empty without it."""
    if not hasattr(est, "guard_weights_"):
        return {}
    cpu = torch.device("cpu")
    return {"guard": {"fallback": {k: v.detach().to(cpu) for k, v in est.fallback_params_.items()},
                      "weights": torch.as_tensor(est.guard_weights_),
                      "evidence": {k: torch.as_tensor(v) for k, v in est.guard_evidence_.items()}}}


def load_guard_state(est, state: dict):
    """Check the guard's part of a ``state_dict()``; return a function that takes it (or, if the state
    has none, drops the guard's attributes), to call once the rest of the state is loaded."""
    saved = state.get("guard") if isinstance(state, dict) else None
    if not saved:
        return lambda: forget_guard(est)
    n = len(est.clients_)
    if len(saved["weights"]) != n or any(len(v) != n for v in saved["evidence"].values()):
        raise CheckpointError(f"The checkpoint's guard decisions are for {len(saved['weights'])} clients, not "
                              f"this model's {n}.")

    def apply() -> None:
        est.fallback_params_ = {k: v.to(est.device_) for k, v in saved["fallback"].items()}
        est.guard_weights_ = saved["weights"].numpy().astype(float)
        est.guard_evidence_ = {k: v.numpy().copy() for k, v in saved["evidence"].items()}

    return apply
