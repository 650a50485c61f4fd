"""What a checkpoint holds, and whether a fit may continue from it.

:class:`~pfedest.callbacks.Checkpoint` writes :func:`checkpoint_state` with
:func:`pfedest.checkpoint.save_checkpoint` and hands what it reads back to
:func:`restore_checkpoint`, which refuses a checkpoint of another run (model, data, plan,
settings, callbacks) with the reason, and otherwise restores the estimator, its random generator,
the server optimizers and the callbacks' state, so the fit ends as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator

from . import __version__
from .callbacks import keeps_state
from .checkpoint import CheckpointError
from .core.devices import to_device
from .history import History
from .core.schedules import make_schedule
from .nn.splits import make_split
from .training import make_server_optimizer


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: The estimator parameters that decide what a fit computes: a checkpoint records them, and a fit
#: resumed with any of them changed would end with parameters no uninterrupted run gives, so it is
#: refused. ``hidden_layer_sizes`` counts only when it builds the network (``module=None``).
SETTINGS = ("module", "hidden_layer_sizes", "split", "algorithm", "clients_per_round", "personal_steps",
            "shared_steps", "lr", "personal_lr", "batch_size", "server_lr", "server_optimizer", "server_momentum",
            "weighting", "lr_schedule", "clip_grad_norm", "personal_l2", "personal_l2_target", "random_state")
#: The others, not compared. ``n_rounds``, ``pretrain_rounds`` and ``finetune_epochs`` make the plan,
#: which is checked on its own. ``engine``, ``device``, ``max_clients_per_batch`` and ``compile``
#: compute the same rounds to float tolerance: a run may move from loop to vmap or CPU to GPU when
#: resumed. ``callbacks`` are checked through their state; ``verbose``, ``warm_start`` and
#: ``unseen_clients`` (predict only) do not touch the parameters.
NOT_SETTINGS = ("n_rounds", "pretrain_rounds", "finetune_epochs", "engine", "device", "max_clients_per_batch",
                "compile", "callbacks", "verbose", "warm_start", "unseen_clients")


def describe_setting(value):
    """A JSON-able description of a parameter value that is the same in every process.

    Numbers, strings and lists stand for themselves (an int and a float stay apart:
    ``clients_per_round=1`` is one client, ``1.0`` all of them); a scikit-learn style object (a
    split, a schedule) is its class and parameters. A module instance is only its class: its repr
    prints whatever a custom ``extra_repr`` chooses, its shapes are checked by the signature and its
    weights are the checkpoint's. A function, class or lambda is its module and qualified name (a
    lambda's code is not comparable); any other object only its type's name (its repr may hold an
    address).

    Examples
    --------
    >>> from pfedest.core.schedules import StepLR
    >>> describe_setting(StepLR(step_rounds=5)), describe_setting((64, 64)), describe_setting(1.0)
    ('StepLR(gamma=0.5, step_rounds=5)', [64, 64], 1.0)
    >>> describe_setting(torch.nn.Linear(2, 3)), describe_setting(lambda r, n: 1.0)
    ('torch.nn.modules.linear.Linear instance', 'pfedest.resume.<lambda>')
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


def training_settings(est) -> dict:
    """The described :data:`SETTINGS` of ``est``, split and schedule as the fit resolves them.

    ``split="head"`` and ``split=HeadSplit()`` (or ``lr_schedule="step"`` and ``StepLR()``) train
    alike, so they are described alike.
    """
    params = est.get_params(deep=False)
    params["split"] = make_split(params["split"])
    params["lr_schedule"] = make_schedule(params["lr_schedule"])
    if params["module"] is not None:
        params["hidden_layer_sizes"] = None  # unused: the module gives the network
    return {name: describe_setting(params[name]) for name in SETTINGS}


