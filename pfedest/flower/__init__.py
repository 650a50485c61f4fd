"""FedAlt and FedSim on a real Flower federation, personal parameters staying on each node.

A Flower app made here has two halves (`Flower <https://flower.ai>`_'s Message API, tested with
``flwr`` 1.40 to 1.42):

- the **ClientApp** runs on every SuperNode. Its train handler runs the local update with the
  simulator's own code: :func:`pfedest.core.rounds.run_round` on a federation of one client (the node),
  the loss from :func:`pfedest.core.model.make_loss`. The node replies with the shared parameters only;
  its personal parameters stay in ``context.state`` for the run and in a file of its own
  (``state-dir``), so a restarted node resumes with them.
- the **ServerApp** runs :class:`PersonalizedFedAvg`, a Flower strategy that samples nodes,
  refuses any reply that holds anything but the shared parameters, and averages them weighted by
  the nodes' example counts (or equally: run config ``weighting="uniform"``) with
  :class:`pfedest.core.server.WeightedAverage`, then steps with :class:`pfedest.core.server.ServerOptimizer`,
  as the simulator does.

The model travels inside the app as ``model.json`` (:func:`write_model`): the estimator's
parameters, the labels, the input shape and the starting weights. Training settings are the app's
run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, see :class:`RunSettings`), so
``flwr run --run-config "lr=0.05"`` changes them. A node is configured with ``flower-supernode
--node-config 'partition-id=0 data-path="node0.npz" state-dir="state0"'``; its data file is an
``.npz`` with arrays ``X`` and ``y``.

Randomness: every draw is keyed by ``(seed, round, client)``, as the estimator's ``fit`` keys
them. The server samples the round's nodes with :func:`pfedest.core.sampling.sample_clients` seeded by
``(seed, round)`` over the nodes' ``partition-id`` order, and node ``p`` draws its minibatches in
round ``r`` from ``pfedest.core.sampling.RoundKeys(seed, r)`` as client ``p``. So with the
partition-ids numbering the estimator's clients (``clients_`` order) and each node holding that
client's rows in the same order, a run reproduces
:meth:`~pfedest.PartialPersonalizedClassifier.fit` with ``random_state=seed``, draw for draw.

Flower is imported only inside the functions that need it: ``import pfedest.flower`` works
without it. Install it with ``pip install -e ".[flower]"``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import pickle
import re
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..core.algorithms import ALGORITHMS, StepSizes
from ..core.engine import make_engine
from ..core.rounds import RoundResult, client_updates, draw_batches
from ..core.model import make_loss, personalized_logits
from ..core.sampling import RoundKeys, n_sampled
from ..core.schedules import SCHEDULES
from ..core.server import ServerOptimizer, WeightedAverage

from .._files import atomic_write
from ..core.types import Params


#: The ``flwr`` releases this module was tested with (the ``flower`` extra pins the same range).
FLWR_REQUIREMENT = "flwr>=1.40,<1.43"
MODEL_FORMAT = "pfedest-flower-model/1"
MODEL_FILE = "model.json"
#: Keys of a train or evaluate message and of a node's ``context.state``.
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
CONFIG_KEY = "config"
STATE_KEY = "pfedest.personal"
#: Where the personal parameters of a node came from at the start of a round.
SOURCES = {"init": 0, "state": 1, "disk": 2}

# A child of Flower's logger, so that messages show in `flwr run --stream` and the SuperLink log.
logger = logging.getLogger("flwr.pfedest")

# Estimator parameters the Flower app honours (the rest would be silently ignored, so exporting an
# estimator that sets one of them warns). Training settings among them become run-config keys.
_ARCHITECTURE = ("module", "split", "hidden_layer_sizes", "random_state")
_TRAINING = ("n_rounds", "algorithm", "lr", "personal_lr", "batch_size", "personal_steps", "shared_steps",
             "server_lr", "weighting", "clients_per_round", "clip_grad_norm", "personal_l2", "personal_l2_target",
             "lr_schedule", "server_optimizer", "server_momentum")
_IGNORED_BY_DESIGN = ("engine", "max_clients_per_batch", "compile", "device", "unseen_clients", "warm_start",
                      "verbose")


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RunSettings:
    """A run's training settings: the app's run config (``[tool.flwr.app.config]``).

    Each field is read from the run-config key of the same name with ``-`` for ``_``
    (``num-rounds``, ``personal-lr``, ...). TOML has no ``None``: ``personal-lr = 0`` means "the
    same as ``lr``", ``personal-steps = -1`` / ``shared-steps = -1`` mean one epoch and
    ``clip-grad-norm = 0`` means no clipping. The settings shared with
    :class:`~pfedest.PartialPersonalizedClassifier` act as in its ``fit``.

    Parameters
    ----------
    num_rounds : int
    algorithm : {"fedalt", "fedsim"}
    lr, personal_lr : float
        Client learning rates of the shared and the personal part.
    batch_size : int
    personal_steps, shared_steps : int
        Local steps (``-1``: one epoch over the node's rows).
    server_lr : float
        Server step on the averaged shared parameters (1.0: plain averaging).
    server_optimizer : {"sgd", "adam"}
        How the server applies the averaged pseudo-gradient (:class:`pfedest.core.server.ServerOptimizer`;
        its state lives in the ServerApp for the run).
    server_momentum : float in [0, 1)
        Server momentum of ``"sgd"``.
    clip_grad_norm : float
        Clip each local step's gradient to this norm (0: no clipping).
    personal_l2 : float
        L2 penalty ``personal_l2 / 2 * ||v - target||^2`` on the personal part.
    personal_l2_target : {"zero", "init"}
        The penalty's target: zero, or the personal part at the start of training (``model.json``'s).
    lr_schedule : {"constant", "linear", "step"}
        Factor of ``lr`` and ``personal_lr`` in each round (:mod:`pfedest.core.schedules`), over
        ``num_rounds`` rounds.
    lr_warmup_rounds, lr_final : int, float
        ``warmup_rounds`` and ``final`` of the ``"linear"`` schedule (:class:`~pfedest.core.schedules.LinearLR`).
    lr_step_rounds, lr_gamma : int, float
        ``step_rounds`` and ``gamma`` of the ``"step"`` schedule (:class:`~pfedest.core.schedules.StepLR`).
    weighting : {"samples", "uniform"}
        Weigh each reply by its ``num-examples`` or equally, as the estimator's ``weighting``.
    clients_per_round : int or float
        Nodes sampled each round: a count, or a fraction in (0, 1] of the connected nodes.
    min_nodes : int
        Nodes that must be connected before a round starts.
    node_wait : float
        Seconds to wait for ``min_nodes`` before the server gives up.
    round_timeout : float
        Seconds the server waits for replies; the round goes on with those that came.
    straggler_wait : float
        Once a round's first reply has come, wait at most this many more seconds for the others
        (0: up to ``round_timeout``). A node that dies mid-round is reported by Flower only when its
        heartbeat expires (about a minute); this bounds what it costs the round.
    evaluate_every : int
        Ask every connected node for its personal accuracy every this many rounds and after the
        last (0: after the last only, -1: never).
    poll_interval : float
        Seconds between the server's checks for replies (0: Flower's own, 3 s).
    seed : int
        Keys node sampling and the nodes' minibatches by ``(seed, round, partition-id)``; the
        estimator's ``random_state`` (an int) gives the same draws.
    keep_rounds : bool
        Also keep the shared parameters of every round (``shared-round-<r>.npz``).
    result_dir : str
        Where the server writes ``shared.npz``, ``rounds.json`` and ``model.json`` (relative paths
        are taken from the SuperLink's working directory).

    Examples
    --------
    >>> s = RunSettings.from_config({"num-rounds": 5, "algorithm": "fedsim", "personal-lr": 0.0})
    >>> s.num_rounds, s.step_sizes(), s.steps()
    (5, StepSizes(shared=0.1, personal=0.1), {'joint': None})
    >>> s = RunSettings.from_config({"num-rounds": 4, "lr-schedule": "step", "lr-step-rounds": 2})
    >>> s.schedule(), [s.step_sizes(server_round=r).shared for r in (1, 3)]
    (StepLR(step_rounds=2), [0.1, 0.05])
    """

    num_rounds: int = 3
    algorithm: str = "fedalt"
    lr: float = 0.1
    personal_lr: float = 0.0
    batch_size: int = 32
    personal_steps: int = -1
    shared_steps: int = -1
    server_lr: float = 1.0
    server_optimizer: str = "sgd"
    server_momentum: float = 0.0
    clip_grad_norm: float = 0.0
    personal_l2: float = 0.0
    personal_l2_target: str = "zero"
    lr_schedule: str = "constant"
    lr_warmup_rounds: int = 0
    lr_final: float = 0.0
    lr_step_rounds: int = 10
    lr_gamma: float = 0.5
    weighting: str = "samples"
    clients_per_round: float = 1.0
    min_nodes: int = 2
    node_wait: float = 300.0
    round_timeout: float = 600.0
    straggler_wait: float = 0.0
    evaluate_every: int = 0
    poll_interval: float = 0.0
    seed: int = 0
    keep_rounds: bool = False
    result_dir: str = "pfedest-result"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Read and check the settings from a run config (unknown keys are left alone)."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                values[f.name] = config[key]
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self):
        def bad(name, rule):
            key = name.replace("_", "-")
            raise ValueError(f"Run config {key}={getattr(self, name)!r} is invalid: {rule}.")

        for name in ("num_rounds", "batch_size", "min_nodes", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                bad(name, "expected a positive integer" if name != "seed" else "expected an integer >= 0")
        for name in ("personal_steps", "shared_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                bad(name, "expected an integer >= 0, or -1 for one epoch")
        if self.algorithm not in ("fedalt", "fedsim"):
            bad("algorithm", "expected 'fedalt' or 'fedsim'")
        if self.weighting not in ("samples", "uniform"):
            bad("weighting", "expected 'samples' or 'uniform'")
        if self.server_optimizer not in ("sgd", "adam"):
            bad("server_optimizer", "expected 'sgd' or 'adam'")
        if self.personal_l2_target not in ("zero", "init"):
            bad("personal_l2_target", "expected 'zero' or 'init'")
        if self.lr_schedule not in SCHEDULES:
            bad("lr_schedule", f"expected one of {sorted(SCHEDULES)}")

        def number(value):  # a bool is an int to Python, but a typo in a run config
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("clip_grad_norm", "personal_l2", "lr_final"):
            if not number(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "expected a number >= 0")
        if not number(self.server_momentum) or not 0 <= self.server_momentum < 1:
            bad("server_momentum", "expected a number in [0, 1)")
        if not number(self.lr_gamma) or self.lr_gamma <= 0:
            bad("lr_gamma", "expected a positive number")
        for name, low in (("lr_warmup_rounds", 0), ("lr_step_rounds", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                bad(name, f"expected an integer >= {low}")
        for name, low in (("lr", 0.0), ("server_lr", 0.0), ("round_timeout", 0.0), ("node_wait", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
                bad(name, "expected a positive number")
        for name in ("personal_lr", "poll_interval", "straggler_wait"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(name, "expected a number >= 0")
        m = self.clients_per_round
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 or (isinstance(m, float) and m > 1):
            bad("clients_per_round", "expected a count >= 1 or a fraction in (0, 1]")
        if isinstance(self.evaluate_every, bool) or not isinstance(self.evaluate_every, int) or self.evaluate_every < -1:
            bad("evaluate_every", "expected an integer >= 0, or -1 for never")
        if not isinstance(self.keep_rounds, bool):
            bad("keep_rounds", "expected true or false")
        if not isinstance(self.result_dir, str) or not self.result_dir:
            bad("result_dir", "expected a path")
        self.steps()  # raises when the algorithm would take no local step

    def step_sizes(self, server_round: Optional[int] = None) -> StepSizes:
        """The client learning rates: in round ``server_round`` (from 1) scaled by the schedule, as
        the estimator's ``fit`` scales them in that round; the base rates without it."""
        factor = 1.0 if server_round is None else float(self.schedule()(server_round - 1, self.num_rounds))
        return StepSizes(shared=float(self.lr) * factor, personal=float(self.personal_lr or self.lr) * factor)

    def schedule(self):
        """The learning-rate schedule (a :mod:`pfedest.core.schedules` object) with its run-config parameters."""
        cls = SCHEDULES[self.lr_schedule]
        return cls(**{p: getattr(self, f"lr_{p}") for p in cls().get_params()})

    def step_options(self, anchor: Optional[Params] = None) -> dict:
        """The options of every local step (:func:`~pfedest.core.engine.make_engine`'s ``step_options``):
        gradient clipping and the personal L2 penalty, pulling towards ``anchor`` with target ``"init"``."""
        if self.personal_l2_target == "init" and anchor is None:
            raise ValueError("personal-l2-target='init' needs the personal part at the start of training (anchor).")
        return dict(clip=float(self.clip_grad_norm) or None, personal_l2=float(self.personal_l2),
                    personal_anchor=anchor if self.personal_l2_target == "init" else None)

    def make_server_optimizer(self) -> ServerOptimizer:
        """A fresh server optimizer; the strategy keeps one for the whole run."""
        return ServerOptimizer(self.server_optimizer, lr=float(self.server_lr), momentum=float(self.server_momentum))

    def steps(self) -> dict:
        """Step count of each of the algorithm's streams (``None``: one epoch), as the estimator has them."""
        def block(steps):
            return None if steps == -1 else steps

        return ALGORITHMS[self.algorithm].steps(block(self.personal_steps), block(self.shared_steps))

    def n_sampled(self, n_nodes: int) -> int:
        """Nodes to sample out of ``n_nodes`` connected ones."""
        return n_sampled(self.clients_per_round, n_nodes)


def _schedule_config(schedule) -> Optional[dict]:
    """The run-config keys of an estimator's ``lr_schedule``: a name in ``pfedest.core.schedules.SCHEDULES``
    or an instance of one of those classes (its parameters become ``lr-<parameter>`` keys); ``None``
    for anything else (a user's callable, a subclass), which cannot travel to the nodes."""
    if isinstance(schedule, str):
        return {"lr-schedule": schedule} if schedule in SCHEDULES else None
    name = next((n for n, cls in SCHEDULES.items() if type(schedule) is cls), None)
    if name is None:
        return None
    return {"lr-schedule": name, **{f"lr-{p}".replace("_", "-"): v.item() if isinstance(v, np.generic) else v
                                    for p, v in schedule.get_params().items()}}


def _check_node_numbers(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")


# ------------------------------------------------------------------------------------- the model
def _encode_array(t: torch.Tensor) -> dict:
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(d: Mapping) -> torch.Tensor:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(a.copy())


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _defined_in_main(obj) -> bool:
    owner = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return getattr(owner, "__module__", None) == "__main__"


def _encode_object(name: str, value) -> dict:
    """A non-plain estimator parameter (a module, a split object, a callable) as a pickle.

    The app's code runs on every node anyway; what matters is that the classes it names can be
    imported there, which fails for anything defined in a script's ``__main__``.
    """
    if _defined_in_main(value):
        raise ValueError(f"{name}={value!r} is defined in __main__, which the Flower nodes cannot import; "
                         "define it in a module that is installed on every node.")
    try:
        data = pickle.dumps(value)
    except Exception as exc:
        raise ValueError(f"{name}={value!r} cannot be pickled into the Flower app: {exc}") from exc
    return {"pickle": base64.b64encode(data).decode("ascii")}


def _decode_object(d: Mapping):
    return pickle.loads(base64.b64decode(d["pickle"]))


def _estimator_defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def write_model(estimator, path, *, classes=None, n_features=None) -> Path:
    """Write what the Flower app needs to know about ``estimator`` to the JSON file ``path``.

    Parameters
    ----------
    estimator : PartialPersonalizedClassifier
        Fitted (the app starts from its shared parameters, the personal part from their average
        over its clients) or only configured (the app starts from its initial weights).
    path : str or Path
        The file to write (``model.json`` inside the app's package).
    classes : array-like, optional
        The labels; required for an unfitted estimator.
    n_features : int or tuple of int, optional
        Features per row (or the shape of one row); required for an unfitted estimator.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from pfedest import PartialPersonalizedClassifier
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), random_state=0)
    >>> path = write_model(est, pathlib.Path(tempfile.mkdtemp()) / "model.json", classes=[0, 1], n_features=3)
    >>> spec = read_model(path)
    >>> sorted(spec.shared), sorted(spec.personal)
    (['net.0.bias', 'net.0.weight'], ['net.2.bias', 'net.2.weight'])
    """
    from sklearn.utils.validation import check_is_fitted
    from sklearn.exceptions import NotFittedError

    try:
        check_is_fitted(estimator)
        fitted = True
    except NotFittedError:
        fitted = False
    params = estimator.get_params(deep=False)
    defaults = _estimator_defaults(type(estimator))
    ignored = sorted(k for k, v in params.items()
                     if k not in _ARCHITECTURE + _TRAINING + _IGNORED_BY_DESIGN and not _same(v, defaults.get(k)))
    if "lr_schedule" in params and _schedule_config(params["lr_schedule"]) is None:
        ignored.append("lr_schedule")  # a callable of the user's: the nodes could not rebuild it
        params.pop("lr_schedule")
    if ignored:
        warnings.warn(f"The Flower app does not carry out these estimator settings: "
                      f"{', '.join(f'{k}={getattr(estimator, k)!r}' for k in sorted(ignored))}; it has no pre-training "
                      "or fine-tuning stage, no callbacks, and only the learning-rate schedules of "
                      "pfedest.core.schedules.SCHEDULES.", UserWarning, stacklevel=2)
    if isinstance(params.get("random_state"), (np.random.RandomState, np.random.Generator)):
        params["random_state"] = None  # the weights are stored; the seed only named them
    plain, objects = {}, {}
    for name in _ARCHITECTURE + _TRAINING:
        if name not in params:
            continue
        value = params[name]
        if _plain(value):
            plain[name] = list(value) if isinstance(value, tuple) else value
        else:
            objects[name] = _encode_object(name, value)
    if fitted:
        if classes is not None and not np.array_equal(np.asarray(classes), estimator.classes_):
            raise ValueError(f"classes={list(classes)!r} differ from the fitted estimator's classes_ "
                             f"{estimator.classes_.tolist()!r}.")
        classes = estimator.classes_
        input_shape = tuple(estimator.input_shape_)
        shared = {k: v.detach().cpu() for k, v in estimator.shared_params_.items()}
        personal = {k: v.detach().cpu().mean(0) for k, v in estimator.personal_params_.items()}
    else:
        if classes is None or n_features is None:
            raise ValueError("An unfitted estimator needs classes= (the labels) and n_features= (features per "
                             "row, or the shape of one row) to build its network.")
        input_shape = (int(n_features),) if np.isscalar(n_features) else tuple(int(d) for d in n_features)
        template = _fit_template(type(estimator), plain, objects, np.asarray(classes), input_shape)
        init = dict(template.module_.named_parameters())
        shared = {k: init[k].detach().clone() for k in template.shared_params_}
        personal = {k: init[k].detach().clone() for k in template.personal_params_}
    classes = np.asarray(classes)
    if classes.dtype.kind == "O" and all(isinstance(label, str) for label in classes.tolist()):
        classes = classes.astype(str)
    if classes.dtype.kind not in "iubfU":
        raise ValueError(f"classes must be numbers or strings to travel in JSON, got dtype {classes.dtype}.")
    spec = {
        "format": MODEL_FORMAT,
        "app_id": uuid.uuid4().hex[:12],
        "estimator_class": f"{type(estimator).__module__}:{type(estimator).__qualname__}",
        "estimator": plain,
        "objects": objects,
        "classes": classes.tolist(),
        "input_shape": list(input_shape),
        "shared": {k: _encode_array(v) for k, v in shared.items()},
        "personal": {k: _encode_array(v) for k, v in personal.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
    # Fail here, not on the nodes, if the network cannot be rebuilt as the weights describe it.
    template = read_model(path).template()
    _check_layout("The shared parameters", shared, template.shared_params_)
    _check_layout("The personal parameters", personal, {k: v[0] for k, v in template.personal_params_.items()})
    return path


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:
        return a is b


def _import(path: str):
    import importlib

    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _fit_template(cls, plain: Mapping, objects: Mapping, classes: np.ndarray, input_shape: tuple):
    """The estimator fitted for one round on one row per class: the public way to make it build its
    network (``module_``, the shared/personal names) without running its training."""
    arch = {k: v for k, v in plain.items() if k in _ARCHITECTURE}
    arch.update({k: _decode_object(v) if isinstance(v, Mapping) else v
                 for k, v in objects.items() if k in _ARCHITECTURE})
    if "hidden_layer_sizes" in arch:
        arch["hidden_layer_sizes"] = tuple(arch["hidden_layer_sizes"])
    accepted = set(inspect.signature(cls.__init__).parameters)
    est = cls(**{k: v for k, v in arch.items() if k in accepted})
    est.set_params(n_rounds=1, clients_per_round=1, engine="loop", device="cpu", verbose=0, warm_start=False)
    X = np.zeros((len(classes), *input_shape), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, classes)
    return est


@dataclass
class ModelSpec:
    """The contents of a ``model.json`` (see :func:`write_model`).

    Parameters
    ----------
    app_id : str
        Identifies the model (names the nodes' state files).
    estimator_class : str
        Import path of the estimator class.
    estimator : dict
        The estimator's JSON-able parameters.
    objects : dict
        Its other parameters (modules, splits), encoded.
    classes : ndarray
        The labels.
    input_shape : tuple of int
        The shape of one row.
    shared, personal : dict of str to Tensor
        The starting shared and personal parameters.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> spec.classes.tolist(), spec.input_shape
    ([0, 1], (3,))
    >>> spec.estimator_params()["hidden_layer_sizes"]
    (4,)
    """

    app_id: str
    estimator_class: str
    estimator: dict
    objects: dict
    classes: np.ndarray
    input_shape: tuple
    shared: Params
    personal: Params

    def template(self):
        """A fitted estimator with this model's network (its weights are not the model's: use
        :attr:`shared` and :attr:`personal`). Cached per file and process."""
        return _template_cached(self.app_id, json.dumps([self.estimator, self.objects, self.classes.tolist(),
                                                         list(self.input_shape), self.estimator_class]))

    def estimator_params(self) -> dict:
        """The estimator parameters stored in the model (objects unpickled)."""
        params = dict(self.estimator)
        params.update({k: _decode_object(v) for k, v in self.objects.items()})
        if "hidden_layer_sizes" in params:
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        return params


@lru_cache(maxsize=8)
def _template_cached(app_id: str, key: str):
    estimator, objects, classes, input_shape, cls_path = json.loads(key)
    template = _fit_template(_import(cls_path), estimator, objects, np.asarray(classes), tuple(input_shape))
    return template


def read_model(path) -> ModelSpec:
    """Read a ``model.json`` written by :func:`write_model`.

    Parameters
    ----------
    path : str or Path
        The ``model.json`` file.

    Returns
    -------
    ModelSpec

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a pfedest Flower model.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> sorted(spec.personal)
    ['net.2.bias', 'net.2.weight']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Flower model file at {path}; write one with pfedest.flower.write_model "
                                "or export_app.")
    raw = json.loads(path.read_text())
    if raw.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a pfedest Flower model (format {raw.get('format')!r}, expected "
                         f"{MODEL_FORMAT!r}).")
    return ModelSpec(
        app_id=raw["app_id"], estimator_class=raw["estimator_class"], estimator=raw["estimator"],
        objects=raw["objects"], classes=np.asarray(raw["classes"]), input_shape=tuple(raw["input_shape"]),
        shared={k: _decode_array(v) for k, v in raw["shared"].items()},
        personal={k: _decode_array(v) for k, v in raw["personal"].items()})


def _check_layout(name: str, params: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]):
    """Refuse parameters whose names or shapes differ from the model's."""
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(f"{name} do not match the model: missing {missing}, unexpected {extra}.")
    for k, v in params.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{name}: {k} has shape {tuple(v.shape)}, the model has {tuple(expected[k].shape)}.")


# --------------------------------------------------------------------------------- the node's side
def local_round(template, X: np.ndarray, y: np.ndarray, shared: Params, personal: Params, settings: RunSettings,
                *, server_round: int, partition_id: int,
                anchor: Optional[Params] = None) -> tuple[Params, Params, RoundResult]:
    """One node's FedAlt or FedSim local update: :func:`~pfedest.core.rounds.client_updates` for
    this one client, with the minibatches the simulator draws for it.

    Parameters
    ----------
    template : PartialPersonalizedClassifier
        A fitted estimator with the network (:meth:`ModelSpec.template`).
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
    codes = _encode_labels(template, y)
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
    new_shared, result = client_updates(ALGORITHMS[settings.algorithm], engine, dict(shared), state, np.array([0]),
                                        batches, np.array([0]), settings.step_sizes(server_round), weights=np.ones(1))
    if not result.finite:
        raise FloatingPointError(f"Node {partition_id}: the loss became NaN or infinite in round {server_round}; "
                                 f"nothing is sent. Lower lr (now {settings.lr}) or scale the features.")
    return new_shared, {k: v[0] for k, v in state.items()}, result


def _encode_labels(template, y) -> np.ndarray:
    y = np.asarray(y)
    unknown = np.setdiff1d(np.unique(y), template.classes_)
    if len(unknown):
        raise ValueError(f"The node's labels {unknown.tolist()} are not among the model's classes "
                         f"{template.classes_.tolist()}.")
    return np.searchsorted(template.classes_, y)


def personal_metrics(template, X: np.ndarray, y: np.ndarray, shared: Params, personal: Params) -> dict:
    """Accuracy and mean cross-entropy of the personal model ``(shared, personal)`` on ``(X, y)``.

    Parameters
    ----------
    template : PartialPersonalizedClassifier
        A fitted estimator with the network (:meth:`ModelSpec.template`).
    X, y : ndarray
        Rows and labels (labels among ``template.classes_``).
    shared, personal : dict of str to Tensor
        The shared parameters and one node's personal ones.

    Returns
    -------
    dict
        ``accuracy`` and ``loss``, as floats.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> import numpy as np
    >>> X, y = np.random.default_rng(0).normal(size=(10, 3)), np.array([0, 1] * 5)
    >>> metrics = personal_metrics(spec.template(), X, y, spec.shared, spec.personal)
    >>> sorted(metrics), 0.0 <= metrics["accuracy"] <= 1.0
    (['accuracy', 'loss'], True)
    """
    codes = torch.as_tensor(_encode_labels(template, y))
    X_t = torch.as_tensor(np.array(X, dtype=np.float32))
    module = template.module_
    stacked = {k: v[None] for k, v in personal.items()}
    with torch.no_grad():
        logits = personalized_logits(module, dict(module.named_buffers()), shared, stacked, X_t,
                                     torch.zeros(len(X_t), dtype=torch.int64))
        loss = torch.nn.functional.cross_entropy(logits, codes)
    return {"accuracy": float((logits.argmax(1) == codes).double().mean()), "loss": float(loss)}


def _digest(params: Params) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k].detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


class NodeStore:
    """A node's personal parameters: ``context.state`` during a run, and a file of its own.

    The file, ``<state-dir>/pfedest-<app id>.npz``, is rewritten (atomically) after every local
    update, so a node that is restarted (a new SuperNode process, an empty ``context.state``)
    resumes with them. Every update also appends a line to ``pfedest-<app id>.log.jsonl``: the round,
    where the parameters came from, and digests of them before and after.

    Parameters
    ----------
    state_dir : str or Path
        The node's ``state-dir``; created if missing.
    app_id : str
        The model's ``app_id`` (:class:`ModelSpec`).
    partition_id : int
        The node's ``partition-id``.

    Examples
    --------
    A node with an empty ``context.state`` and no file starts from the model's personal part:

    >>> from types import SimpleNamespace
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), batch_size=5, random_state=0)
    >>> spec = read_model(write_model(est, Path(tempfile.mkdtemp()) / "model.json",
    ...                               classes=[0, 1], n_features=3))
    >>> store = NodeStore(Path(tempfile.mkdtemp()), spec.app_id, partition_id=0)
    >>> personal, source = store.load(SimpleNamespace(state={}), spec.personal)
    >>> source, store.file.name == f"pfedest-{spec.app_id}.npz"
    ('init', True)
    """

    def __init__(self, state_dir, app_id: str, partition_id: int):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.partition_id = int(partition_id)
        self.file = self.dir / f"pfedest-{app_id}.npz"
        self.log_file = self.dir / f"pfedest-{app_id}.log.jsonl"

    def load(self, context, initial: Params) -> tuple[Params, str]:
        """The personal parameters and where they came from: ``"state"``, ``"disk"`` or ``"init"``."""
        if STATE_KEY in context.state:
            record = context.state.array_records[STATE_KEY]
            personal, source = {k: torch.from_numpy(a.numpy().copy()) for k, a in record.items()}, "state"
        elif self.file.is_file():
            personal, source = self.read(), "disk"
        else:
            return {k: v.clone() for k, v in initial.items()}, "init"
        _check_layout(f"The personal parameters in {self.file if source == 'disk' else 'context.state'}",
                      personal, initial)
        return personal, source

    def read(self) -> Params:
        """The personal parameters in the node's file."""
        with np.load(self.file, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta["partition_id"] != self.partition_id:
                raise ValueError(f"{self.file} holds the personal parameters of partition {meta['partition_id']}, "
                                 f"but this node is partition {self.partition_id}.")
            return {k: torch.from_numpy(data[k].copy()) for k in meta["names"]}

    def save(self, context, personal: Params, *, server_round: int, run_id: int, source: str, start: str,
             loss: float) -> None:
        """Keep ``personal`` in ``context.state`` and in the node's file; log the update."""
        from flwr.app import Array, ArrayRecord

        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in personal.items()}
        context.state[STATE_KEY] = ArrayRecord({k: Array(a) for k, a in arrays.items()})
        meta = {"partition_id": self.partition_id, "round": int(server_round), "run_id": int(run_id),
                "names": sorted(arrays)}
        atomic_write(self.file, lambda f: np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays))
        line = {"time": time.time(), "run_id": int(run_id), "round": int(server_round), "source": source,
                "start": start, "end": _digest(personal), "train_loss": loss, "pid": os.getpid()}
        with open(self.log_file, "a") as f:
            f.write(json.dumps(line) + "\n")


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
    if not data_path.is_file():
        raise FileNotFoundError(f"Node {pid}: no data file at {data_path} (node config data-path).")
    with np.load(data_path, allow_pickle=False) as data:
        if "X" not in data or "y" not in data:
            raise ValueError(f"{data_path} must hold arrays 'X' and 'y', it has {sorted(data.files)}.")
        X, y = data["X"], data["y"]
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"{data_path}: X has {len(X)} rows and y {len(y)}; need the same positive number.")
    if tuple(X.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"{data_path}: rows of shape {tuple(X.shape[1:])}, the model takes {tuple(spec.input_shape)}.")
    state_dir = Path(str(cfg.get("state-dir") or data_path.parent)).expanduser()
    return _Node(pid, X, y, NodeStore(state_dir, spec.app_id, pid))


