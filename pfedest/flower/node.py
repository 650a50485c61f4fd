"""The node's side: a ClientApp whose handlers run FedAlt or FedSim for the node's one client.

A node is a SuperNode with node config ``partition-id`` (its client in the federation),
``data-path`` (an ``.npz`` with arrays ``X`` and ``y``) and optionally ``state-dir`` and
``eval-path``. Its train handler (:func:`train_handler`) runs :func:`local_round`, which calls the
simulator's own :func:`pfedest.core.rounds.draw_batches` and :func:`pfedest.core.rounds.client_updates`
for this one client, and replies with the shared parameters only. The personal parameters stay on
the node (:class:`NodeStore`): in ``context.state`` for the run, and in a file of the node's
``state-dir``, so a restarted node resumes with them. That file is read without pickle; a damaged
one is set aside and the node's personal part starts afresh (see :class:`NodeStore`).

Flower is imported only inside the handlers and :func:`client_app`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.algorithms import ALGORITHMS
from ..core.engine import make_engine
from ..core.model import make_loss, personalized_logits, training
from ..core.rounds import RoundResult, client_updates, draw_batches
from ..core.sampling import DROPOUT_STREAM, RoundKeys
from ..core.types import Params
from ..validation import encode_labels
from .guard import decision_file, node_decision, split_fallback, train_rows, with_fallback, write_decision
from .privacy import check_flower_privacy, clip_update
from .model_file import MODEL_FILE, ModelSpec, check_layout, read_model
from .records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, read_npz, to_numpy, to_record, to_tensors, write_npz
from .settings import RunSettings

__all__ = ["STATE_KEY", "SOURCES", "local_round", "personal_metrics", "digest", "NodeStore", "train_handler",
           "evaluate_handler", "query_handler", "client_app"]

#: The key of the node's personal parameters in its ``context.state``.
STATE_KEY = "pfedest.personal"
#: Where the personal parameters of a node came from at the start of a round (a reply's
#: ``personal-source``): the model's initial ones, ``context.state``, the node's file, or the initial
#: ones because the file was damaged (``"reset"``; the file is set aside).
SOURCES = {"init": 0, "state": 1, "disk": 2, "reset": 3}

# A child of Flower's logger, so that messages show in the SuperNode's log.
logger = logging.getLogger("flwr.pfedest")


def local_round(template, X: np.ndarray, y: np.ndarray, shared: Params, personal: Params, settings: RunSettings,
                *, server_round: int, partition_id: int,
                anchor: Optional[Params] = None) -> tuple[Params, Params, RoundResult]:
    """One node's FedAlt or FedSim local update: :func:`~pfedest.core.rounds.client_updates` for
    this one client, with the minibatches the simulator draws for it.

    Parameters
    ----------
    template : PartialPersonalizedClassifier
        An estimator with the network, initialized or fitted
        (:meth:`~pfedest.flower.model_file.ModelSpec.template`).
    X, y : ndarray
        The node's rows and labels (labels among ``template.classes_``).
    shared, personal : dict of str to Tensor
        The server's shared parameters and the node's personal ones.
    settings : RunSettings
    server_round, partition_id : int
        Key the node's minibatches: ``RoundKeys(settings.seed, server_round)`` for client
        ``partition_id``, as the estimator's ``fit`` draws that client's. The round also sets the
        learning rates' schedule factor.
    anchor : dict of str to Tensor, optional
        The personal part at the start of training (``model.json``'s): the target of the
        ``personal_l2`` penalty with ``personal-l2-target="init"``, where it is required.

    Returns
    -------
    shared, personal : dict
        The shared parameters to send back and the node's new personal ones.
    result : RoundResult
        Loss sum and row count over the local steps.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.flower import run_config_for, write_model
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> import numpy as np
    >>> X, y = np.random.default_rng(0).normal(size=(10, 3)), np.array([0, 1] * 5)
    >>> settings = RunSettings.from_config(run_config_for(est, personal_steps=1, shared_steps=1))
    >>> shared, personal, result = local_round(spec.template(), X, y, spec.shared, spec.personal,
    ...                                        settings, server_round=1, partition_id=0)
    >>> sorted(shared), result.row_count  # one personal and one shared step of 5 rows
    (['net.0.bias', 'net.0.weight'], 10.0)
    """
    _check_node_numbers(server_round=server_round, partition_id=partition_id)
    codes = encode_labels(template.classes_, y)
    X_t = torch.as_tensor(np.array(X, dtype=np.float32))
    y_t = torch.as_tensor(codes, dtype=torch.int64)
    module = template.module_
    loss = make_loss(module, dict(module.named_buffers()), X_t, y_t)
    engine = make_engine("loop", loss, shared, **settings.step_options(anchor))
    state = {k: v[None].clone() for k, v in personal.items()}
    # This node is one client of the federation: its draws are keyed by its partition-id, as the
    # estimator keys that client's, and it sends its own shared parameters (a mean of one).
    batches = draw_batches(ALGORITHMS[settings.algorithm], RoundKeys(settings.seed, server_round),
                           np.array([len(X)]), settings.batch_size, settings.steps(), keys=np.array([partition_id]))
    # dropout masks keyed by the round and this node (not the simulator's: there clients share a round's seed)
    with training(module, int(RoundKeys(settings.seed, server_round).uniforms(DROPOUT_STREAM, [partition_id]).keys[0])):
        new_shared, result = client_updates(ALGORITHMS[settings.algorithm], engine, dict(shared), state,
                                            np.array([0]), batches, np.array([0]), settings.step_sizes(server_round),
                                            weights=np.ones(1))
    if not result.finite:
        raise FloatingPointError(f"Node {partition_id}: the loss became NaN or infinite in round {server_round}; "
                                 f"nothing is sent. Lower lr (now {settings.lr}) or scale the features.")
    return new_shared, {k: v[0] for k, v in state.items()}, result


def _check_node_numbers(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")


def personal_metrics(template, X: np.ndarray, y: np.ndarray, shared: Params, personal: Params) -> dict:
    """Accuracy and mean cross-entropy of the personal model ``(shared, personal)`` on ``(X, y)``.

    Parameters
    ----------
    template, X, y, shared, personal
        As in :func:`local_round`: the network, the rows, the model to score.

    Returns
    -------
    dict
        ``accuracy`` and ``loss``, as floats.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.flower import write_model
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> import numpy as np
    >>> X, y = np.random.default_rng(0).normal(size=(10, 3)), np.array([0, 1] * 5)
    >>> metrics = personal_metrics(spec.template(), X, y, spec.shared, spec.personal)
    >>> sorted(metrics), 0.0 <= metrics["accuracy"] <= 1.0
    (['accuracy', 'loss'], True)
    """
    codes = torch.as_tensor(encode_labels(template.classes_, y))
    X_t = torch.as_tensor(np.array(X, dtype=np.float32))
    module = template.module_
    stacked = {k: v[None] for k, v in personal.items()}
    with torch.no_grad():
        logits = personalized_logits(module, dict(module.named_buffers()), shared, stacked, X_t,
                                     torch.zeros(len(X_t), dtype=torch.int64))
        loss = torch.nn.functional.cross_entropy(logits, codes)
    return {"accuracy": float((logits.argmax(1) == codes).double().mean()), "loss": float(loss)}


def digest(params: Params) -> str:
    """A short digest of ``params`` (names and bytes): what the node's log records before and after a round.

    Parameters
    ----------
    params : dict of str to Tensor

    Returns
    -------
    str
        16 hex digits.

    Examples
    --------
    >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2)}) != digest({"w": torch.ones(2)})
    True
    """
    h = hashlib.sha256()
    for k, a in sorted(to_numpy(params).items()):
        h.update(k.encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class NodeStore:
    """A node's personal parameters: ``context.state`` during a run, and a file of its own.

    The file, ``<state-dir>/pfedest-<app id>.npz``, is rewritten (atomically) after every local
    update, so a node that is restarted (a new SuperNode process, an empty ``context.state``)
    resumes with them. Every update also appends a line to ``pfedest-<app id>.log.jsonl``: the round,
    where the parameters came from, and digests of them before and after.

    The file is read without pickle. A damaged one (empty, truncated, not an ``.npz`` of numbers,
    without its meta, of other names, shapes or dtypes than the model's, or holding NaN or
    infinite values) is renamed to ``<name>.damaged-<time>``, a warning and a log line say why,
    and the node starts its personal part afresh from the model's (source ``"reset"``): the
    atomic writes mean that no crash leaves such a file, so it was damaged from outside, and the
    checkpoints' rule applies (a bad file is skipped; with no good one, training starts over) so
    that one node's disk does not keep it out of every later round. A file of another
    partition is not damage but a misconfigured ``state-dir`` (two nodes sharing one): that is
    refused with a ``ValueError``, and nothing is overwritten.

    Parameters
    ----------
    state_dir : str or Path
        The node's ``state-dir``; created if missing.
    app_id : str
        The model's ``app_id`` (:class:`~pfedest.flower.model_file.ModelSpec`).
    partition_id : int
        The node's ``partition-id``.

    Examples
    --------
    A node with an empty ``context.state`` and no file starts from the model's personal part
    (``initial``; here a stand-in for ``ModelSpec.personal``):

    >>> from types import SimpleNamespace
    >>> import tempfile
    >>> store = NodeStore(tempfile.mkdtemp(), app_id="0123abcd", partition_id=0)
    >>> store.load(SimpleNamespace(state={}), initial={"head": torch.zeros(2)}), store.file.name
    (({'head': tensor([0., 0.])}, 'init'), 'pfedest-0123abcd.npz')
    """

    def __init__(self, state_dir, app_id: str, partition_id: int):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.partition_id = int(partition_id)
        self.file = self.dir / self.file_name(app_id)
        self.log_file = self.dir / f"pfedest-{app_id}.log.jsonl"

    @staticmethod
    def file_name(app_id: str) -> str:
        """The name of the file of a node's personal parameters, in its ``state-dir``."""
        return f"pfedest-{app_id}.npz"

    def load(self, context, initial: Params) -> tuple[Params, str]:
        """The personal parameters and where they came from: ``"state"``, ``"disk"``, ``"init"``
        or ``"reset"`` (the file was damaged: set aside, and the initial ones used)."""
        if STATE_KEY in context.state:
            personal = to_tensors(context.state.array_records[STATE_KEY])
            check_layout("The personal parameters in context.state", personal, initial)
            return personal, "state"
        if not self.file.is_file():
            return {k: v.clone() for k, v in initial.items()}, "init"
        try:  # a file of another partition raises: it is not damaged, the state-dir is shared
            personal = self.read()
            self._check(f"The personal parameters in {self.file}", personal, initial)
        except _Damaged as exc:
            self._set_aside(str(exc))
            return {k: v.clone() for k, v in initial.items()}, "reset"
        return personal, "disk"

    def read(self) -> Params:
        """The personal parameters in the node's file.

        Raises a ``ValueError`` naming the file and what is wrong if it cannot be read or has no
        valid meta, and one naming both partitions if it holds another partition's parameters.
        """
        try:
            personal, meta = read_npz(self.file)
        except ValueError as exc:
            raise _Damaged(str(exc)) from exc
        pid = meta.get("partition_id")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise _Damaged(f"{self.file} has no valid partition_id in its meta (got {pid!r}).")
        if pid != self.partition_id:
            raise ValueError(f"{self.file} holds the personal parameters of partition {pid}, but this node is "
                             f"partition {self.partition_id}: give each node a state-dir of its own.")
        return personal

    @staticmethod
    def _check(name: str, personal: Params, initial: Params) -> None:
        try:
            check_layout(name, personal, initial)
        except ValueError as exc:
            raise _Damaged(str(exc)) from exc

    def _set_aside(self, reason: str) -> None:
        """Rename the damaged file out of the way, warn and log why; the node then starts afresh."""
        aside = self.file.with_name(f"{self.file.name}.damaged-{time.time_ns()}")
        os.replace(self.file, aside)
        message = (f"Node {self.partition_id}: the personal state file is damaged ({reason}); it was moved to "
                   f"{aside.name} and the personal parameters start afresh from the model's.")
        logger.warning(message)
        line = {"time": time.time(), "event": "reset", "source": "reset", "damaged": reason,
                "moved_to": aside.name, "pid": os.getpid()}
        with open(self.log_file, "a") as f:
            f.write(json.dumps(line) + "\n")

    def save(self, context, personal: Params, *, server_round: int, run_id: int, source: str, start: str,
             loss: float) -> None:
        """Keep ``personal`` in ``context.state`` and in the node's file; log the update."""
        context.state[STATE_KEY] = to_record(personal)
        write_npz(self.file, personal, meta={"partition_id": self.partition_id, "round": int(server_round),
                                             "run_id": int(run_id), "names": sorted(personal)})
        line = {"time": time.time(), "run_id": int(run_id), "round": int(server_round), "source": source,
                "start": start, "end": digest(personal), "train_loss": loss, "pid": os.getpid()}
        with open(self.log_file, "a") as f:
            f.write(json.dumps(line) + "\n")


