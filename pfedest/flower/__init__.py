"""FedAlt and FedSim on a real Flower federation, personal parameters staying on each node.

A Flower app made here has two halves (`Flower <https://flower.ai>`_'s Message API, tested with
``flwr`` 1.40 to 1.42):

- the **ClientApp** runs on every SuperNode, one client of the federation. Its train handler runs
  the local update with the simulator's own code (:func:`pfedest.core.rounds.draw_batches` and
  :func:`pfedest.core.rounds.client_updates` for that one client) and replies with the shared
  parameters only; its personal parameters stay in ``context.state`` for the run and in a file of
  its own (``state-dir``), so a restarted node resumes with them (a damaged file is set aside and
  the personal part starts afresh: :class:`~pfedest.flower.node.NodeStore`).
- the **ServerApp** runs :class:`~pfedest.flower.strategy.PersonalizedFedAvg`, a Flower strategy
  that samples nodes, refuses any reply that is not exactly the shared parameters (the model's
  names, shapes and dtype, finite and bounded values, a bounded example count), averages the rest
  weighted by the nodes' example counts (or equally: run config ``weighting="uniform"``) and takes
  the server optimizer's step, as the simulator does, unless the step would make a parameter
  non-finite.

Nothing read from disk or the network runs code: ``model.json`` is JSON that names classes only
(:mod:`pfedest.flower.model_file`), and parameters travel and rest as ``.npy``/``.npz`` data read
without pickle.

The model travels inside the app as ``model.json``; training settings are the app's run config
(``[tool.flwr.app.config]`` in ``pyproject.toml``), so ``flwr run --run-config "lr=0.05"`` changes
them. A node is configured with ``flower-supernode --node-config 'partition-id=0
data-path="node0.npz" state-dir="state0"'``; its data file is an ``.npz`` with arrays ``X`` and ``y``.

Randomness: every draw is keyed by ``(seed, round, client)``, as the estimator's ``fit`` keys
them. The server samples the round's nodes with :func:`pfedest.core.sampling.sample_clients` seeded by
``(seed, round)`` over the nodes' ``partition-id`` order, and node ``p`` draws its minibatches in
round ``r`` from ``pfedest.core.sampling.RoundKeys(seed, r)`` as client ``p``. So with the
partition-ids numbering the estimator's clients (``clients_`` order) and each node holding that
client's rows in the same order, a run reproduces
:meth:`~pfedest.PartialPersonalizedClassifier.fit` with ``random_state=seed``, draw for draw.

The package, one module a role:

- :mod:`pfedest.flower.settings`: :class:`~pfedest.flower.settings.RunSettings`, the run config
  checked, and its mapping to the estimator's parameters (from the registry, :mod:`pfedest.settings`);
- :mod:`pfedest.flower.model_file`: ``model.json`` (:func:`~pfedest.flower.model_file.write_model`,
  :func:`~pfedest.flower.model_file.read_model`, :class:`~pfedest.flower.model_file.ModelSpec`);
- :mod:`pfedest.flower.records`: parameters as Flower ``ArrayRecord`` objects and ``.npz`` files, for
  both sides;
- :mod:`pfedest.flower.node`: the ClientApp (:func:`~pfedest.flower.node.local_round`,
  :class:`~pfedest.flower.node.NodeStore`, the handlers, :func:`~pfedest.flower.node.client_app`);
- :mod:`pfedest.flower.strategy`: :class:`~pfedest.flower.strategy.PersonalizedFedAvg` (imports Flower);
- :mod:`pfedest.flower.privacy`: user-level DP of the shared part (an estimator's ``privacy=``): the
  nodes' clipping, the server's sampling, noise and epsilon, as the simulator's;
- :mod:`pfedest.flower.server`: the ServerApp (:func:`~pfedest.flower.server.server_main`,
  :func:`~pfedest.flower.server.server_app`) and the result folder;
- :mod:`pfedest.flower.app`: :func:`~pfedest.flower.app.export_app`,
  :func:`~pfedest.flower.app.run_config_for` and :func:`~pfedest.flower.app.load_result`.

Their public names are importable from ``pfedest.flower`` too. Flower is imported only where it is
needed (``PersonalizedFedAvg`` on first use): ``import pfedest.flower`` works without it. Install
it with ``pip install -e ".[flower]"``.
"""

from __future__ import annotations

from .app import FLWR_REQUIREMENT, export_app, load_result, run_config_for
from .model_file import MODEL_FILE, MODEL_FORMAT, ModelSpec, check_layout, read_model, write_model
from .node import (SOURCES, STATE_KEY, NodeStore, client_app, digest, evaluate_handler, local_round,
                   personal_metrics, query_handler, train_handler)
from .records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, read_npz, to_record, to_tensors, write_npz
from .server import logger, server_app, server_main
from .settings import RunSettings

# PersonalizedFedAvg is left out of __all__: it needs Flower, and ``from pfedest.flower import *``
# should not.
__all__ = [
    "RunSettings",
    "write_model", "read_model", "ModelSpec", "check_layout", "MODEL_FILE", "MODEL_FORMAT",
    "to_record", "to_tensors", "write_npz", "read_npz", "ARRAYS_KEY", "METRICS_KEY", "CONFIG_KEY",
    "local_round", "personal_metrics", "digest", "NodeStore", "train_handler", "evaluate_handler",
    "query_handler", "client_app", "STATE_KEY", "SOURCES",
    "server_main", "server_app", "logger",
    "run_config_for", "export_app", "load_result", "FLWR_REQUIREMENT",
]


def __getattr__(name: str):
    # PersonalizedFedAvg subclasses Flower's FedAvg: import its module on first use, so that
    # importing this package does not need Flower.
    if name == "PersonalizedFedAvg":
        from .strategy import PersonalizedFedAvg

        return PersonalizedFedAvg
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
