"""A fit's progress in one object, and what a saved state must match before a fit continues from it.

:class:`FitState` owns what the estimator's parameters do not say: the plan of stages and the
rounds each has run, the seed that keys every draw, the server optimizers' state, the anchor of
``personal_l2_target="init"``, and a stop requested by a callback. The estimator keeps one (created
by ``initialize``, kept by ``warm_start``); the fit loop (:mod:`pfedest.training`) advances it.

:func:`estimator_state` and :func:`load_estimator_state` are the estimator's ``state_dict`` and
``load_state_dict``: the parameters, the history, the fit state and the callbacks' state as
tensors and JSON, refused with the reason when they belong to another run (model, data, plan,
settings, callbacks, pfedest version).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state

from . import __version__
from .callbacks.base import keeps_state
from .checkpoint import CheckpointError, OtherFitCheckpoint
from .core.devices import to_device
from .core.schedules import make_schedule
from .core.server import ServerOptimizer, make_server_optimizer
from .core.stopping import Plateau
from .core.types import Params
from .history import History
from .nn.splits import make_split
from .settings import HEAD_SETTINGS, RESUME_CHECKED, defaults, head_resume_checked

__all__ = ["ClientData", "FitState", "estimator_state", "load_estimator_state", "describe_setting",
           "training_settings", "stages_left", "seeds"]


@dataclass
class ClientData:
    """A fit's rows on the device, sorted by client, with each client's row count and offset.

    Parameters
    ----------
    X, y : Tensor
        Rows and targets (label codes, or the regressor's scaled values), sorted by client.
    counts, offsets : ndarray of int
        Rows of each client (over all the model's clients) and each one's first row.

    Examples
    --------
    >>> data = ClientData.from_rows(np.zeros((3, 2)), np.array([1, 0, 1]), np.array([1, 0, 1]), 2, "cpu")
    >>> data.counts.tolist(), data.offsets.tolist(), data.y.tolist()
    ([1, 2], [0, 1], [0, 1, 1])
    """

    X: torch.Tensor
    y: torch.Tensor
    counts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_rows(cls, X: np.ndarray, codes: np.ndarray, rows: np.ndarray, n_clients: int, device,
                  dtype: torch.dtype = torch.float32) -> "ClientData":
        """``X`` (as ``dtype``) and targets ``codes`` sorted by ``rows`` (each row's client index), on ``device``.

        Integer codes (class indices) become int64; float targets (a regressor's) take ``dtype``."""
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=n_clients)
        codes = np.asarray(codes)
        return cls(X=torch.as_tensor(np.ascontiguousarray(X[order]), dtype=dtype, device=device),
                   y=torch.as_tensor(codes[order], dtype=dtype if codes.dtype.kind == "f" else torch.int64,
                                     device=device),
                   counts=counts, offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]))

    def row_clients(self) -> np.ndarray:
        """The client index of each row."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def holdout(self, fraction: float, seed: int) -> tuple["ClientData", "ClientData"]:
        """``(train, valid)``: ``fraction`` of each client's rows held out, spread over its classes.

        Each client's rows are ordered by label (ties at random, keyed by ``seed``) and every
        ``1/fraction``-th of them is held out, so each client keeps its share of every label it
        has (stratified where it has enough rows). A client with fewer than ``1/fraction`` rows
        holds none out: all its rows train.

        Examples
        --------
        >>> data = ClientData.from_rows(np.zeros((12, 1)), np.array([0, 1] * 6), np.array([0] * 10 + [1] * 2), 2, "cpu")
        >>> train, valid = data.holdout(0.2, seed=0)
        >>> train.counts.tolist(), valid.counts.tolist(), sorted(valid.y.tolist())
        ([8, 2], [2, 0], [0, 1])
        """
        rng = np.random.default_rng([seed, 0])  # round 0: no round of training draws with it
        clients = self.row_clients()
        labels = self.strata()
        order = np.lexsort((rng.random(len(labels)), labels, clients))
        position = np.arange(len(order)) - np.repeat(self.offsets, self.counts)
        held = np.zeros(len(order), dtype=bool)
        held[order] = np.floor((position + 1) * fraction) > np.floor(position * fraction)
        return self.split(held)

    def strata(self) -> np.ndarray:
        """What held-out rows are spread over: each row's label, or (several targets of a
        multi-output regression) its first target."""
        return self.y.cpu().numpy().reshape(len(self.y), -1)[:, 0]

    def split(self, held: np.ndarray) -> tuple["ClientData", "ClientData"]:
        """``(rest, held)``: the rows not marked in the boolean ``held`` and those marked, each still
        sorted by client."""
        clients = self.row_clients()
        parts = []
        for keep in (~held, held):
            index = torch.as_tensor(np.flatnonzero(keep), device=self.X.device)
            counts = np.bincount(clients[keep], minlength=len(self.counts))
            parts.append(ClientData(X=self.X[index], y=self.y[index], counts=counts,
                                    offsets=np.concatenate([[0], np.cumsum(counts)[:-1]])))
        return parts[0], parts[1]

    def signature(self) -> dict:
        """Each client's row count and a SHA-256 digest of the rows and labels.

        A resumed fit must see the data the saved state was trained on: the same clients with
        other rows would continue a different run.
        """
        digest = hashlib.sha256()
        for tensor in (self.X, self.y):
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        return {"counts": np.asarray(self.counts).tolist(), "sha256": digest.hexdigest()}


class FitState:
    """The progress of an estimator's training: plan, rounds done, seed, server state, stop requests.

    Parameters
    ----------
    seed : int
        Keys every draw of the rounds (:class:`~pfedest.core.sampling.RoundKeys`) with the round number.
    personal_init : dict of str to Tensor
        The personal part at the start of personalization: the anchor of ``personal_l2_target="init"``.

    Attributes
    ----------
    plan : list of [stage, rounds]
        The stages of the current (or last) ``fit``.
    progress : list of int
        Rounds done in each stage of ``plan``.
    servers : dict of str to ServerOptimizer
        The server optimizer of each stage that averages (its momentum or Adam moments).
    stop_requested : bool
        A callback asked to end the current stage after this round.
    stop_reason : str or None
        Why the last stage that stopped early stopped.
    data : ClientData or None
        The rows of the fit in progress (``None`` between fits).
    valid : ClientData or None
        Rows held out of each client to monitor (``early_stopping=True``).
    plateau : Plateau or None
        The stopping rule of the training stage (``tol``, ``n_iter_no_change``) once it has begun.
    best : dict or None
        With ``early_stopping``, the ``shared`` and ``personal`` parameters of the best round so far.
    converged : bool
        The stopping rule ended the training stage.

    Examples
    --------
    >>> state = FitState(seed=3, personal_init={})
    >>> state.start([["train", 5]], data=None)
    >>> state.progress[0] += 2
    >>> state.request_stop("enough")
    >>> restored = FitState(seed=0, personal_init={})
    >>> restored.load_state_dict(state.state_dict())
    >>> restored.seed, restored.progress, restored.stop_reason
    (3, [5], 'enough')
    """

    def __init__(self, seed: int, personal_init: Params):
        self.seed = int(seed)
        self.personal_init = personal_init
        self.plan: list = []
        self.progress: list = []
        self.start_round = 0
        self.servers: dict = {}
        self.stop_requested = False
        self.stop_reason: Optional[str] = None
        self.data: Optional[ClientData] = None
        self.valid: Optional[ClientData] = None
        self.plateau: Optional[Plateau] = None
        self.best: Optional[dict] = None
        self.converged = False
        self._data_signature: Optional[dict] = None

    def start(self, plan: list, data: Optional[ClientData], valid: Optional[ClientData] = None,
              start_round: int = 0) -> None:
        """Begin a fit of ``plan`` on ``data`` (``valid``: rows held out to monitor) after ``start_round``
        rounds of earlier fits (``warm_start``): no round of it done."""
        self.plan, self.progress = [list(p) for p in plan], [0] * len(plan)
        self.start_round = int(start_round)
        self.stop_requested, self.stop_reason = False, None
        self.data, self.valid, self._data_signature = data, valid, None
        self.plateau, self.best, self.converged = None, None, False

    def finish(self) -> None:
        """End the fit: drop its rows and the best-round copy (a fitted model holds neither)."""
        self.data, self.valid, self._data_signature, self.best = None, None, None, None

    def request_stop(self, reason: str) -> None:
        """End the current stage after this round."""
        self.stop_requested, self.stop_reason = True, reason

    def data_signature(self) -> Optional[dict]:
        """:meth:`ClientData.signature` of the fit in progress (computed once), ``None`` between fits."""
        if self.data is not None and self._data_signature is None:
            self._data_signature = self.data.signature()
        return self._data_signature

    def server(self, stage: str, make) -> ServerOptimizer:
        """The server optimizer of ``stage`` with the settings of ``make()``, keeping its state (momentum,
        moments) from earlier rounds unless its kind changed: a warm start with another ``server_lr``
        steps with it."""
        fresh = make()
        current = self.servers.get(stage)
        if current is None or current.kind != fresh.kind:
            self.servers[stage] = fresh
        else:
            current.set_params(**fresh.get_params())
        return self.servers[stage]

    def to(self, device) -> "FitState":
        """A copy with the tensors (anchor, server state) on ``device``, without the rows of a fit."""
        moved = copy.copy(self)
        moved.personal_init = to_device(self.personal_init, device)
        moved.servers = {}
        for stage, opt in self.servers.items():
            moved.servers[stage] = clone(opt)
            moved.servers[stage].load_state_dict(to_device(opt.state_dict(), device))
        moved.data, moved.valid, moved._data_signature = None, None, None
        moved.best = None if self.best is None else {k: to_device(v, device) for k, v in self.best.items()}
        return moved

    def state_dict(self) -> dict:
        """JSON-able progress under ``"meta"``; tensors under ``"personal_init"`` and ``"server"``."""
        cpu = torch.device("cpu")
        return {
            "meta": {"plan": self.plan, "progress": self.progress, "seed": self.seed, "start_round": self.start_round,
                     "stop_requested": self.stop_requested, "stop_reason": self.stop_reason,
                     "data": self.data_signature(), "converged": self.converged,
                     "plateau": None if self.plateau is None else {
                         "rule": [self.plateau.mode, self.plateau.patience, self.plateau.min_delta],
                         **self.plateau.state_dict()}},
            "personal_init": to_device(self.personal_init, cpu),
            "server": {stage: to_device(opt.state_dict(), cpu) for stage, opt in self.servers.items()},
            "best": {} if self.best is None else {k: to_device(v, cpu) for k, v in self.best.items()},
        }

    def load_state_dict(self, state: dict, make_server=None, device=None) -> None:
        """Continue from :meth:`state_dict`: every stage that had ended stays ended (:func:`stages_left`)."""
        meta = state["meta"]
        self.seed = int(meta["seed"])
        self.start_round = int(meta["start_round"])
        self.plan = [list(p) for p in meta["plan"]]
        self.progress = stages_left(meta["plan"], meta["progress"], meta["stop_requested"])
        self.stop_reason = meta["stop_reason"]
        self.converged = bool(meta["converged"])
        self.plateau = None
        if meta["plateau"] is not None:
            self.plateau = Plateau(*meta["plateau"]["rule"])
            self.plateau.load_state_dict(meta["plateau"])
        self.best = {k: to_device(v, device or "cpu") for k, v in state["best"].items()} or None
        self.personal_init = to_device(state["personal_init"], device or "cpu")
        self.servers = {}
        for stage, opt_state in state["server"].items():
            opt = (make_server or ServerOptimizer)()
            opt.load_state_dict(to_device(opt_state, device or "cpu"))
            self.servers[stage] = opt


def seeds(random_state) -> tuple[int, int]:
    """The seed of a fit's initial weights, and the seed that keys every draw of its rounds.

    An int ``random_state`` is itself the draws' seed, so that it equals the Flower app's ``seed``;
    otherwise both are the one number drawn from it.

    Examples
    --------
    >>> seeds(7)[1], seeds(np.random.RandomState(0))[0] == seeds(np.random.RandomState(0))[1]
    (7, True)
    """
    drawn = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    if isinstance(random_state, Integral) and not isinstance(random_state, (bool, np.bool_)):
        return drawn, int(random_state)
    return drawn, drawn


def stages_left(plan, progress, stop_requested: bool) -> list:
    """``progress`` with every stage that has ended marked done, so that the plan goes on from there.

    A stage ends after its rounds or when a callback stops it early; a stage stopped early keeps
    fewer rounds in ``progress`` than the plan has, and would otherwise run on when resumed. The
    stages before the last one begun have ended; that one has if a stop was requested in it.

    Examples
    --------
    >>> plan = [["train", 10], ["finetune", 2]]
    >>> stages_left(plan, [4, 0], stop_requested=True)
    [10, 0]
    >>> stages_left(plan, [4, 1], stop_requested=False)
    [10, 1]
    >>> stages_left(plan, [4, 0], stop_requested=False)
    [4, 0]
    """
    progress = list(progress)
    begun = [i for i, done in enumerate(progress) if done > 0]
    if not begun:
        return progress
    current = begun[-1]
    for i in range(current + int(bool(stop_requested))):
        progress[i] = max(progress[i], plan[i][1])
    return progress


# ------------------------------------------------------------------------------ settings
def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def describe_setting(value):
    """A JSON-able description of a parameter value that is the same in every process.

    Numbers, strings and lists stand for themselves (an int and a float stay apart:
    ``clients_per_round=1`` is one client, ``1.0`` all of them); a scikit-learn style object (a
    split, a schedule, a server optimizer) is its class and parameters. A module instance is only
    its class: its repr prints whatever a custom ``extra_repr`` chooses, its shapes are checked by
    the signature and its weights are the saved state's. A function, class or lambda is its module
    and qualified name (a lambda's code is not comparable); any other object only its type's name
    (its repr may hold an address).

    Examples
    --------
    >>> from pfedest.core.schedules import StepLR
    >>> describe_setting(StepLR(step_rounds=5)), describe_setting((64, 64)), describe_setting(1.0)
    ('StepLR(gamma=0.5, step_rounds=5)', [64, 64], 1.0)
    >>> describe_setting(torch.nn.Linear(2, 3)), describe_setting(lambda r, n: 1.0)
    ('torch.nn.modules.linear.Linear instance', 'pfedest.fit_state.<lambda>')
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [describe_setting(v) for v in value]
    if isinstance(value, torch.nn.Module):
        return f"{_qualified_name(type(value))} instance"
    if isinstance(value, BaseEstimator):
        params = value.get_params(deep=False)
        return f"{type(value).__name__}({', '.join(f'{k}={describe_setting(v)!r}' for k, v in params.items())})"
    if callable(value) and hasattr(value, "__qualname__"):
        return _qualified_name(value)
    return type(value).__name__


def _qualified_name(obj) -> str:
    module = getattr(obj, "__module__", None)
    return f"{module}.{obj.__qualname__}" if module else obj.__qualname__


def training_settings(params: dict) -> dict:
    """The described :data:`~pfedest.settings.RESUME_CHECKED` settings among an estimator's ``params``.

    The split, the schedule and the server optimizer are described as the fit resolves them:
    ``split="head"`` and ``split=HeadSplit()`` train alike, so they are described alike.
    """
    params = dict(params)
    params["split"] = make_split(params["split"])
    params["lr_schedule"] = make_schedule(params["lr_schedule"])
    # "adam" with server_lr=0.01 and ServerOptimizer("adam", lr=0.01) step alike: described alike
    params["server_optimizer"] = make_server_optimizer(params["server_optimizer"], params["server_lr"],
                                                       params["server_momentum"])
    params["server_lr"] = params["server_momentum"] = None
    if params["module"] is not None:
        params["hidden_layer_sizes"] = None  # unused: the module gives the network
    checked = RESUME_CHECKED + head_resume_checked(params)
    return json.loads(json.dumps({name: describe_setting(params[name]) for name in checked},
                                 default=_json_default))


def _check_settings(saved: dict, now: dict) -> None:
    # a setting added to pfedest after the checkpoint was written: that fit trained with its default
    known = {name: value for head in HEAD_SETTINGS for name, value in defaults(head).items()}
    saved = {**{name: describe_setting(known[name]) for name in now if name not in saved and name in known}, **saved}
    # compared as JSON text, so that 1 and 1.0 (one client, all clients) differ
    changed = [name for name in sorted(set(saved) | set(now))
               if json.dumps(saved.get(name)) != json.dumps(now.get(name))]
    if changed:
        details = "; ".join(f"{name}={saved.get(name)!r} in the checkpoint, {now.get(name)!r} in this fit"
                            for name in changed)
        raise CheckpointError(f"The checkpoint was written by a fit with other settings: {details}. Resume with "
                              "the checkpoint's settings, or start afresh (Checkpoint(resume=False) or another "
                              "directory).")


def _check_data(saved: Optional[dict], now: Optional[dict], clients: list) -> None:
    if saved is None or now is None or saved == now:
        return  # a state saved (or loaded) outside a fit has no data to compare
    changed = [str(client) for client, a, b in zip(clients, saved["counts"], now["counts"]) if a != b]
    what = (f"other row counts for clients {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}"
            if changed else "the same row counts but other values")
    raise CheckpointError(f"The checkpoint was written for other training data ({what}). Resume on the data "
                          "it was trained on, or start afresh (Checkpoint(resume=False) or another directory).")


# ----------------------------------------------------------------------------- callbacks
def callback_states(callbacks) -> list:
    """Each callback's class name and ``state_dict()`` (``None`` if it keeps none), in run order."""
    return [{"class": type(cb).__name__, "state": cb.state_dict() if keeps_state(cb) else None}
            for cb in callbacks]


def _by_class_rank(entries) -> dict:
    """``{(class name, k): (position, state)}`` for the k-th callback of each class that keeps state.

    Keyed by class and rank within the class, not by position alone, so that adding or removing a
    stateless callback (a logger) between runs does not shift the others.
    """
    seen, out = {}, {}
    for position, (name, state) in enumerate(entries):
        rank = seen[name] = seen.get(name, -1) + 1
        if state is not None:
            out[name, rank] = (position, state)
    return out


def _check_callbacks(callbacks, saved) -> list:
    """The (callback, state) pairs to load, or refuse if the callbacks with state differ."""
    then = _by_class_rank([(entry["class"], entry["state"]) for entry in saved])
    now = _by_class_rank([(type(cb).__name__, {} if keeps_state(cb) else None) for cb in callbacks])
    if then.keys() != now.keys():
        def describe(keys):
            return ", ".join(f"{name} #{rank + 1}" for name, rank in sorted(keys)) or "none"

        raise CheckpointError(
            f"The checkpoint holds the state of callbacks {describe(then)}; this fit's callbacks with state "
            f"are {describe(now)}. Resume with the same callbacks, or start afresh (Checkpoint(resume=False) "
            "or another directory).")
    return [(callbacks[position], then[key][1], key) for key, (position, _) in now.items()]


# ----------------------------------------------------------------------- estimator state
def _signature(shared: Params, personal: Params) -> dict:
    shapes = {k: list(v.shape) for k, v in shared.items()}
    shapes.update({k: ["clients", *v.shape[1:]] for k, v in personal.items()})
    return shapes


def _targets(est):
    """What the model's outputs mean: a classifier's ``classes_``, or a regressor's outputs and target scaling
    (a state trained on targets scaled otherwise answers in other units)."""
    if hasattr(est, "classes_"):
        return est.classes_.tolist()
    return {"n_outputs": int(est.n_outputs_), "mean": np.asarray(est.y_mean_).tolist(),
            "scale": np.asarray(est.y_scale_).tolist()}


def estimator_state(est, fit: FitState) -> dict:
    """Everything needed to continue ``est``'s training: tensors, and JSON for the rest.

    The estimator's ``state_dict()``: its public fitted attributes, ``fit`` and the live callbacks'
    state. Loadable with ``torch.load(..., weights_only=True)``.
    """
    fit_part = fit.state_dict()
    meta = {
        "pfedest_version": __version__,
        "signature": _signature(est.shared_params_, est.personal_params_),
        "classes": _targets(est),
        "clients": est.clients_.tolist(),
        "history": list(est.history_),
        "settings": training_settings(est.get_params(deep=False)),
        "callbacks": callback_states(getattr(est, "callbacks_", [])),
        "fit": fit_part["meta"],
    }
    try:
        meta_json = json.dumps(meta, default=_json_default)
    except TypeError as exc:
        raise TypeError(f"A callback's state_dict() is not JSON-able ({exc}); return numbers, strings, "
                        f"lists and dicts.") from exc
    cpu = torch.device("cpu")
    return {"meta": meta_json, "shared": to_device(est.shared_params_, cpu),
            "personal": to_device(est.personal_params_, cpu),
            "personal_init": fit_part["personal_init"], "server": fit_part["server"], "best": fit_part["best"]}


#: What a state must hold: its tensors, its metadata, and the fit's part of the metadata.
_TENSORS = ("shared", "personal", "personal_init", "server", "best")
_META = ("pfedest_version", "signature", "classes", "clients", "history", "settings", "callbacks", "fit")
_FIT_META = ("plan", "progress", "seed", "start_round", "stop_requested", "stop_reason", "data", "converged", "plateau")


def _read_meta(state) -> dict:
    """The state's metadata, or a :class:`CheckpointError` that names what is missing or unreadable."""
    if not isinstance(state, dict) or "meta" not in state:
        raise CheckpointError("The state has no metadata: it is not a pfedest state_dict().")
    try:
        meta = json.loads(state["meta"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"The state's metadata is not readable JSON ({exc}).") from exc
    missing = [k for k in _TENSORS if k not in state] + [k for k in _META if k not in meta]
    missing += [f"fit.{k}" for k in _FIT_META if k not in meta.get("fit", {})]
    if missing:
        raise CheckpointError(f"The state lacks {', '.join(missing)}: it was not written by this version of "
                              "pfedest's state_dict(), or it was damaged.")
    return meta


def load_estimator_state(est, fit: FitState, state: dict, make_server) -> tuple[Params, Params, History]:
    """Check ``state`` (an :func:`estimator_state`) against ``est``; load ``fit`` and the callbacks from it.

    Refuses, with a :class:`~pfedest.checkpoint.CheckpointError` naming the difference, a state
    of another pfedest version, model, classes or clients, plan (within a fit), training data,
    settings or callbacks with state; nothing changes then. Otherwise ``fit`` and the callbacks
    continue from the saved state, and the saved shared and personal parameters (on ``est``'s
    device) and history are returned for the estimator to take.
    """
    meta = _read_meta(state)
    version = meta["pfedest_version"]
    if version != __version__:
        raise CheckpointError(f"The checkpoint was written by pfedest {version}; this is pfedest {__version__}. "
                              "Resume with the version that wrote it.")
    now = _signature(est.shared_params_, est.personal_params_)
    if meta["signature"] != now or _signature(state["shared"], state["personal"]) != now:
        raise CheckpointError(f"The checkpoint is for a model with parameters {meta['signature']}, not {now}.")
    if any(v.shape[0] != len(est.clients_) for v in state["personal"].values()):
        raise CheckpointError(f"The checkpoint's personal parameters are not stacked over this model's "
                              f"{len(est.clients_)} clients.")
    if meta["classes"] != _targets(est) or meta["clients"] != est.clients_.tolist():
        raise CheckpointError("The checkpoint was written for other classes (or target scaling) or clients than "
                              "this model's.")
    fit_meta = meta["fit"]
    if fit.data is not None and fit_meta["start_round"] != fit.start_round:
        raise OtherFitCheckpoint(
            f"The checkpoint belongs to a fit that began after round {fit_meta['start_round']} of this model's "
            f"history; this fit begins after round {fit.start_round} (a warm start continues from the model, not "
            "from the checkpoints of an earlier fit).")
    if fit.data is not None and fit_meta["plan"] != fit.plan:
        raise CheckpointError(f"The checkpoint belongs to the training plan {fit_meta['plan']}, this fit's is "
                              f"{fit.plan} (pretrain_rounds, n_rounds or finetune_epochs changed).")
    _check_data(fit_meta["data"], fit.data_signature(), est.clients_.tolist())
    _check_settings(meta["settings"], training_settings(est.get_params(deep=False)))
    to_load = _check_callbacks(list(getattr(est, "callbacks_", [])), meta["callbacks"])
    for callback, saved, (name, rank) in to_load:  # before anything changes: a callback may refuse
        try:
            callback.load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"The checkpoint's state for callback {name} #{rank + 1} does not fit "
                                  f"this fit's: {exc}") from exc
    device = est.device_
    data = fit.data
    valid = fit.valid
    fit.load_state_dict({"meta": fit_meta, "personal_init": state["personal_init"], "server": state["server"],
                         "best": state["best"]}, make_server=make_server, device=device)
    fit.data, fit.valid = data, valid
    return to_device(state["shared"], device), to_device(state["personal"], device), History(meta["history"])