class _Damaged(ValueError):
    """A node's state file that cannot be read as its personal parameters."""


@dataclass
class _Node:
    partition_id: int
    X: np.ndarray
    y: np.ndarray
    store: NodeStore


def _node(context, spec: ModelSpec) -> _Node:
    cfg = context.node_config
    for key in ("partition-id", "data-path"):
        if key not in cfg:
            raise ValueError(f"The SuperNode needs --node-config '{key}=...' (it has {sorted(cfg)}): "
                             "partition-id names the client, data-path is an .npz file with arrays X and y.")
    pid = cfg["partition-id"]
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ValueError(f"node config partition-id={pid!r} must be an integer >= 0.")
    data_path = Path(str(cfg["data-path"])).expanduser()
    X, y = _read_rows(data_path, spec, f"Node {pid}", "data-path")
    state_dir = Path(str(cfg.get("state-dir") or data_path.parent)).expanduser()
    return _Node(pid, X, y, NodeStore(state_dir, spec.app_id, pid))


def _read_rows(path: Path, spec: ModelSpec, node: str, key: str) -> tuple:
    """The arrays ``X`` and ``y`` of the ``.npz`` file at node config ``key``, checked against the model."""
    if not path.is_file():
        raise FileNotFoundError(f"{node}: no data file at {path} (node config {key}).")
    with np.load(path, allow_pickle=False) as data:
        if "X" not in data or "y" not in data:
            raise ValueError(f"{path} must hold arrays 'X' and 'y', it has {sorted(data.files)}.")
        X, y = data["X"], data["y"]
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"{path}: X has {len(X)} rows and y {len(y)}; need the same positive number.")
    if tuple(X.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"{path}: rows of shape {tuple(X.shape[1:])}, the model takes {tuple(spec.input_shape)}.")
    return X, y


