"""``model.json``: what every node and the server need to know about the model.

:func:`write_model` writes it from an estimator, fitted (the app continues from its parameters) or
only configured (the app starts from its initial weights); :func:`read_model` reads it back into a
:class:`ModelSpec`. It holds the estimator's parameters that the app carries out (the registry's
``"flower:model"`` and ``"flower:run_config"`` settings, :mod:`pfedest.settings`), the labels, the
shape of one row, and the starting shared and personal parameters. :func:`check_layout` refuses
parameters of another layout than the model's, wherever they come from.

``model.json`` is JSON and nothing else: it names code, it never holds it, and it is read without
pickle (a result folder is data; reading one must not run code from it). A parameter that is
not a plain value travels as

- a class, by its import path ``"module:qualname"``: a torch module class (``module=MyNet``,
  called as ``MyNet(n_features, n_classes)``) or a scikit-learn-style class;
- a scikit-learn-style object (a :class:`~pfedest.Split`, a schedule of
  :mod:`pfedest.core.schedules`, a :class:`~pfedest.core.server.ServerOptimizer`, a
  :class:`~pfedest.privacy.DifferentialPrivacy`, or one of your
  own with ``get_params``), as its class's import path and its ``get_params(deep=False)``,
  rebuilt as ``cls(**params)``;
- a ``functools.partial`` of a torch module class with such arguments (a factory:
  ``module=partial(MyNet, width=64)``).

Refused at export, with a message that says what to pass instead: a module *instance* (its
constructor's arguments cannot be known; pass its class or a ``partial``), a function or lambda
(a file that names a function to call could make every node, or :func:`load_result
<pfedest.flower.app.load_result>`, call any function of the installed packages), and anything
defined in ``__main__`` or not importable by its name. When read, every path must import to a
class of those two kinds, so a crafted file can name no other code; reading one imports the
packages it names, as the app's own modules do.
"""

from __future__ import annotations

import base64
import functools
import importlib
import inspect
import json
import re
import uuid
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator

from ..core.server import ServerOptimizer
from ..core.types import Params
from ..settings import by_role, defaults as registry_defaults
from .settings import schedule_fields

__all__ = ["MODEL_FORMAT", "MODEL_FILE", "CARRIED", "SILENTLY_IGNORED", "write_model", "read_model", "ModelSpec",
           "check_layout"]

#: The ``format`` of a ``model.json``; :func:`read_model` refuses any other (and reads files of
#: format ``pfedest-flower-model/1``, which stored objects as pickles, only if they hold none).
MODEL_FORMAT = "pfedest-flower-model/2"
_READ_FORMATS = (MODEL_FORMAT, "pfedest-flower-model/1")
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: The model file's name, in the app's package and in the result folder.
MODEL_FILE = "model.json"
#: The estimator parameters ``model.json`` holds: the network's, and those the run config carries out.
CARRIED = by_role("flower:model") + by_role("flower:run_config")
#: Parameters the app leaves alone without a warning: they do not change what a run computes.
SILENTLY_IGNORED = by_role("flower:ignored")
_SERVER_DEFAULTS = ServerOptimizer()  # the betas and eps of every server optimizer a run config makes


def _encode_array(t: torch.Tensor) -> dict:
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(d: Mapping) -> torch.Tensor:
    dtype = np.dtype(d["dtype"])
    if dtype.kind not in "biuf":
        raise ValueError(f"an array of dtype {dtype}, not a number type")
    a = np.frombuffer(base64.b64decode(d["data"], validate=True), dtype=dtype).reshape(d["shape"])
    return torch.from_numpy(a.copy())


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _defined_in_main(obj) -> bool:
    owner = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return getattr(owner, "__module__", None) == "__main__"


def _nameable(obj) -> bool:
    """A class that ``model.json`` may name: a torch module class or a scikit-learn-style class."""
    return inspect.isclass(obj) and issubclass(obj, (torch.nn.Module, BaseEstimator))