def check_settings(saved, est) -> None:
    """Refuse to resume with :data:`SETTINGS` other than the checkpoint's, naming each that differs.

    ``saved=None`` is a checkpoint from before the settings were recorded: nothing to compare, so
    it resumes with a warning.
    """
    if saved is None:
        warnings.warn("The checkpoint does not record the training settings (written before they were saved), "
                      "so they are not checked: resume with the settings of the fit that wrote it.",
                      UserWarning, stacklevel=3)
        return
    now = json.loads(json.dumps(training_settings(est), default=_json_default))
    # compared as JSON text, so that 1 and 1.0 (one client, all clients) differ
    changed = [name for name in sorted(set(saved) | set(now))
               if json.dumps(saved.get(name)) != json.dumps(now.get(name))]
    if changed:
        details = "; ".join(f"{name}={saved.get(name)!r} in the checkpoint, {now.get(name)!r} in this fit"
                            for name in changed)
        raise CheckpointError(f"The checkpoint was written by a fit with other settings: {details}. Resume with "
                              "the checkpoint's settings, or start afresh (Checkpoint(resume=False) or another "
                              "directory).")


def signature(est) -> dict:
    shapes = {k: list(v.shape) for k, v in est.shared_params_.items()}
    shapes.update({k: ["clients", *v.shape[1:]] for k, v in est.personal_params_.items()})
    return shapes


def checkpoint_state(est) -> dict:
    """Everything needed to continue this fit: tensors, and JSON for the rest."""
    meta = {
        "pfedest_version": __version__,
        "signature": signature(est),
        "classes": est.classes_.tolist(),
        "clients": est.clients_.tolist(),
        "plan": est._plan,
        "progress": est._progress,
        "history": list(est.history_),
        "seed": est._keyed_seed,  # with the round number, it keys every draw of the rounds to come
        # a callback's request_stop ends the current stage: the resumed fit must not run it on
        "stop_requested": bool(getattr(est, "_stop_requested", False)),
        "stop_reason": getattr(est, "stop_reason_", None),
        "callbacks": callback_states(est),
        "settings": training_settings(est),
        "data": data_signature(est),
    }
    cpu = torch.device("cpu")
    try:
        meta_json = json.dumps(meta, default=_json_default)
    except TypeError as exc:
        raise TypeError(f"A callback's state_dict() is not JSON-able ({exc}); return numbers, strings, "
                        f"lists and dicts.") from exc
    return {
        "meta": meta_json,
        "shared": to_device(est.shared_params_, cpu),
        "personal": to_device(est.personal_params_, cpu),
        # personal_l2_target="init" pulls towards it; without a seed a new fit would draw another
        "personal_init": to_device(est._personal_init, cpu),
        "server": {stage: opt.state_dict() for stage, opt in est._servers.items()},
    }


def data_signature(est) -> dict:
    """Each client's row count and a SHA-256 digest of the fit's rows and labels (computed once a fit).

    A resumed fit must see the data the checkpoint was trained on: the same clients with other rows
    would continue a different run.
    """
    if est._fit_data_signature is None:
        data = est._fit_data
        digest = hashlib.sha256()
        for tensor in (data.X, data.y):
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        est._fit_data_signature = {"counts": np.asarray(data.counts).tolist(), "sha256": digest.hexdigest()}
    return est._fit_data_signature


def check_data(saved, est) -> None:
    """Refuse to resume on other rows than the checkpoint's, naming the clients whose row counts differ."""
    if saved is None:
        return
    now = data_signature(est)
    if saved == now:
        return
    changed = [str(client) for client, a, b in zip(est.clients_.tolist(), saved["counts"], now["counts"]) if a != b]
    what = (f"other row counts for clients {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}"
            if changed else "the same row counts but other values")
    raise CheckpointError(f"The checkpoint was written for other training data ({what}). Resume on the data "
                          "it was trained on, or start afresh (Checkpoint(resume=False) or another directory).")