def _received(msg, context, app_dir, settings: RunSettings) -> tuple:
    """What the train and evaluate handlers start from: the model, the node, the server's shared
    parameters (checked), the node's personal ones with where they came from, and the guard's
    fallback (checked; ``None`` without the guard)."""
    spec = read_model(Path(app_dir) / MODEL_FILE)
    node = _node(context, spec)
    shared = to_tensors(msg.content.array_records[ARRAYS_KEY])
    fallback = None
    if settings.guard:
        shared, fallback = split_fallback(shared)
        check_layout("The guard's fallback from the server", fallback, spec.personal)
    check_layout("The shared parameters from the server", shared, spec.shared)
    personal, source = node.store.load(context, spec.personal)
    return spec, node, shared, personal, source, fallback


def train_handler(msg, context, app_dir):
    """The ClientApp's train handler: a local update; reply with the shared parameters only.

    Needs ``flwr`` and a SuperNode's message and context, so it has no standalone example; it
    runs :func:`local_round` (which has one).

    Parameters
    ----------
    msg : flwr.app.Message
        The server's train message (shared parameters and the round).
    context : flwr.app.Context
        The node's context (node config ``partition-id``, ``data-path``, ``state-dir``).
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    flwr.app.Message
        The reply: the shared parameters and the training metrics.
    """
    from flwr.app import Message, MetricRecord, RecordDict

    settings = RunSettings.from_config(context.run_config)
    spec, node, shared, personal, source, fallback = _received(msg, context, app_dir, settings)
    server_round = int(msg.content.config_records[CONFIG_KEY]["server-round"])
    start = digest(personal)
    X, y = node.X, node.y
    if settings.guard:  # the rows the guard holds out never train
        keep = train_rows(spec.template(), y, settings, node.partition_id)
        X, y = X[keep], y[keep]
    new_shared, new_personal, result = local_round(spec.template(), X, y, shared, personal, settings,
                                                   server_round=server_round, partition_id=node.partition_id,
                                                   anchor=spec.personal)
    loss = result.loss_sum / max(result.row_count, 1.0)
    node.store.save(context, new_personal, server_round=server_round, run_id=context.run_id, source=source,
                    start=start, loss=loss)
    reply = {k: new_shared[k] for k in spec.shared}  # by construction, never a personal name
    privacy = check_flower_privacy(spec.estimator_params().get("privacy"), settings.guard)
    if privacy is not None:  # DP-FedAvg (pfedest.flower.privacy): the update clipped, every client counts once
        reply = clip_update(reply, shared, privacy.clip)
    if settings.guard:  # the personal part, for the server to average into the fallback (pfedest.flower.guard)
        reply = with_fallback(reply, new_personal)
    examples = 1 if privacy is not None else int(len(X))  # its weight in the mean: one a client under DP
    metrics = MetricRecord({"num-examples": examples, "train-loss-sum": float(result.loss_sum),
                            "train-rows": float(result.row_count), "partition-id": node.partition_id,
                            "personal-source": SOURCES[source]})
    return Message(RecordDict({ARRAYS_KEY: to_record(reply), METRICS_KEY: metrics}), reply_to=msg)