def _to_tensors(record) -> Params:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def _to_record(params: Params):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in params.items()})


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

    spec = read_model(Path(app_dir) / MODEL_FILE)
    settings = RunSettings.from_config(context.run_config)
    node = _node(context, spec)
    template = spec.template()
    shared = _to_tensors(msg.content.array_records[ARRAYS_KEY])
    _check_layout("The shared parameters from the server", shared, spec.shared)
    server_round = int(msg.content.config_records[CONFIG_KEY]["server-round"])
    personal, source = node.store.load(context, spec.personal)
    start = _digest(personal)
    new_shared, new_personal, result = local_round(template, node.X, node.y, shared, personal, settings,
                                                   server_round=server_round, partition_id=node.partition_id,
                                                   anchor=spec.personal)
    loss = result.loss_sum / max(result.row_count, 1.0)
    node.store.save(context, new_personal, server_round=server_round, run_id=context.run_id, source=source,
                    start=start, loss=loss)
    reply = {k: new_shared[k] for k in spec.shared}  # by construction, never a personal name
    metrics = MetricRecord({"num-examples": int(len(node.X)), "train-loss-sum": float(result.loss_sum),
                            "train-rows": float(result.row_count), "partition-id": node.partition_id,
                            "personal-source": SOURCES[source]})
    return Message(RecordDict({ARRAYS_KEY: _to_record(reply), METRICS_KEY: metrics}), reply_to=msg)


