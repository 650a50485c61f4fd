"""The guard against harmful personalization (``guard="validation"``): fallback, decision, state.

Personalization raises the mean accuracy but leaves some clients worse than a model that is not
personalized (Pillutla et al., 2022). With ``guard="validation"`` the estimator

1. holds out ``validation_fraction`` of each client's rows from training, keyed per client so
   that a Flower node holds out the same rows (:func:`guard_holdout`; ``early_stopping``, when
   also on, monitors these rows);
2. after training, takes as the *fallback* the average of the clients' personal parts (the
   model a client the federation does not know gets with ``unseen_clients="average"``);
3. scores each client's held-out rows under its personal model and under the fallback with the
   estimator's per-row loss (the classifier's: cross-entropy), and keeps the personal model only
   where it beats the fallback by ``guard_margin`` standard errors of the paired per-row
   difference (:func:`pfedest.core.guard.decide`); the other clients are answered by the
   fallback (:func:`decide_clients`, :func:`guarded_personal`);
4. with ``guard_refit`` (the default), gives the held-out rows back, as scikit-learn refits on
   all the data after a search: the training runs again from the same start, with the same draws,
   on every row, and the decisions are kept (:func:`refit`); the fallback is then the average of
   the refit personal parts.

Why the average rather than a global copy of the personal block trained alongside (FedAvg-style),
and why cross-entropy rather than the 0/1 error: ``docs/guide/guard.rst`` (measured by
``benchmarks/guard.py``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .checkpoint import CheckpointError
from .core.guard import EVIDENCE_FIELDS, decide, holdout_mask
from .core.model import personalized_logits
from .training import run_plan

__all__ = ["GUARD_ATTRIBUTES", "check_guard", "decide_clients", "guarded_personal", "unseen_part", "extend_guard",
           "forget_guard", "guard_state", "load_guard_state", "holds_out", "guard_holdout", "refit_start", "refit"]

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
    labels = data.strata()
    held = np.zeros(len(labels), dtype=bool)
    for i in np.flatnonzero(data.counts):
        rows = slice(data.offsets[i], data.offsets[i] + data.counts[i])
        held[rows] = holdout_mask(labels[rows], fraction, seed, i)
    return data.split(held)


def forget_guard(est) -> None:
    """Drop the guard's fitted attributes (a fit without the guard, or starting over)."""
    for name in GUARD_ATTRIBUTES:
        if hasattr(est, name):
            delattr(est, name)


def _set_fallback(est, refresh: bool) -> None:
    """The fallback: the average of the clients' personal parts, taken after training (``refresh``);
    ``personalize`` keeps the one the fit took, so that adding clients does not move it."""
    if refresh or getattr(est, "fallback_params_", None) is None:
        est.fallback_params_ = {k: v.mean(0).clone() for k, v in est.personal_params_.items()}
    if getattr(est, "guard_weights_", None) is None:
        # a client no held-out row has decided for gets the fallback
        est.guard_weights_ = np.zeros(len(est.clients_))
        est.guard_evidence_ = _empty_evidence(len(est.clients_))


def _empty_evidence(n: int) -> dict:
    return {name: (np.zeros(n, dtype=np.int64) if name == "n_valid" else np.full(n, np.nan))
            for name in EVIDENCE_FIELDS}


def row_losses(est, valid, personal) -> torch.Tensor:
    """The estimator's per-row loss of each held-out row under ``personal`` (stacked over clients, or
    one block for all)."""
    module = est.module_
    if len(valid.X) == 0:  # no client held a row out: every client gets the fallback
        return torch.zeros(0, dtype=torch.float64)
    rows = torch.as_tensor(valid.row_clients(), device=valid.X.device)
    if next(iter(personal.values())).dim() == next(iter(est.personal_params_.values())).dim() - 1:
        personal, rows = {k: v[None] for k, v in personal.items()}, torch.zeros_like(rows)
    with torch.no_grad():
        out = personalized_logits(module, dict(module.named_buffers()), est.shared_params_, personal, valid.X, rows)
        return est._row_losses(out, valid.y)


def decide_clients(est, valid, clients, refresh_fallback: bool = True) -> None:
    """Decide for ``clients`` (indices) from the held-out rows ``valid``; the others keep their decision.

    With ``refresh_fallback`` (after training) the fallback is first taken anew from the personal parts.
    """
    _set_fallback(est, refresh_fallback)
    personal = row_losses(est, valid, est.personal_params_).double().cpu().numpy()
    fallback = row_losses(est, valid, est.fallback_params_).double().cpu().numpy()
    weights, evidence = decide(personal, fallback, valid.row_clients(), len(est.clients_), est.guard_margin)
    clients = np.asarray(clients, dtype=np.int64)
    est.guard_weights_[clients] = weights[clients]
    for name, values in evidence.as_dict().items():
        est.guard_evidence_[name][clients] = values[clients]


def refit_start(est) -> dict:
    """What a refit (``guard_refit``) starts from: the model, history and fit state before this call trains."""
    return {"shared": {k: v.clone() for k, v in est.shared_params_.items()},
            "personal": {k: v.clone() for k, v in est.personal_params_.items()},
            "history": copy.deepcopy(est.history_), "fit": copy.deepcopy(est._fit)}


def refit(est, start: dict, plan: list, data, criterion) -> None:
    """Train again from ``start`` on all the rows ``data``, the held-out ones given back, keeping the decisions.

    As scikit-learn refits the chosen model on all the data after a search: the guarded training
    (on the rows not held out) decided, per client, personal part or fallback; this one runs the
    same plan again from the same state, with the same draws, each stage for the rounds the guarded
    training ran, without callbacks and without held-out rows. The decisions (``guard_weights_``,
    ``guard_evidence_``) stay as the held-out rows made them; after a fit the fallback is taken anew
    (the average of the refit personal parts, which the refit shared part serves), after
    ``personalize`` it stays. The model, its history and its fit state are the refit's.
    """
    decided = {name: getattr(est, name) for name in GUARD_ATTRIBUTES}
    rounds = [[stage, done] for (stage, _), done in zip(plan, est._fit.progress)]
    est.shared_params_ = start["shared"]
    for k, v in start["personal"].items():
        est.personal_params_[k] = v
    est.history_, est._fit = start["history"], start["fit"]
    run_plan(est, est._fit, rounds, data, [], valid=None, criterion=criterion)
    for name, value in decided.items():
        setattr(est, name, value)
    if any(stage == "train" for stage, _ in plan):
        est.fallback_params_ = {k: v.mean(0).clone() for k, v in est.personal_params_.items()}


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