def evaluate_handler(msg, context, app_dir):
    """The ClientApp's evaluate handler: the node's personal accuracy on its own rows (or on the
    rows of node config ``eval-path``). With the guard, the node first decides on its held-out
    rows (:mod:`pfedest.flower.guard`) and scores the model it chose.

    Needs ``flwr`` and a SuperNode's message and context, so it has no standalone example; it
    runs :func:`personal_metrics` (which has one).

    Parameters
    ----------
    msg : flwr.app.Message
        The server's evaluate message (the shared parameters).
    context : flwr.app.Context
        The node's context.
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    flwr.app.Message
        The reply: ``accuracy``, ``loss`` and ``num-examples``.
    """
    from flwr.app import Message, MetricRecord, RecordDict

    settings = RunSettings.from_config(context.run_config)
    spec, node, shared, personal, source, fallback = _received(msg, context, app_dir, settings)
    if settings.guard:  # the node decides on its own held-out rows; the decision stays here
        held = ~train_rows(spec.template(), node.y, settings, node.partition_id)
        weight, evidence = node_decision(spec.template(), node.X[held], node.y[held], shared, personal, fallback,
                                         settings.guard_margin)
        write_decision(decision_file(node.store.dir, spec.app_id), partition_id=node.partition_id,
                       server_round=int(msg.content.config_records[CONFIG_KEY]["server-round"])
                       if CONFIG_KEY in msg.content.config_records else 0, weight=weight, evidence=evidence)
        personal = personal if weight > 0 else fallback
    X, y = node.X, node.y
    if context.node_config.get("eval-path"):
        X, y = _read_rows(Path(str(context.node_config["eval-path"])).expanduser(), spec,
                          f"Node {node.partition_id}", "eval-path")
    metrics = personal_metrics(spec.template(), X, y, shared, personal)
    record = MetricRecord({"num-examples": int(len(X)), "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                           "partition-id": node.partition_id, "personal-source": SOURCES[source]})
    return Message(RecordDict({METRICS_KEY: record}), reply_to=msg)


def query_handler(msg, context, app_dir):
    """The ClientApp's query handler: the node's ``partition-id``, which the server needs to sample
    nodes as the estimator samples clients.

    Needs ``flwr`` and a SuperNode's message and context, so it has no standalone example.

    Parameters
    ----------
    msg : flwr.app.Message
        The server's query message.
    context : flwr.app.Context
        The node's context (node config ``partition-id``, ``data-path``).
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    flwr.app.Message
        The reply: ``partition-id`` and ``num-examples``.
    """
    from flwr.app import Message, MetricRecord, RecordDict

    node = _node(context, read_model(Path(app_dir) / MODEL_FILE))
    record = MetricRecord({"partition-id": node.partition_id, "num-examples": int(len(node.X))})
    return Message(RecordDict({METRICS_KEY: record}), reply_to=msg)


def client_app(app_dir, mods: Optional[Sequence] = None):
    """The Flower ``ClientApp`` of the app in ``app_dir`` (the folder holding ``model.json``).

    ``mods`` are Flower client mods (``mod(msg, context, call_next) -> Message``) wrapped around
    the handlers. Needs ``flwr``; :func:`~pfedest.flower.app.export_app` writes an app that calls it.

    Parameters
    ----------
    app_dir : str or Path
        The folder holding ``model.json``.
    mods : sequence of callable, optional
        Flower client mods.

    Returns
    -------
    flwr.clientapp.ClientApp

    Examples
    --------
    Building the app needs ``flwr`` (``pip install "pfedest[flower]"``) but no federation:

    >>> import pytest
    >>> flwr = pytest.importorskip("flwr")
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.flower import write_model
    >>> app_dir = Path(tempfile.mkdtemp())
    >>> _ = write_model(PartialPersonalizedClassifier(hidden_layer_sizes=(4,)), app_dir / "model.json",
    ...                 classes=[0, 1], n_features=3)
    >>> type(client_app(app_dir)).__name__
    'ClientApp'
    """
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods or []))
    app.train()(lambda msg, context: train_handler(msg, context, app_dir))
    app.evaluate()(lambda msg, context: evaluate_handler(msg, context, app_dir))
    app.query()(lambda msg, context: query_handler(msg, context, app_dir))
    return app