def evaluate_handler(msg, context, app_dir):
    """The ClientApp's evaluate handler: the node's personal accuracy on its own rows (or on the
    rows of node config ``eval-path``).

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

    spec = read_model(Path(app_dir) / MODEL_FILE)
    node = _node(context, spec)
    X, y = node.X, node.y
    if context.node_config.get("eval-path"):
        with np.load(str(context.node_config["eval-path"]), allow_pickle=False) as data:
            X, y = data["X"], data["y"]
    shared = _to_tensors(msg.content.array_records[ARRAYS_KEY])
    _check_layout("The shared parameters from the server", shared, spec.shared)
    personal, source = node.store.load(context, spec.personal)
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
    the handlers. Needs ``flwr``; :func:`export_app` writes an app that calls it.

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


# ------------------------------------------------------------------------------- the server's side
def _strategy_class():
    """Build :class:`PersonalizedFedAvg` (it subclasses Flower's ``FedAvg``, so Flower must be importable)."""
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from ..core.sampling import sample_clients

    class PersonalizedFedAvg(FedAvg):
        """FedAvg over the shared parameters only, for FedAlt and FedSim.

        Flower's own ``FedAvg`` averages whatever keys the replies hold (a key in some replies
        only is averaged with the weights of all, so it shrinks) and samples with Python's global
        ``random``. This strategy instead:

        - samples ``settings.n_sampled(n)`` of the ``n`` connected nodes with
          :func:`pfedest.core.sampling.sample_clients` seeded by ``(seed, round)``, after waiting at most
          ``node_wait`` seconds for ``min_nodes`` of them. The nodes are taken in the order of
          their ``partition-id`` (learnt from their replies; before a round that samples only some
          nodes, the server asks those it does not know yet with a query message, and leaves out
          of the round any that does not answer), so that the sample is the estimator's;
        - refuses a reply unless it holds exactly the shared parameters (names, shapes, finite
          values) and a positive ``num-examples``; a refused or failed reply is left out of the round;
        - averages the accepted replies in the order of their ``partition-id``, weighted by
          ``num-examples`` (or equally, with ``settings.weighting="uniform"``), with
          :class:`pfedest.core.server.WeightedAverage`, then takes the server step with its
          :class:`pfedest.core.server.ServerOptimizer` (``server_optimizer``, ``server_lr``,
          ``server_momentum``; plain ``u + server_lr * (mean - u)`` by default), whose state (momentum,
          Adam's moments) it keeps from round to round;
        - keeps a record of every round in :attr:`rounds`: which nodes were asked, which replied
          with which keys and sizes, which failed and why.

        Parameters
        ----------
        shared : dict of str to Tensor
            The shared parameters' layout (names and shapes).
        settings : RunSettings
        on_round : callable, optional
            Called as ``on_round(record, shared)`` after each round's aggregation.
        """

        def __init__(self, shared: Params, settings: RunSettings, on_round=None):
            super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                             min_available_nodes=settings.min_nodes, arrayrecord_key=ARRAYS_KEY,
                             configrecord_key=CONFIG_KEY)
            self.layout = {k: tuple(v.shape) for k, v in shared.items()}
            self.settings = settings
            self.on_round = on_round
            self.rounds: list[dict] = []
            self._current: Optional[Params] = None
            self.partitions: Dict[int, int] = {}  # node id -> partition-id, from the nodes' replies
            self.server = settings.make_server_optimizer()

        def summary(self) -> None:
            s = self.settings
            logger.info("PersonalizedFedAvg: %s, %d shared arrays, clients per round %s, min nodes %d, "
                        "server %s (lr %s, momentum %s), %s weighting, seed %d", s.algorithm, len(self.layout),
                        s.clients_per_round, s.min_nodes, s.server_optimizer, s.server_lr, s.server_momentum,
                        s.weighting, s.seed)

        def _connected(self, grid) -> list:
            deadline = time.monotonic() + self.settings.node_wait
            while True:
                nodes = sorted(grid.get_node_ids())
                if len(nodes) >= self.settings.min_nodes:
                    return nodes
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Only {len(nodes)} node(s) connected after {self.settings.node_wait} s; "
                                       f"the run needs min-nodes={self.settings.min_nodes}.")
                time.sleep(0.5)

        def _messages(self, record: RecordDict, nodes, message_type):
            return [Message(content=record, message_type=message_type, dst_node_id=n) for n in nodes]

        def _learn_partition(self, node, metrics) -> None:
            pid = metrics.get("partition-id")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
                self.partitions[int(node)] = pid

        def ask_partitions(self, grid, nodes: Sequence[int], server_round: int) -> list:
            """Ask ``nodes`` whose ``partition-id`` is not known yet for it; returns the nodes
            that stay eligible (known now)."""
            unknown = [n for n in nodes if int(n) not in self.partitions]
            if unknown:
                config = ConfigRecord({"server-round": int(server_round)})
                replies = grid.send_and_receive(self._messages(RecordDict({CONFIG_KEY: config}), unknown,
                                                               MessageType.QUERY),
                                                timeout=min(self.settings.round_timeout, self.settings.node_wait))
                for msg in replies:
                    if not msg.has_error():
                        self._learn_partition(msg.metadata.src_node_id,
                                              dict(next(iter(msg.content.metric_records.values()), {}) or {}))
                silent = [n for n in unknown if int(n) not in self.partitions]
                if silent:
                    logger.warning("Round %d: node(s) %s did not tell their partition-id; they sit this round out.",
                                   server_round, silent)
            return [n for n in nodes if int(n) in self.partitions]

        def begin_round(self, server_round: int, shared: Params, connected: Sequence[int]) -> list:
            """Sample the round's nodes out of ``connected`` and start its record; returns them.

            The nodes are ordered by ``partition-id`` when the server knows every one's (by node id
            otherwise), so that sampling positions picks the clients the estimator would pick.
            """
            self._current = {k: v.clone() for k, v in shared.items()}
            nodes = sorted(connected)
            if all(int(n) in self.partitions for n in nodes):
                nodes.sort(key=lambda n: (self.partitions[int(n)], n))
            rng = np.random.default_rng([self.settings.seed, int(server_round)])
            chosen = sample_clients(rng, np.arange(len(nodes)), self.settings.n_sampled(len(nodes)))
            sampled = [nodes[i] for i in chosen]
            # Node ids are 64-bit unsigned: kept as strings, JSON and numpy cannot hold them all.
            self.rounds.append({"round": int(server_round), "connected": [str(n) for n in nodes],
                                "sampled": [str(n) for n in sampled], "started": time.time()})
            return sampled

        def configure_train(self, server_round, arrays, config, grid):
            connected = self._connected(grid)
            if self.settings.n_sampled(len(connected)) < len(connected):
                connected = self.ask_partitions(grid, connected, server_round) or connected
            sampled = self.begin_round(server_round, _to_tensors(arrays), connected)
            logger.info("Round %d: training %d of %d nodes", server_round, len(sampled),
                        len(self.rounds[-1]["connected"]))
            config = ConfigRecord(dict(config))
            config["server-round"] = int(server_round)
            return self._messages(RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config}), sampled, MessageType.TRAIN)

        def _refuse(self, content) -> Optional[str]:
            """Why a train reply cannot be averaged, or ``None``."""
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                return (f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} "
                        f"and {len(content.metric_records)}")
            arrays = next(iter(content.array_records.values()))
            keys = set(arrays.keys())
            if keys != set(self.layout):
                return (f"holds keys other than the shared parameters: unexpected {sorted(keys - set(self.layout))}, "
                        f"missing {sorted(set(self.layout) - keys)}")
            for k, a in arrays.items():
                if tuple(a.shape) != self.layout[k]:
                    return f"{k} has shape {tuple(a.shape)}, expected {self.layout[k]}"
                if not np.isfinite(a.numpy()).all():
                    return f"{k} is not finite"
            n = next(iter(content.metric_records.values())).get(self.weighted_by_key)
            if not isinstance(n, (int, float)) or not n > 0 or not math.isfinite(n):
                return f"{self.weighted_by_key}={n!r} is not a positive number"
            return None

        def aggregate_train(self, server_round, replies):
            record = self.rounds[-1]
            accepted, record["replies"], record["failures"] = [], [], []
            for msg in replies:
                node = str(msg.metadata.src_node_id)
                if msg.has_error():
                    record["failures"].append({"node": node, "reason": str(msg.error.reason)})
                    continue
                reason = self._refuse(msg.content)
                arrays = list(msg.content.array_records.values())
                metrics = dict(next(iter(msg.content.metric_records.values()), {}) or {})
                self._learn_partition(msg.metadata.src_node_id, metrics)
                record["replies"].append({
                    "node": node, "partition_id": metrics.get("partition-id"),
                    "num_examples": metrics.get(self.weighted_by_key),
                    "keys": sorted(k for a in arrays for k in a.keys()),
                    "bytes": int(sum(len(x.data) for a in arrays for x in a.values())),
                    "personal_source": metrics.get("personal-source"), "accepted": reason is None,
                    "reason": reason})
                if reason is None:
                    accepted.append((metrics, next(iter(msg.content.array_records.values())), node))
                else:
                    logger.warning("Round %d: refused the reply of node %s: %s", server_round, node, reason)
            record["missing"] = sorted(set(record["sampled"]) - {r["node"] for r in record["replies"]}
                                       - {f["node"] for f in record["failures"]})
            if not accepted:
                record.update(train_loss=None, n_accepted=0, finished=time.time())
                logger.warning("Round %d: no usable reply; the shared parameters stay as they were.", server_round)
                if self.on_round:
                    self.on_round(record, self._current)
                return None, None
            # A fixed order (by partition) makes the average independent of the arrival order.
            accepted.sort(key=lambda item: (item[0].get("partition-id", -1), item[2]))
            stacked = {k: torch.stack([_to_tensors(a)[k] for _, a, _ in accepted]) for k in self.layout}
            uniform = self.settings.weighting == "uniform"
            weights = torch.tensor([1.0 if uniform else float(m[self.weighted_by_key]) for m, _, _ in accepted])
            average = WeightedAverage()
            average.add(stacked, weights)
            new_shared = self.server.step(self._current, average.mean())
            loss_sum = sum(float(m.get("train-loss-sum", 0.0)) for m, _, _ in accepted)
            rows = sum(float(m.get("train-rows", 0.0)) for m, _, _ in accepted)
            record.update(train_loss=loss_sum / rows if rows else None, n_accepted=len(accepted),
                          clients=[m.get("partition-id") for m, _, _ in accepted],
                          bytes_up=int(sum(r["bytes"] for r in record["replies"] if r["accepted"])),
                          finished=time.time())
            if self.on_round:
                self.on_round(record, new_shared)
            metrics = MetricRecord({"train-loss": record["train_loss"] if record["train_loss"] is not None else 0.0,
                                    "nodes": len(accepted)})
            return _to_record(new_shared), metrics

        def configure_evaluate(self, server_round, arrays, config, grid):
            every, last = self.settings.evaluate_every, server_round == self.settings.num_rounds
            if every < 0 or not (last or (every and server_round % every == 0)):
                return []
            nodes = sorted(grid.get_node_ids())
            config = ConfigRecord(dict(config))
            config["server-round"] = int(server_round)
            return self._messages(RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config}), nodes, MessageType.EVALUATE)

        def aggregate_evaluate(self, server_round, replies):
            per_node, failures = [], []
            for msg in replies:
                if msg.has_error():
                    failures.append({"node": str(msg.metadata.src_node_id), "reason": str(msg.error.reason)})
                    continue
                m = dict(next(iter(msg.content.metric_records.values()), {}) or {})
                per_node.append({"node": str(msg.metadata.src_node_id), "partition_id": m.get("partition-id"),
                                 "num_examples": m.get("num-examples"), "accuracy": m.get("accuracy"),
                                 "loss": m.get("loss"), "personal_source": m.get("personal-source")})
            record = next((r for r in self.rounds if r["round"] == server_round), None)
            if record is not None:
                record["evaluation"] = sorted(per_node, key=lambda r: (r["partition_id"] is None, r["partition_id"]))
                record["evaluation_failures"] = failures
                if self.on_round:
                    self.on_round(record, None)
            usable = [r for r in per_node if isinstance(r["num_examples"], (int, float)) and r["num_examples"] > 0]
            if not usable:
                return None
            total = sum(r["num_examples"] for r in usable)
            return MetricRecord({"accuracy": sum(r["accuracy"] * r["num_examples"] for r in usable) / total,
                                 "loss": sum(r["loss"] * r["num_examples"] for r in usable) / total})

    return PersonalizedFedAvg