def _path_of(name: str, cls) -> str:
    """The import path of ``cls``, checked to import back to it where the nodes run the same code."""
    if _defined_in_main(cls):
        raise ValueError(f"{name}: {cls.__qualname__} is defined in __main__, which the Flower nodes cannot import; "
                         "define it in a module that is installed on every node.")
    path = f"{cls.__module__}:{cls.__qualname__}"
    try:
        found = _import(path)
    except Exception:
        found = None
    if found is not cls:
        raise ValueError(f"{name}: {cls!r} cannot be imported by its name {path!r} (is it defined inside a "
                         "function?); define it at the top level of a module installed on every node.")
    return path


def _encode_value(name: str, value):
    """``value`` as JSON that names code but holds none (see the module's notes); ``ValueError`` otherwise."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode_value(name, v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode_value(name, v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode_value(f"{name}[{k!r}]", v) for k, v in value.items()}}
    if _nameable(value):
        return {"import": _path_of(name, value)}
    if isinstance(value, functools.partial) and inspect.isclass(value.func) and issubclass(value.func, torch.nn.Module):
        return {"partial": _path_of(name, value.func), "args": [_encode_value(name, v) for v in value.args],
                "keywords": {k: _encode_value(f"{name}.{k}", v) for k, v in value.keywords.items()}}
    if isinstance(value, BaseEstimator) and not isinstance(value, torch.nn.Module):
        return {"class": _path_of(name, type(value)),
                "params": {k: _encode_value(f"{name}.{k}", v) for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, torch.nn.Module):
        raise ValueError(f"{name} is a module instance ({type(value).__name__}), which model.json cannot hold: it "
                         "stores no code and no pickle, and an instance's constructor arguments are not known. Pass "
                         "its class (called as cls(n_features, n_classes)) or a functools.partial of the class with "
                         "the other arguments.")
    if callable(value):
        raise ValueError(f"{name}={value!r} is a function, which model.json does not name: a file that names "
                         "a function to call could make the nodes call any function. Pass a class instead: for a "
                         "module, a torch module class or a functools.partial of one; for a split, a Split "
                         "object (NameSplit(patterns=[...]) or a Split subclass of your own).")
    raise ValueError(f"{name}={value!r} ({type(value).__name__}) cannot travel in model.json: use plain values, "
                     "a torch module class, or a scikit-learn-style object of an installed module.")


def _import_class(path) -> type:
    """The class at import path ``path``; ``ValueError`` unless it is one that ``model.json`` may name."""
    if not isinstance(path, str) or not _IMPORT_PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not an import path 'module:qualname'")
    try:
        obj = _import(path)
    except Exception as exc:
        raise ValueError(f"{path} cannot be imported here ({type(exc).__name__}: {exc})") from exc
    if not _nameable(obj):
        raise ValueError(f"{path} is not a torch module class or a scikit-learn-style class, the only code "
                         "model.json may name")
    return obj


def _decode_value(value):
    """The inverse of :func:`_encode_value`; ``ValueError`` on anything it does not write (a pickle above all)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict) and "pickle" in value:
        raise ValueError("it holds a pickled object (model.json of an older pfedest), which is never read: "
                         "write the model again with pfedest.flower.write_model or export_app")
    tags = set(value) if isinstance(value, dict) else set()
    if tags == {"tuple"} and isinstance(value["tuple"], list):
        return tuple(_decode_value(v) for v in value["tuple"])
    if tags == {"dict"} and isinstance(value["dict"], dict):
        return {k: _decode_value(v) for k, v in value["dict"].items()}
    if tags == {"import"}:
        return _import_class(value["import"])
    if tags == {"partial", "args", "keywords"} and isinstance(value["args"], list) and isinstance(
            value["keywords"], dict):
        cls = _import_class(value["partial"])
        if not issubclass(cls, torch.nn.Module):
            raise ValueError(f"{value['partial']} is not a torch module class")
        return functools.partial(cls, *map(_decode_value, value["args"]),
                                 **{k: _decode_value(v) for k, v in value["keywords"].items()})
    if tags == {"class", "params"} and isinstance(value["params"], dict):
        cls = _import_class(value["class"])
        if not issubclass(cls, BaseEstimator) or issubclass(cls, torch.nn.Module):
            raise ValueError(f"{value['class']} is not a scikit-learn-style class")
        return cls(**{k: _decode_value(v) for k, v in value["params"].items()})
    raise ValueError(f"it holds a value it cannot read: {json.dumps(value)[:200]}")


