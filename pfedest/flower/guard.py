"""The guard (``guard="validation"``) in a Flower run: the fallback travels with the shared part, the
decision stays on the node.

The fallback is the average of the clients' personal parts (:mod:`pfedest.guard`). In a Flower run
each trained node sends its new personal part beside the shared parameters, under names prefixed
``fallback.`` (:data:`PREFIX`), and :class:`~pfedest.flower.strategy.PersonalizedFedAvg` averages
them as it averages the shared part, with no change (weighted as ``weighting`` says, over the
round's nodes); the server writes the result to ``fallback.npz`` beside ``shared.npz``. **So with
the guard the server sees every trained node's personal part**, which without it never leaves the
node: use the guard in Flower only where that is acceptable.

A node holds out the rows the simulator holds out of its client
(:func:`pfedest.core.guard.holdout_mask`, keyed by its ``partition-id``) and trains on the rest;
when asked to evaluate, it decides on its held-out rows (:func:`node_decision`, the simulator's
rule) and scores the model it chose. The decision and its evidence go to
``pfedest-<app id>.guard.json`` in its ``state-dir``, never to the server. A node does not run the
estimator's ``guard_refit`` pass (its held-out rows never train): it matches the simulator with
``guard_refit=0``, and exporting a guarded estimator with ``guard_refit > 0`` warns.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .._files import atomic_write
from ..core.guard import decide, holdout_mask
from ..core.model import personalized_logits
from ..core.types import Params
from ..validation import encode_labels

__all__ = ["PREFIX", "with_fallback", "split_fallback", "train_rows", "node_decision",
           "write_decision", "decision_file"]

#: The prefix of the fallback's arrays among the shared ones.
PREFIX = "fallback."


def with_fallback(shared: Params, fallback: Params) -> Params:
    """The arrays the server averages: the shared parameters and the fallback's, prefixed.

    Examples
    --------
    >>> sorted(with_fallback({"w": torch.zeros(1)}, {"b": torch.zeros(1)}))
    ['fallback.b', 'w']
    """
    return {**shared, **{PREFIX + k: v for k, v in fallback.items()}}


def split_fallback(arrays: Params) -> tuple[Params, Params]:
    """``(shared, fallback)`` of the arrays a node receives (the inverse of :func:`with_fallback`).

    Examples
    --------
    >>> shared, fallback = split_fallback({"w": torch.zeros(1), "fallback.b": torch.ones(1)})
    >>> sorted(shared), sorted(fallback)
    (['w'], ['b'])
    """
    shared = {k: v for k, v in arrays.items() if not k.startswith(PREFIX)}
    fallback = {k[len(PREFIX):]: v for k, v in arrays.items() if k.startswith(PREFIX)}
    return shared, fallback


def train_rows(template, y: np.ndarray, settings, partition_id: int) -> np.ndarray:
    """Which of the node's rows it trains on: all but those the simulator holds out of its client.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> template = SimpleNamespace(classes_=np.array([0, 1]))
    >>> settings = SimpleNamespace(validation_fraction=0.25, seed=0)
    >>> int((~train_rows(template, np.array([0, 1] * 4), settings, partition_id=2)).sum())
    2
    """
    codes = encode_labels(template.classes_, y)
    return ~holdout_mask(codes, settings.validation_fraction, settings.seed, partition_id)


def node_decision(template, X: np.ndarray, y: np.ndarray, shared: Params, personal: Params, fallback: Params,
                  margin: float) -> tuple[float, dict]:
    """The node's choice on its held-out rows ``(X, y)``: 1.0 keeps its personal part, 0.0 takes the fallback.

    The same rule as the simulator's (:func:`pfedest.core.guard.decide`, with the estimator's per-row
    loss). Returns the weight and the evidence (``n_valid``, ``personal_loss``, ``fallback_loss``,
    ``gain``, ``gain_se``) as plain numbers.
    """
    codes = torch.as_tensor(encode_labels(template.classes_, y), dtype=torch.int64)
    X_t = torch.as_tensor(np.array(X, dtype=np.float32))
    module = template.module_
    zeros = torch.zeros(len(X_t), dtype=torch.int64)
    losses = [np.zeros(0), np.zeros(0)]  # a node that holds no row out gets the fallback
    with torch.no_grad():
        for i, block in enumerate((personal, fallback) if len(X_t) else ()):
            out = personalized_logits(module, dict(module.named_buffers()), shared, {k: v[None] for k, v in block.items()},
                                      X_t, zeros)
            losses[i] = template._row_losses(out, codes).double().numpy()
    weights, evidence = decide(losses[0], losses[1], np.zeros(len(X_t), dtype=np.int64), 1, margin)
    return float(weights[0]), {k: v[0].item() for k, v in evidence.as_dict().items()}


def decision_file(state_dir, app_id: str) -> Path:
    """Where a node keeps its decision: ``<state-dir>/pfedest-<app id>.guard.json``."""
    return Path(state_dir) / f"pfedest-{app_id}.guard.json"


def write_decision(path, *, partition_id: int, server_round: int, weight: float, evidence: dict) -> None:
    """Write the node's decision and evidence (atomically; JSON, ``inf`` as ``null``)."""
    clean = {k: (v if np.isfinite(v) else None) for k, v in evidence.items()}
    record = {"partition_id": int(partition_id), "round": int(server_round), "time": time.time(),
              "keeps_personal": bool(weight > 0), "weight": weight, **clean}
    data = json.dumps(record, indent=1).encode()
    atomic_write(Path(path), lambda f: f.write(data))