_STRATEGY = None


def __getattr__(name: str):
    # PersonalizedFedAvg subclasses Flower's FedAvg: build it on first use so that importing this
    # module does not need Flower.
    global _STRATEGY
    if name == "PersonalizedFedAvg":
        if _STRATEGY is None:
            _STRATEGY = _strategy_class()
        return _STRATEGY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _PollingGrid:
    """A Grid whose ``send_and_receive`` checks for replies every ``interval`` seconds (Flower's
    own waits 3 s between checks, which dominates short rounds) and, with ``grace``, stops waiting
    that many seconds after the first reply."""

    def __init__(self, grid, interval: float, grace: float = 0.0):
        self._grid, self._interval, self._grace = grid, interval, grace

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies = []
        while pending and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(pending))
            if got and not replies and self._grace > 0:
                grace_end = time.monotonic() + self._grace
                end = grace_end if end is None else min(end, grace_end)
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(self._interval)
        return replies


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=str).encode()))


def _write_shared(path: Path, shared: Params) -> None:
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in shared.items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def server_main(grid, context, app_dir) -> Path:
    """The ServerApp's main: run :class:`PersonalizedFedAvg` and write the results to ``result-dir``.

    Writes ``shared.npz`` (the shared parameters, after every round), ``rounds.json`` (the
    settings and the record of every round) and a copy of ``model.json``. Returns the folder.
    Needs ``flwr`` and a running federation, so it has no standalone example.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The federation's grid.
    context : flwr.app.Context
        The ServerApp's context (the run config).
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    Path
        The ``result-dir``; read it with :func:`load_result`.
    """
    # Import Flower first, so that a missing install fails before the result folder is written.
    importlib.import_module("flwr.app")

    settings = RunSettings.from_config(context.run_config)
    model_path = Path(app_dir) / MODEL_FILE
    spec = read_model(model_path)
    out = Path(settings.result_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MODEL_FILE, json.loads(model_path.read_text()))
    summary = {"run_id": int(context.run_id), "settings": asdict(settings), "flwr": _flwr_version(),
               "started": time.time(), "rounds": []}

    def on_round(record, shared):
        if shared is not None:
            _write_shared(out / "shared.npz", shared)
            if settings.keep_rounds:
                _write_shared(out / f"shared-round-{record['round']}.npz", shared)
        summary["rounds"] = strategy.rounds
        _write_json(out / "rounds.json", summary)

    strategy = __getattr__("PersonalizedFedAvg")(spec.shared, settings, on_round=on_round)
    _write_shared(out / "shared.npz", spec.shared)
    if settings.poll_interval > 0 or settings.straggler_wait > 0:
        run_grid = _PollingGrid(grid, settings.poll_interval or 3.0, settings.straggler_wait)
    else:
        run_grid = grid
    logger.info("pfedest: writing results to %s", out)
    strategy.start(grid=run_grid, initial_arrays=_to_record(spec.shared), num_rounds=settings.num_rounds,
                   timeout=settings.round_timeout)
    summary.update(rounds=strategy.rounds, finished=time.time())
    _write_json(out / "rounds.json", summary)
    return out