def _import_estimator(path):
    """The estimator class of ``model.json``: a scikit-learn estimator with ``initialize``."""
    cls = _import_class(path)
    if not (issubclass(cls, BaseEstimator) and callable(getattr(cls, "initialize", None))):
        raise ValueError(f"{path} is not a pfedest estimator class")
    _refuse_regressor(cls)
    return cls


def _refuse_regressor(cls) -> None:
    """The app's nodes encode labels, score accuracy and train cross-entropy: a regressor is not yet theirs."""
    from sklearn.base import RegressorMixin

    if issubclass(cls, RegressorMixin):
        raise TypeError(f"The Flower app trains classifiers only; {cls.__name__} is a regressor (its nodes would "
                        "encode the targets as labels). Train it with fit(X, y, client_ids) in one process.")


def _defaults(cls) -> dict:
    """Each parameter's default: the registry's; for a parameter it does not know (a subclass's), the signature's.

    The registry's default is the value under which the estimator runs as the app does (no
    pre-training, no callbacks), even where a subclass changes it."""
    signature = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty}
    return {**signature, **registry_defaults()}


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

    _refuse_regressor(type(estimator))
    try:
        check_is_fitted(estimator)
        fitted = True
    except NotFittedError:
        fitted = False
    params = estimator.get_params(deep=False)
    if params.get("privacy") is not None:
        # checked here, not first on the nodes: a setting the app cannot run refuses the export
        from .privacy import check_flower_privacy

        check_flower_privacy(params["privacy"])
    defaults = _defaults(type(estimator))
    ignored = sorted(k for k, v in params.items()
                     if k not in CARRIED + SILENTLY_IGNORED and not _same(v, defaults.get(k)))
    # a node never gives its held-out rows back: guard_refit=True (the default) is what it cannot do
    refit = bool(params.get("guard") and params.get("guard_refit"))
    ignored = [k for k in ignored if k != "guard_refit"] + (["guard_refit"] if refit else [])
    if "lr_schedule" in params and schedule_fields(params["lr_schedule"]) is None:
        ignored.append("lr_schedule")  # a callable of the user's: the nodes could not rebuild it
        params.pop("lr_schedule")
    server = params.get("server_optimizer")
    if isinstance(server, ServerOptimizer) and (tuple(server.betas), server.eps) != (
            tuple(_SERVER_DEFAULTS.betas), _SERVER_DEFAULTS.eps):
        ignored.append("server_optimizer")  # the run config holds its kind, lr and momentum only
    if ignored:
        warnings.warn(f"The Flower app does not carry out these estimator settings: "
                      f"{', '.join(f'{k}={getattr(estimator, k)!r}' for k in sorted(ignored))}; it has no pre-training "
                      "or fine-tuning stage, no callbacks, only the learning-rate schedules of "
                      "pfedest.core.schedules.SCHEDULES, and of a ServerOptimizer only its kind, lr and momentum.",
                      UserWarning, stacklevel=2)
    if isinstance(params.get("random_state"), (np.random.RandomState, np.random.Generator)):
        params["random_state"] = None  # the weights are stored; the seed only named them
    plain, objects = {}, {}
    for name in CARRIED:
        if name not in params:
            continue
        value = params[name]
        if _plain(value):
            plain[name] = list(value) if isinstance(value, tuple) else value
        else:
            objects[name] = _encode_value(name, value)
            if _encode_value(name, _decode_value(objects[name])) != objects[name]:
                raise ValueError(f"{name}={value!r} does not come back as itself from its class and "
                                 "get_params(); model.json can carry only objects that do.")
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
        template = _build_template(type(estimator), plain, objects, np.asarray(classes), input_shape)
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
    check_layout("The shared parameters", shared, template.shared_params_)
    check_layout("The personal parameters", personal, {k: v[0] for k, v in template.personal_params_.items()})
    return path


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:
        return a is b