def restore_checkpoint(est, state: dict) -> None:
    """Continue from a checkpoint of this same run, or refuse it with the reason."""
    meta = json.loads(state["meta"])
    if meta["pfedest_version"] != __version__:
        raise CheckpointError(f"The checkpoint was written by pfedest {meta['pfedest_version']}; this is "
                              f"pfedest {__version__}. Resume with the version that wrote it.")
    if meta["signature"] != signature(est):
        raise CheckpointError(f"The checkpoint is for a model with parameters {meta['signature']}, not "
                              f"{signature(est)}.")
    if meta["classes"] != est.classes_.tolist() or meta["clients"] != est.clients_.tolist():
        raise CheckpointError("The checkpoint was written for other classes or clients than this fit's data.")
    if meta["plan"] != est._plan:
        raise CheckpointError(f"The checkpoint belongs to the training plan {meta['plan']}, this fit's is "
                              f"{est._plan} (pretrain_rounds, n_rounds or finetune_epochs changed).")
    check_data(meta.get("data"), est)  # older checkpoints hold no data signature: nothing to compare
    check_settings(meta.get("settings"), est)
    restore_callbacks(est, meta.get("callbacks"))  # before anything changes: it may refuse
    est.shared_params_ = to_device(state["shared"], est.device_)
    for k, v in to_device(state["personal"], est.device_).items():
        est.personal_params_[k].copy_(v)
    if "personal_init" in state:  # older checkpoints: the seeded fit draws the same again
        est._personal_init = to_device(state["personal_init"], est.device_)
    est._servers = {}
    for stage, opt_state in state["server"].items():
        est._servers[stage] = make_server_optimizer(est)
        est._servers[stage].load_state_dict(to_device(opt_state, est.device_))
    est._progress = stages_left(meta["plan"], meta["progress"], meta.get("stop_requested", False))
    est.history_ = History(meta["history"])
    if "seed" in meta:  # older checkpoints kept a generator's state instead: the fit's own seed goes on
        est._keyed_seed = int(meta["seed"])
    est.stop_reason_ = meta.get("stop_reason")


def stages_left(plan, progress, stop_requested: bool) -> list:
    """``progress`` with every stage that has ended marked done, so that the plan goes on from there.

    A stage ends after its rounds or when a callback stops it early; a stage stopped early keeps
    fewer rounds in ``progress`` than the plan has, and would otherwise run on when resumed. The
    stages before the last one begun have ended; that one has if a stop was requested in it.
    (Checkpoints written before ``stop_requested`` was saved restore as if none was requested.)

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


def callback_states(est) -> list:
    """Each live callback's class name and ``state_dict()`` (``None`` if it keeps none), in run order."""
    return [{"class": type(cb).__name__, "state": cb.state_dict() if keeps_state(cb) else None}
            for cb in getattr(est, "callbacks_", [])]


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


def restore_callbacks(est, saved) -> None:
    """Load the saved callback states into ``est.callbacks_``, or refuse if they do not match.

    Callbacks that keep no state may differ freely between the runs; every callback that keeps
    state, in either, must have its counterpart (same class, same rank among that class) in the
    other. ``saved=None`` is a checkpoint from before callback state was saved: callbacks with
    state then start afresh, with a warning.
    """
    callbacks = list(getattr(est, "callbacks_", []))
    if saved is None:
        stateful = [type(cb).__name__ for cb in callbacks if keeps_state(cb)]
        if stateful:
            warnings.warn(f"The checkpoint holds no callback state (written before it was saved); "
                          f"{', '.join(stateful)} start afresh, so the resumed fit may stop at another "
                          "round than an uninterrupted one.", UserWarning, stacklevel=2)
        return
    then = _by_class_rank([(entry["class"], entry["state"]) for entry in saved])
    now = _by_class_rank([(type(cb).__name__, {} if keeps_state(cb) else None) for cb in callbacks])
    if then.keys() != now.keys():
        def describe(keys):
            return ", ".join(f"{name} #{rank + 1}" for name, rank in sorted(keys)) or "none"

        raise CheckpointError(
            f"The checkpoint holds the state of callbacks {describe(then)}; this fit's callbacks with state "
            f"are {describe(now)}. Resume with the same callbacks, or start afresh (Checkpoint(resume=False) "
            "or another directory).")
    for key, (position, _) in now.items():
        try:
            callbacks[position].load_state_dict(then[key][1])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"The checkpoint's state for callback {key[0]} #{key[1] + 1} does not fit "
                                  f"this fit's: {exc}") from exc
