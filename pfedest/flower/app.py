"""From an estimator to a runnable Flower app, and from a finished run back to an estimator.

:func:`export_app` writes an app folder: ``pyproject.toml`` with the run config of
:func:`run_config_for`, and a package with ``model.json`` (:func:`~pfedest.flower.model_file.write_model`)
and two small modules that call :func:`~pfedest.flower.node.client_app` and
:func:`~pfedest.flower.server.server_app` (the templates below; ``examples/flower_app`` is such an
app written by hand). :func:`load_result` makes a fitted estimator of a run's ``result-dir`` and the
nodes' ``state-dir`` folders.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..history import History
from .model_file import MODEL_FILE, check_layout, read_model, write_model
from .node import NodeStore
from .records import read_npz
from .settings import RunSettings

__all__ = ["FLWR_REQUIREMENT", "run_config_for", "export_app", "load_result"]

#: The ``flwr`` releases this package was tested with (the ``flower`` extra pins the same range).
FLWR_REQUIREMENT = "flwr>=1.40,<1.43"


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
        ``personal_l2``, server optimizer, ...) are read (:meth:`RunSettings.from_estimator_params
        <pfedest.flower.settings.RunSettings.from_estimator_params>`). A ``lr_schedule`` that is not
        one of :mod:`pfedest.core.schedules`' own gives ``lr-schedule = "constant"``
        (:func:`~pfedest.flower.model_file.write_model` warns).
    **overrides
        Run-config values to set instead (``-`` or ``_`` in the keys).

    Returns
    -------
    dict
        Run-config key to value; checked by :meth:`~pfedest.flower.settings.RunSettings.from_config`.

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
    config = RunSettings.from_estimator_params(estimator.get_params(deep=False)).to_config()
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
    package with ``server_app.py``, ``client_app.py`` (thin wrappers around :mod:`pfedest.flower`) and
    ``model.json`` (:func:`~pfedest.flower.model_file.write_model`). Run it with
    ``flwr run <directory> <connection>``; load the outcome with :func:`load_result`.

    Parameters
    ----------
    estimator : PartialPersonalizedClassifier
        Fitted or configured.
    directory : str or Path
        Created if missing; must be empty unless ``overwrite``.
    classes, n_features :
        Required for an unfitted estimator (see :func:`~pfedest.flower.model_file.write_model`).
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
    Nothing in the folders is unpickled or run: ``model.json`` is read as JSON and may name only
    classes (:mod:`pfedest.flower.model_file`), the ``.npz`` files are read without pickle, and
    parameters of another name, shape or dtype than the model's, or NaN or infinite ones, are
    refused with a ``ValueError`` naming the file.

    The estimator is the stored configuration initialized on one row per class (its public
    ``initialize``, so that every fitted attribute exists and is consistent), then its
    ``shared_params_``, ``personal_params_`` and ``clients_`` are replaced by the run's.

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
    result_dir = Path(result_dir)
    spec = read_model(result_dir / MODEL_FILE)
    shared, _ = read_npz(result_dir / "shared.npz")
    check_layout(f"The shared parameters in {result_dir / 'shared.npz'}", shared, spec.shared)
    nodes = {}
    for state_dir in state_dirs:
        path = Path(state_dir) / NodeStore.file_name(spec.app_id)
        if not path.is_file():
            raise FileNotFoundError(f"No personal parameters of this app ({spec.app_id}) in {state_dir}: "
                                    f"expected {path.name}.")
        personal, meta = read_npz(path)
        pid = meta.get("partition_id")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError(f"{path} has no valid partition_id in its meta (got {pid!r}): it is not a node's "
                             "state file, or it was damaged.")
        if pid in nodes:
            raise ValueError(f"Two state dirs hold partition {pid}: {nodes[pid][0]} and {state_dir}.")
        check_layout(f"The personal parameters in {path}", personal, spec.personal)
        nodes[pid] = (state_dir, personal)
    if not nodes and spec.personal:
        raise ValueError("load_result needs the state_dirs of the nodes whose clients it should predict.")
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
                            "wall_time": (r.get("finished") or r["started"]) - r["started"],
                            # a private run's epsilon spent so far, as a private fit's history_ has it
                            **{k: r[k] for k in ("epsilon", "dp_clip", "dp") if k in r}})
    est.history_ = history
    params = spec.estimator_params()
    # The run's settings (its run config may have changed model.json's); a rounds.json of an older
    # release holds fewer of them, and only those it holds are taken.
    present = {f.name for f in fields(RunSettings)} & set(settings)
    run = RunSettings(**{name: settings[name] for name in present})
    params.update(run.estimator_params(present=present))
    accepted = set(est.get_params(deep=False))
    est.set_params(**{k: v for k, v in params.items() if k in accepted})
    return est