def _import(path: str):
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _build_template(cls, plain: Mapping, objects: Mapping, classes: np.ndarray, input_shape: tuple):
    """The estimator with the model's network, initialized (``initialize``, no training) on one row
    per class: its ``module_``, ``classes_`` and the names of its shared and personal parameters."""
    arch = _decode_params(plain, objects, by_role("flower:model"))
    accepted = set(inspect.signature(cls.__init__).parameters)
    est = cls(**{k: v for k, v in arch.items() if k in accepted})
    est.set_params(device="cpu")
    X = np.zeros((len(classes), *input_shape), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.initialize(X, classes)
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
        Its other parameters (module classes, split objects, ...), as JSON that names their
        classes (see the module's notes).
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
        """An estimator with this model's network, initialized without training (its weights are
        not the model's: use :attr:`shared` and :attr:`personal`). Cached per file and process."""
        return _template_cached(self.app_id, json.dumps([self.estimator, self.objects, self.classes.tolist(),
                                                         list(self.input_shape), self.estimator_class]))

    def estimator_params(self) -> dict:
        """The estimator parameters stored in the model (objects rebuilt from their classes and parameters)."""
        return _decode_params(self.estimator, self.objects)


def _decode_params(plain: Mapping, objects: Mapping, names: Optional[tuple] = None) -> dict:
    """The estimator parameters of ``model.json`` (those in ``names`` only, if given), objects rebuilt."""
    params = {k: v for k, v in plain.items() if names is None or k in names}
    params.update({k: _decode_value(v) for k, v in objects.items() if names is None or k in names})
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    return params


@lru_cache(maxsize=8)
def _template_cached(app_id: str, key: str):
    estimator, objects, classes, input_shape, cls_path = json.loads(key)
    template = _build_template(_import_estimator(cls_path), estimator, objects, np.asarray(classes),
                               tuple(input_shape))
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
    :func:`write_model` has an example that reads its file back; a JSON file of anything else is refused:

    >>> import tempfile
    >>> from pathlib import Path
    >>> other = Path(tempfile.mkdtemp()) / "model.json"
    >>> _ = other.write_text('{"format": "something-else"}')
    >>> read_model(other)
    Traceback (most recent call last):
    ...
    ValueError: ... is not a pfedest Flower model (format 'something-else', expected 'pfedest-flower-model/2').
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Flower model file at {path}; write one with pfedest.flower.write_model "
                                "or export_app.")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not a pfedest Flower model: it is not JSON ({exc}).") from exc
    if not isinstance(raw, dict) or raw.get("format") not in _READ_FORMATS:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ValueError(f"{path} is not a pfedest Flower model (format {found!r}, expected "
                         f"{MODEL_FORMAT!r}).")
    try:
        spec = ModelSpec(
            app_id=str(raw["app_id"]), estimator_class=raw["estimator_class"], estimator=dict(raw["estimator"]),
            objects=dict(raw["objects"]), classes=np.asarray(raw["classes"]), input_shape=tuple(raw["input_shape"]),
            shared={k: _decode_array(v) for k, v in raw["shared"].items()},
            personal={k: _decode_array(v) for k, v in raw["personal"].items()})
        _import_estimator(spec.estimator_class)
        spec.estimator_params()  # every object rebuilt once: a file that names other code fails here
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as a pfedest Flower model: {exc}") from exc
    return spec


def check_layout(name: str, params: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Refuse parameters whose names, shapes or dtypes differ from the model's, or that are not finite.

    Parameters
    ----------
    name : str
        What the parameters are, for the message (``"The shared parameters from the server"``).
    params, expected : dict of str to Tensor
        The parameters, and the model's of the same part.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        Naming the missing and unexpected names, or the first array of another shape or dtype, or
        with NaN or infinite values.

    Examples
    --------
    >>> check_layout("The shared parameters", {"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    Traceback (most recent call last):
    ...
    ValueError: The shared parameters: w has shape (2,), the model has (3,).
    >>> check_layout("The shared parameters", {"w": torch.tensor([0.0, float("nan")])}, {"w": torch.zeros(2)})
    Traceback (most recent call last):
    ...
    ValueError: The shared parameters: w holds NaN or infinite values.
    """
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(f"{name} do not match the model: missing {missing}, unexpected {extra}.")
    for k, v in params.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{name}: {k} has shape {tuple(v.shape)}, the model has {tuple(expected[k].shape)}.")
        if v.dtype != expected[k].dtype:
            raise ValueError(f"{name}: {k} has dtype {v.dtype}, the model has {expected[k].dtype}.")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{name}: {k} holds NaN or infinite values.")