def server_app(app_dir):
    """The Flower ``ServerApp`` of the app in ``app_dir`` (the folder holding ``model.json``).

    Needs ``flwr``; :func:`export_app` writes an app that calls it.

    Parameters
    ----------
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    flwr.serverapp.ServerApp

    Examples
    --------
    Building the app needs ``flwr`` (``pip install "pfedest[flower]"``) but no federation:

    >>> import pytest
    >>> flwr = pytest.importorskip("flwr")
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> app_dir = Path(tempfile.mkdtemp())
    >>> _ = write_model(PartialPersonalizedClassifier(hidden_layer_sizes=(4,)), app_dir / "model.json",
    ...                 classes=[0, 1], n_features=3)
    >>> type(server_app(app_dir)).__name__
    'ServerApp'
    """
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(lambda grid, context: server_main(grid, context, app_dir))
    return app


def _flwr_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("flwr")
    except Exception:
        return None


# ------------------------------------------------------------------------------- export and load
_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = {name}
version = "1.0.0"
description = "FedAlt/FedSim with partial personalization (pfedest) on Flower"
license = "MIT"
dependencies = [{flwr}, "pfedest"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "pfedest"
# Ship only the app's package, whatever else (results, node state) lands in this folder.
fab-include = ["{package}/*.py", "{package}/model.json"]

[tool.flwr.app.components]
serverapp = "{package}.server_app:app"
clientapp = "{package}.client_app:app"

[tool.flwr.app.config]
{config}
"""

_SERVER_MODULE = '''"""The ServerApp: pfedest.flower.PersonalizedFedAvg over the shared parameters."""

from pathlib import Path

from pfedest.flower import server_app

app = server_app(Path(__file__).parent)
'''

_CLIENT_MODULE = '''"""The ClientApp: FedAlt/FedSim local updates; personal parameters stay on this node."""

from pathlib import Path

from pfedest.flower import client_app

app = client_app(Path(__file__).parent)
'''


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return json.dumps(str(value))


def run_config_for(estimator, **overrides) -> dict:
    """The run config (``[tool.flwr.app.config]``) that trains like ``estimator``'s settings.

    Parameters
    ----------
    estimator : PartialPersonalizedClassifier
        Its training settings (rounds, algorithm, learning rates, steps, schedule, clipping,
        ``personal_l2``, server optimizer, ...) are read. A ``lr_schedule`` that is not one of
        :mod:`pfedest.core.schedules`' own gives ``lr-schedule = "constant"`` (:func:`write_model` warns).
    **overrides
        Run-config values to set instead (``-`` or ``_`` in the keys).

    Returns
    -------
    dict
        Run-config key to value; checked by :meth:`RunSettings.from_config`.

    Examples
    --------
    >>> from pfedest import PartialPersonalizedClassifier
    >>> cfg = run_config_for(PartialPersonalizedClassifier(algorithm="fedsim", n_rounds=7))
    >>> cfg["algorithm"], cfg["num-rounds"], cfg["personal-steps"]
    ('fedsim', 7, -1)
    >>> from pfedest.core.schedules import StepLR
    >>> cfg = run_config_for(PartialPersonalizedClassifier(lr_schedule=StepLR(step_rounds=3), clip_grad_norm=1.0))
    >>> cfg["lr-schedule"], cfg["lr-step-rounds"], cfg["clip-grad-norm"]
    ('step', 3, 1.0)
    """
    p = estimator.get_params(deep=False)
    seed = p.get("random_state")
    defaults = RunSettings()
    schedule = {f"lr-{name}".replace("_", "-"): getattr(defaults, f"lr_{name}")
                for cls in SCHEDULES.values() for name in cls().get_params()}
    schedule.update(_schedule_config(p["lr_schedule"]) or {"lr-schedule": "constant"})
    config = {
        "num-rounds": int(p["n_rounds"]), "algorithm": p["algorithm"], "lr": float(p["lr"]),
        "personal-lr": float(p["personal_lr"] or 0.0), "batch-size": int(p["batch_size"]),
        "personal-steps": -1 if p["personal_steps"] is None else int(p["personal_steps"]),
        "shared-steps": -1 if p["shared_steps"] is None else int(p["shared_steps"]),
        "server-lr": float(p["server_lr"]), "server-optimizer": p["server_optimizer"],
        "server-momentum": float(p["server_momentum"]),
        "clip-grad-norm": 0.0 if p["clip_grad_norm"] is None else float(p["clip_grad_norm"]),
        "personal-l2": float(p["personal_l2"]), "personal-l2-target": p["personal_l2_target"], **schedule,
        "weighting": p["weighting"], "clients-per-round": p["clients_per_round"],
        "min-nodes": 2, "node-wait": 300.0, "round-timeout": 600.0, "straggler-wait": 0.0, "evaluate-every": 0,
        "poll-interval": 0.0, "seed": int(seed) if isinstance(seed, (int, np.integer)) else 0,
        "keep-rounds": False, "result-dir": "pfedest-result",
    }
    for key, value in overrides.items():
        key = key.replace("_", "-")
        if key not in config:
            raise ValueError(f"Unknown run config key {key!r}; known: {sorted(config)}.")
        config[key] = value
    RunSettings.from_config(config)  # check
    return config


def export_app(estimator, directory, *, classes=None, n_features=None, name: str = "pfedest-app",
               overwrite: bool = False, **run_config) -> Path:
    """Write a runnable Flower app that trains ``estimator``'s model on a Flower federation.

    The folder gets ``pyproject.toml`` (the run config: :func:`run_config_for` of the estimator,
    with ``run_config`` overrides such as ``num_rounds=5`` or ``result_dir="/abs/path"``) and a
    package with ``server_app.py``, ``client_app.py`` (thin wrappers around this module) and
    ``model.json`` (:func:`write_model`). Run it with ``flwr run <directory> <connection>``; load
    the outcome with :func:`load_result`.

    Parameters
    ----------
    estimator : PartialPersonalizedClassifier
        Fitted or configured.
    directory : str or Path
        Created if missing; must be empty unless ``overwrite``.
    classes, n_features :
        Required for an unfitted estimator (see :func:`write_model`).
    name : str, default="pfedest-app"
        The app's name (letters, digits, ``-`` and ``_``).
    overwrite : bool, default=False
    **run_config
        Run-config overrides (``-`` or ``_`` in the keys).

    Returns
    -------
    directory : Path

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pfedest import PartialPersonalizedClassifier
    >>> app = export_app(PartialPersonalizedClassifier(hidden_layer_sizes=(4,)),
    ...                  Path(tempfile.mkdtemp()) / "app", classes=[0, 1], n_features=3, num_rounds=3)
    >>> sorted(p.name for p in (app / "pfedest_app").iterdir())
    ['__init__.py', 'client_app.py', 'model.json', 'server_app.py']
    >>> "num-rounds = 3" in (app / "pyproject.toml").read_text()
    True
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"name={name!r}: use letters, digits, '-' and '_', starting with a letter.")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True to replace the app in it.")
    config = run_config_for(estimator, **run_config)
    package = name.replace("-", "_").lower()
    (directory / package).mkdir(parents=True, exist_ok=True)
    write_model(estimator, directory / package / MODEL_FILE, classes=classes, n_features=n_features)
    (directory / package / "__init__.py").write_text('"""A Flower app made by pfedest.flower.export_app."""\n')
    (directory / package / "server_app.py").write_text(_SERVER_MODULE)
    (directory / package / "client_app.py").write_text(_CLIENT_MODULE)
    lines = "\n".join(f"{k} = {_toml_value(v)}" for k, v in config.items())
    (directory / "pyproject.toml").write_text(_PYPROJECT.format(
        name=json.dumps(name), package=package, config=lines, flwr=json.dumps(FLWR_REQUIREMENT)))
    return directory


