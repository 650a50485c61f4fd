"""The ServerApp: run :class:`~pfedest.flower.strategy.PersonalizedFedAvg` and write what the run left.

:func:`server_main` is the ServerApp's main: it reads the run config, starts the strategy on the
federation's grid (wrapped so that the server checks for replies every ``poll-interval`` seconds
and stops waiting ``straggler-wait`` seconds after a round's first reply, when those are set), and
writes to ``result-dir``: the shared parameters after every round (``shared.npz``), the settings
and the record of every round (``rounds.json``) and a copy of ``model.json``.
:func:`~pfedest.flower.app.load_result` reads them back.

Flower is imported only when the ServerApp is built or run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .._files import atomic_write
from .guard import split_fallback, with_fallback
from .model_file import MODEL_FILE, read_model
from .records import to_record, write_npz
from .settings import RunSettings

__all__ = ["server_main", "server_app"]

# A child of Flower's logger, so that messages show in `flwr run --stream` and the SuperLink log.
logger = logging.getLogger("flwr.pfedest")


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


def server_main(grid, context, app_dir) -> Path:
    """The ServerApp's main: run :class:`~pfedest.flower.strategy.PersonalizedFedAvg`; results go to ``result-dir``.

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
        The ``result-dir``; read it with :func:`~pfedest.flower.app.load_result`.
    """
    # Import Flower first, so that a missing install fails before the result folder is written.
    from .strategy import PersonalizedFedAvg

    settings = RunSettings.from_config(context.run_config)
    model_path = Path(app_dir) / MODEL_FILE
    spec = read_model(model_path)
    out = Path(settings.result_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MODEL_FILE, json.loads(model_path.read_text()))
    summary = {"run_id": int(context.run_id), "settings": asdict(settings), "flwr": _flwr_version(),
               "started": time.time(), "rounds": []}

    def on_round(record, arrays):
        if arrays is not None:
            shared, fallback = split_fallback(arrays)
            write_npz(out / "shared.npz", shared)
            if fallback:  # the guard's fallback, beside the shared part (pfedest.flower.guard)
                write_npz(out / "fallback.npz", fallback)
            if settings.keep_rounds:
                write_npz(out / f"shared-round-{record['round']}.npz", shared)
        summary["rounds"] = strategy.rounds
        _write_json(out / "rounds.json", summary)

    # with the guard, the nodes' personal parts are averaged into the fallback with the shared part
    initial = with_fallback(spec.shared, spec.personal) if settings.guard else spec.shared
    strategy = PersonalizedFedAvg(initial, settings, on_round=on_round, privacy=spec.estimator_params().get("privacy"))
    write_npz(out / "shared.npz", spec.shared)
    if settings.poll_interval > 0 or settings.straggler_wait > 0:
        run_grid = _PollingGrid(grid, settings.poll_interval or 3.0, settings.straggler_wait)
    else:
        run_grid = grid
    logger.info("pfedest: writing results to %s", out)
    strategy.start(grid=run_grid, initial_arrays=to_record(initial), num_rounds=settings.num_rounds,
                   timeout=settings.round_timeout)
    summary.update(rounds=strategy.rounds, finished=time.time())
    _write_json(out / "rounds.json", summary)
    return out


def server_app(app_dir):
    """The Flower ``ServerApp`` of the app in ``app_dir`` (the folder holding ``model.json``).

    Needs ``flwr``; :func:`~pfedest.flower.app.export_app` writes an app that calls it.

    Parameters
    ----------
    app_dir : str or Path
        The folder holding ``model.json``.

    Returns
    -------
    flwr.serverapp.ServerApp

    Examples
    --------
    >>> import pytest, tempfile
    >>> flwr = pytest.importorskip("flwr")  # building the app needs flwr, but no federation
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.flower import export_app
    >>> app = export_app(PartialPersonalizedClassifier(hidden_layer_sizes=(4,)), tempfile.mkdtemp(),
    ...                  classes=[0, 1], n_features=3)
    >>> type(server_app(app / "pfedest_app")).__name__
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

