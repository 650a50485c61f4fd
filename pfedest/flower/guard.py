"""The guard (``guard="validation"``) in a Flower run: the fallback travels with the shared part, the
decision stays on the node.

The fallback (a global copy of the personal block, :mod:`pfedest.guard`) is averaged by the
server like the shared parameters: it rides in the same ``ArrayRecord`` under names prefixed
``fallback.`` (:data:`PREFIX`), so :class:`~pfedest.flower.strategy.PersonalizedFedAvg` averages it
with no change, and the server writes it to ``fallback.npz`` beside ``shared.npz``. A node holds out
the rows the simulator holds out of its client (:func:`pfedest.core.guard.holdout_mask`, keyed by
its ``partition-id``), trains on the rest, updates the fallback as the simulator does
(:func:`fallback_round`), and decides on its held-out rows (:func:`node_decision`) when it is asked to
evaluate; the decision and its evidence go to ``pfedest-<app id>.guard.json`` in its ``state-dir``,
never to the server. The node's evaluate reply scores the model the decision chose.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .._files import atomic_write
from ..core.engine import make_engine
from ..core.guard import decide, holdout_mask
from ..core.model import make_loss, personalized_logits
from ..core.rounds import client_updates, draw_batches
from ..core.sampling import RoundKeys
from ..core.types import Params
from ..guard import FALLBACK_UPDATE
from ..validation import encode_labels

__all__ = ["PREFIX", "with_fallback", "split_fallback", "train_rows", "fallback_round", "node_decision",
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


def fallback_round(template, X: np.ndarray, y: np.ndarray, shared: Params, fallback: Params, settings, *,
                   server_round: int, partition_id: int) -> Params:
    """The node's update of the fallback: ``personal_steps`` local steps on it with ``shared`` fixed,
    on the minibatches the simulator draws for this client (:func:`pfedest.guard.fallback_updater`).

    Parameters
    ----------
    template : PartialPersonalizedClassifier
        The network (:meth:`~pfedest.flower.model_file.ModelSpec.template`).
    X, y : ndarray
        The node's training rows.
    shared, fallback : dict of str to Tensor
        The server's shared parameters and fallback.
    settings : RunSettings
    server_round, partition_id : int

    Returns
    -------
    dict of str to Tensor
        The node's new fallback, for the server to average.
    """
    codes = torch.as_tensor(encode_labels(template.classes_, y), dtype=torch.int64)
    module = template.module_
    loss = make_loss(module, dict(module.named_buffers()), torch.as_tensor(np.array(X, dtype=np.float32)), codes)
    engine = make_engine("loop", loss, shared, clip=float(settings.clip_grad_norm) or None)
    steps = FALLBACK_UPDATE.steps(None if settings.personal_steps == -1 else settings.personal_steps, None)
    batches = draw_batches(FALLBACK_UPDATE, RoundKeys(settings.seed, server_round), np.array([len(X)]),
                           settings.batch_size, steps, keys=np.array([partition_id]))
    state = {k: v[None].clone() for k, v in fallback.items()}
    _, result = client_updates(FALLBACK_UPDATE, engine, dict(shared), state, np.array([0]), batches, np.array([0]),
                               settings.step_sizes(server_round))
    if not result.finite:
        raise FloatingPointError(f"Node {partition_id}: the guard's fallback loss became NaN or infinite in round "
                                 f"{server_round}; nothing is sent. Lower lr (now {settings.lr}).")
    return {k: v[0] for k, v in state.items()}


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
    losses = []
    with torch.no_grad():
        for block in (personal, fallback):
            out = personalized_logits(module, dict(module.named_buffers()), shared, {k: v[None] for k, v in block.items()},
                                      X_t, zeros)
            losses.append(template._row_losses(out, codes).double().numpy())
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