def load_result(result_dir, state_dirs: Iterable = ()):
    """A fitted estimator from a Flower run: the server's shared parameters and the nodes' personal ones.

    Parameters
    ----------
    result_dir : str or Path
        The run's ``result-dir`` (``shared.npz``, ``rounds.json``, ``model.json``).
    state_dirs : iterable of str or Path
        The ``state-dir`` of each node whose clients should be predictable (on one node: its own).

    Returns
    -------
    estimator : PartialPersonalizedClassifier
        ``clients_`` are the nodes' partition ids; ``predict(X, client_ids=...)`` answers each row
        with its node's personal model. ``history_`` holds the server's record of each round.

    Notes
    -----
    The estimator is made by fitting the stored configuration for one round on one row per class
    (so that every fitted attribute exists and is consistent, through the public ``fit``), then
    its ``shared_params_``, ``personal_params_`` and ``clients_`` are replaced by the run's.

    Examples
    --------
    A stand-in result folder of a FedAvg run (``split="none"``: no personal part, so no node
    state is needed), holding what the ServerApp writes:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pfedest import PartialPersonalizedClassifier
    >>> result_dir = Path(tempfile.mkdtemp())
    >>> est = PartialPersonalizedClassifier(split="none", hidden_layer_sizes=(4,), random_state=0)
    >>> spec = read_model(write_model(est, result_dir / "model.json", classes=[0, 1], n_features=3))
    >>> np.savez(result_dir / "shared.npz", **{k: v.numpy() for k, v in spec.shared.items()})
    >>> loaded = load_result(result_dir)
    >>> loaded.classes_.tolist(), loaded.clients_.tolist()
    ([0, 1], [])
    """
    from ..history import History

    result_dir = Path(result_dir)
    spec = read_model(result_dir / MODEL_FILE)
    with np.load(result_dir / "shared.npz", allow_pickle=False) as data:
        shared = {k: torch.from_numpy(data[k].copy()) for k in data.files}
    _check_layout(f"The shared parameters in {result_dir / 'shared.npz'}", shared, spec.shared)
    nodes = {}
    for state_dir in state_dirs:
        path = Path(state_dir) / f"pfedest-{spec.app_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"No personal parameters of this app ({spec.app_id}) in {state_dir}: "
                                    f"expected {path.name}.")
        with np.load(path, allow_pickle=False) as data:
            pid = json.loads(str(data["__meta__"]))["partition_id"]
        if pid in nodes:
            raise ValueError(f"Two state dirs hold partition {pid}: {nodes[pid][0]} and {state_dir}.")
        personal = NodeStore(state_dir, spec.app_id, pid).read()
        _check_layout(f"The personal parameters in {path}", personal, spec.personal)
        nodes[pid] = (state_dir, personal)
    if not nodes and spec.personal:
        raise ValueError("load_result needs the state_dirs of the nodes whose clients it should predict.")
    import copy

    template = spec.template()
    est = copy.deepcopy(template)
    pids = sorted(nodes)
    est.shared_params_ = {k: shared[k].clone() for k in template.shared_params_}
    est.personal_params_ = {k: torch.stack([nodes[p][1][k] for p in pids]) for k in template.personal_params_}
    est.clients_ = np.array(pids)
    settings = {}
    rounds_file = result_dir / "rounds.json"
    history = History()
    if rounds_file.is_file():
        summary = json.loads(rounds_file.read_text())
        settings = summary.get("settings", {})
        for r in summary.get("rounds", []):
            history.append({"round": r["round"], "stage": "flower", "train_loss": r.get("train_loss"),
                            "n_clients": r.get("n_accepted", 0), "clients": r.get("clients", []),
                            "bytes_up": r.get("bytes_up", 0),
                            "wall_time": (r.get("finished") or r["started"]) - r["started"]})
    est.history_ = history
    params = spec.estimator_params()
    if settings:
        params.update(n_rounds=settings["num_rounds"], algorithm=settings["algorithm"], lr=settings["lr"],
                      personal_lr=settings["personal_lr"] or None, batch_size=settings["batch_size"],
                      personal_steps=None if settings["personal_steps"] == -1 else settings["personal_steps"],
                      shared_steps=None if settings["shared_steps"] == -1 else settings["shared_steps"],
                      server_lr=settings["server_lr"], clients_per_round=settings["clients_per_round"])
        if "lr_schedule" in settings:  # written by releases that carry these settings out
            run = RunSettings(**{f.name: settings[f.name] for f in fields(RunSettings) if f.name in settings})
            schedule = run.schedule()
            params.update(server_optimizer=run.server_optimizer, server_momentum=run.server_momentum,
                          clip_grad_norm=run.clip_grad_norm or None, personal_l2=run.personal_l2,
                          personal_l2_target=run.personal_l2_target,
                          lr_schedule=run.lr_schedule if schedule.get_params() == type(schedule)().get_params()
                          else schedule)
    accepted = set(est.get_params(deep=False))
    est.set_params(**{k: v for k, v in params.items() if k in accepted})
    return est
