"""pfedest.flower.app: the exported app folder, and an estimator loaded from a run's results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from pfedest.core.schedules import StepLR
from pfedest.flower import RunSettings, export_app, load_result, read_model, run_config_for, write_model
from test_flower import N_NODES, flower_context, small_estimator, small_federation


def test_export_app_writes_a_flower_app_and_refuses_to_overwrite(tmp_path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    app = export_app(small_estimator(), tmp_path / "app", classes=[0, 1, 2], n_features=5, num_rounds=4,
                     result_dir="/tmp/results")
    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["components"] == {"serverapp": "pfedest_app.server_app:app",
                                    "clientapp": "pfedest_app.client_app:app"}
    assert config["config"]["num-rounds"] == 4 and config["config"]["batch-size"] == 8
    assert config["fab-include"] == ["pfedest_app/*.py", "pfedest_app/model.json"]
    RunSettings.from_config(config["config"])
    with pytest.raises(FileExistsError):
        export_app(small_estimator(), app, classes=[0, 1, 2], n_features=5)


def test_exported_app_bundles_only_its_package(tmp_path):
    """``flwr build`` (what ``flwr run`` ships to every node) leaves out results and node state
    that may sit in the app's folder."""
    pytest.importorskip("flwr")
    if shutil.which("flwr") is None:
        pytest.skip("flwr is not on PATH")
    app = export_app(small_estimator(), tmp_path / "app", classes=[0, 1, 2], n_features=5)
    (app / "pfedest-result").mkdir()
    (app / "pfedest-result" / "rounds.json").write_text("{}")
    (app / "state0.log.jsonl").write_text("{}")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run(["flwr", "build", "--app", str(app)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    import zipfile

    (fab,) = tmp_path.glob("*.fab")
    names = sorted(n for n in zipfile.ZipFile(fab).namelist() if not n.startswith(".info/"))
    assert names == ["pfedest_app/__init__.py", "pfedest_app/client_app.py", "pfedest_app/model.json",
                     "pfedest_app/server_app.py", "pyproject.toml"]


def test_load_result_builds_an_estimator_that_predicts_per_node(tmp_path):
    X, y, c = small_federation()
    est = small_estimator(n_rounds=2).fit(X, y, client_ids=c)
    spec_path = write_model(est, tmp_path / "result" / "model.json")
    spec = read_model(spec_path)
    np.savez(tmp_path / "result" / "shared.npz", **{k: v.numpy() for k, v in est.shared_params_.items()})
    pytest.importorskip("flwr")
    from flwr.app import RecordDict

    from pfedest.flower import NodeStore

    for i in range(N_NODES):  # each node's file, as a node writes it
        store = NodeStore(tmp_path / f"state{i}", spec.app_id, i)
        store.save(flower_context({}, {}, RecordDict()), {k: v[i] for k, v in est.personal_params_.items()},
                   server_round=2, run_id=1, source="init", start="", loss=0.0)
    # The run's settings (rounds.json) are the loaded estimator's, the training options among them.
    from dataclasses import asdict

    run = RunSettings.from_config(run_config_for(est, server_optimizer="adam", lr_schedule="step", lr_gamma=0.2,
                                                 clip_grad_norm=0.5, personal_l2_target="init"))
    (tmp_path / "result" / "rounds.json").write_text(json.dumps({"settings": asdict(run), "rounds": []}))
    loaded = load_result(tmp_path / "result", [tmp_path / f"state{i}" for i in reversed(range(N_NODES))])
    got = loaded.get_params()
    assert (got["server_optimizer"], got["clip_grad_norm"], got["personal_l2_target"]) == ("adam", 0.5, "init")
    assert got["lr_schedule"].get_params() == StepLR(gamma=0.2).get_params()
    assert loaded.clients_.tolist() == list(range(N_NODES))
    np.testing.assert_array_equal(loaded.predict(X, client_ids=c), est.predict(X, client_ids=c))
    assert loaded.get_params()["hidden_layer_sizes"] == (8,)
    with pytest.raises(ValueError, match="partition 0"):
        load_result(tmp_path / "result", [tmp_path / "state0", tmp_path / "state0"])

