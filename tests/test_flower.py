"""FedAlt/FedSim on a real Flower federation (loopback only), and the pieces it is made of.

The network tests start ``flower-superlink --insecure`` and two ``flower-supernode`` processes on
127.0.0.1 (free ports, state under ``tmp_path``), run one 4-round app with ``flwr run`` in which
node 1 is killed in the middle of round 3 and restarted, and then check what the run left behind:
which keys crossed the network, whether the model improved, whether the nodes' personal parameters
differ, whether the run equals an in-process replay with :func:`pfedest.core.rounds.run_round`, and
whether the killed node resumed from its file. They skip without ``flwr``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedest import PartialPersonalizedClassifier
from pfedest.core.algorithms import ALGORITHMS
from pfedest.datasets import make_shifted_clients
from pfedest.core.engine import make_engine
from pfedest.core.rounds import run_round
from pfedest.flower import (RunSettings, export_app, load_result, local_round, personal_metrics, read_model,
                            run_config_for, write_model)
from pfedest.core.model import make_loss
from pfedest.callbacks import Callback
from pfedest.core.sampling import RoundKeys
from pfedest.core.schedules import LinearLR, StepLR, make_schedule
from pfedest.core.server import WeightedAverage

CPU = torch.device("cpu")
N_NODES = 2
VICTIM = 1            # the node killed in the middle of STALL_ROUND and restarted
STALL_ROUND = 3
N_ROUNDS = 4
ROUND_TIMEOUT = 300.0
STRAGGLER_WAIT = 20.0  # a round ends this long after its first reply (nodes answer within seconds of each other)


def small_federation():
    return make_shifted_clients(n_clients=N_NODES, n_samples_per_client=(30, 50), n_features=5, n_classes=3,
                                random_state=0)


def small_estimator(**params):
    base = dict(hidden_layer_sizes=(8,), lr=0.2, batch_size=8, personal_steps=3, shared_steps=5, random_state=0)
    return PartialPersonalizedClassifier(**{**base, **params})


# ------------------------------------------------------------------------------ no Flower needed
def test_import_and_model_files_work_without_flower(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["flwr"] = None  # any import of flwr now fails
        import pfedest, pfedest.flower
        from pfedest import PartialPersonalizedClassifier
        est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), random_state=0)
        pfedest.flower.export_app(est, {str(tmp_path / 'app')!r}, classes=[0, 1], n_features=3)
        try:
            pfedest.flower.client_app(".")
        except ImportError:
            print("client_app needs flwr")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "client_app needs flwr" in out.stdout
    assert (tmp_path / "app" / "pfedest_app" / "model.json").is_file()


def test_run_settings_read_the_run_config_and_name_bad_values():
    s = RunSettings.from_config({"num-rounds": 4, "algorithm": "fedalt", "personal-steps": 2, "shared-steps": -1,
                                 "lr": 0.5, "personal-lr": 0.0, "unrelated-key": "kept out"})
    assert s.steps() == {"personal": 2, "shared": None}
    assert s.step_sizes().personal == 0.5
    assert RunSettings.from_config({"clients-per-round": 0.5}).n_sampled(5) == 2
    assert RunSettings.from_config({"clients-per-round": 10}).n_sampled(3) == 3
    for key, value in [("algorithm", "fedprox"), ("lr", 0.0), ("num-rounds", 0), ("clients-per-round", 1.5),
                       ("personal-steps", -2), ("evaluate-every", -3), ("seed", -1)]:
        with pytest.raises(ValueError, match=key):
            RunSettings.from_config({key: value})


@pytest.mark.parametrize("key, value", [
    ("clip-grad-norm", -1.0), ("clip-grad-norm", "1.0"), ("personal-l2", float("nan")), ("personal-l2", True),
    ("personal-l2-target", "start"), ("lr-schedule", "cosine"), ("lr-warmup-rounds", -1),
    ("lr-warmup-rounds", 1.5), ("lr-final", -0.5), ("lr-step-rounds", 0), ("lr-gamma", 0.0),
    ("server-optimizer", "adagrad"), ("server-momentum", 1.0), ("server-momentum", -0.1)])
def test_run_settings_refuse_bad_training_options_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"Run config {key}={value!r} is invalid"):
        RunSettings.from_config({key: value})


def test_example_apps_run_config_has_every_setting():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from dataclasses import fields

    path = Path(__file__).parents[1] / "examples" / "flower_app" / "pyproject.toml"
    config = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(config) == sorted(f.name.replace("_", "-") for f in fields(RunSettings))
    RunSettings.from_config(config)


def _module_level_schedule(round_index, n_rounds):  # importable, but a callable the app cannot rebuild
    return 0.5


@pytest.mark.parametrize("schedule", ["constant", "linear", "step", LinearLR(warmup_rounds=2, final=0.1),
                                      StepLR(step_rounds=2, gamma=0.3)])
def test_run_config_carries_the_learning_rate_schedule(schedule):
    n_rounds = 12  # past StepLR's default step_rounds=10
    settings = RunSettings.from_config(run_config_for(small_estimator(lr_schedule=schedule, n_rounds=n_rounds)))
    expected = make_schedule(schedule)
    got = [settings.step_sizes(server_round=r + 1) for r in range(n_rounds)]
    assert [(s.shared, s.personal) for s in got] == [(0.2 * expected(r, n_rounds),) * 2 for r in range(n_rounds)]
    with pytest.raises(ValueError, match="no local step"):
        RunSettings.from_config({"personal-steps": 0, "shared-steps": 0})


def test_run_config_follows_the_estimator():
    cfg = run_config_for(small_estimator(algorithm="fedsim", personal_lr=0.05, n_rounds=9), seed=3)
    assert (cfg["algorithm"], cfg["num-rounds"], cfg["personal-lr"], cfg["shared-steps"], cfg["seed"]) == \
        ("fedsim", 9, 0.05, 5, 3)
    with pytest.raises(ValueError, match="Unknown run config key"):
        run_config_for(small_estimator(), rounds=3)


def test_local_round_names_a_bad_round_or_partition():
    X, y, c = small_federation()
    est = small_estimator(n_rounds=1).fit(X, y, client_ids=c)
    settings = RunSettings.from_config(run_config_for(est))
    personal = {k: v[0] for k, v in est.personal_params_.items()}
    for server_round, partition_id, named in [(1, -1, "partition_id"), (1.5, 0, "server_round")]:
        with pytest.raises(ValueError, match=named):
            local_round(est, X[c == 0], y[c == 0], est.shared_params_, personal, settings,
                        server_round=server_round, partition_id=partition_id)


def test_model_file_of_a_configured_estimator_holds_its_initial_weights(tmp_path):
    X, y, c = small_federation()
    est = small_estimator()
    spec = read_model(write_model(est, tmp_path / "model.json", classes=np.unique(y), n_features=5))
    fitted = small_estimator(n_rounds=1).fit(X, y, client_ids=c)
    init = dict(fitted.module_.named_parameters())  # the estimator's own starting weights
    assert set(spec.shared) == set(fitted.shared_params_) and set(spec.personal) == set(fitted.personal_params_)
    for k, v in {**spec.shared, **spec.personal}.items():
        torch.testing.assert_close(v, init[k].detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="classes="):
        write_model(est, tmp_path / "other.json")


def test_model_file_of_a_fitted_estimator_continues_from_it(tmp_path):
    X, y, c = small_federation()
    est = small_estimator(n_rounds=2).fit(X, y, client_ids=c)
    spec = read_model(write_model(est, tmp_path / "model.json"))
    for k, v in est.shared_params_.items():
        torch.testing.assert_close(spec.shared[k], v)
    for k, v in est.personal_params_.items():  # new nodes start from the clients' average, as in predict
        torch.testing.assert_close(spec.personal[k], v.mean(0))
    assert spec.classes.tolist() == est.classes_.tolist()


class MainModule(torch.nn.Module):
    def forward(self, x):
        return x


def test_model_file_refuses_what_nodes_cannot_import(tmp_path, monkeypatch):
    monkeypatch.setattr(MainModule, "__module__", "__main__")
    with pytest.raises(ValueError, match="__main__"):
        write_model(small_estimator(module=MainModule), tmp_path / "m.json", classes=[0, 1], n_features=5)


def test_write_model_carries_the_training_options_and_warns_for_the_rest(tmp_path):
    options = dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="init",
                   lr_schedule=StepLR(step_rounds=2, gamma=0.3), server_optimizer="sgd", server_momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = read_model(write_model(small_estimator(**options), tmp_path / "m.json", classes=[0, 1],
                                      n_features=5))
    stored = spec.estimator_params()
    assert stored["lr_schedule"].get_params() == options.pop("lr_schedule").get_params()
    assert {k: stored[k] for k in options} == options
    cfg = run_config_for(small_estimator(**options))
    assert (cfg["clip-grad-norm"], cfg["personal-l2"], cfg["personal-l2-target"], cfg["server-optimizer"],
            cfg["server-momentum"]) == (0.5, 0.1, "init", "sgd", 0.9)
    for name, value in [("pretrain_rounds", 1), ("finetune_epochs", 1), ("callbacks", [Callback()]),
                        ("lr_schedule", _module_level_schedule)]:
        with pytest.warns(UserWarning, match=f"not carry out these estimator settings: {name}="):
            spec = read_model(write_model(small_estimator(**{name: value}), tmp_path / "m.json", classes=[0, 1],
                                          n_features=5))
        assert name not in spec.estimator_params()
    # A callable schedule cannot travel: the app's run config trains with the constant rate.
    assert run_config_for(small_estimator(lr_schedule=_module_level_schedule))["lr-schedule"] == "constant"


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


def test_local_round_is_the_simulators_round_for_that_client():
    """A node's update equals the engine's local update of the same client in the full federation."""
    X, y, c = small_federation()
    est = small_estimator(n_rounds=1).fit(X, y, client_ids=c)
    settings = RunSettings.from_config(run_config_for(est, seed=5))
    shared = est.shared_params_
    personal = {k: v[1] for k, v in est.personal_params_.items()}
    mine = c == 1
    new_shared, new_personal, result = local_round(est, X[mine], y[mine], shared, personal, settings,
                                                   server_round=3, partition_id=1)
    # The same client's update through the engine, in the federation of all rows (offsets != 0).
    order = np.argsort(c, kind="stable")
    counts = np.bincount(c)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codes = np.searchsorted(est.classes_, y[order])
    loss = make_loss(est.module_, {}, torch.as_tensor(X[order]), torch.as_tensor(codes))
    algo = ALGORITHMS["fedalt"]
    from pfedest.core.sampling import minibatch_stream

    keys = RoundKeys(5, 3)  # seed 5, round 3, as client 1 (the node's partition-id)
    streams = {}
    for stream, name in enumerate(algo.streams):
        idx, mask = minibatch_stream(keys.uniforms(stream, [1]), counts[[1]], settings.batch_size,
                                     settings.steps()[name])
        streams[name] = (torch.as_tensor(idx + offsets[1]), torch.as_tensor(mask))
    ref_shared, ref_personal, _ = make_engine("loop", loss, shared).local_updates(
        algo, shared, {k: v[None] for k, v in personal.items()}, streams, settings.step_sizes())
    for k in shared:
        torch.testing.assert_close(new_shared[k], ref_shared[k][0], rtol=1e-6, atol=1e-7)
    for k in personal:
        torch.testing.assert_close(new_personal[k], ref_personal[k][0], rtol=1e-6, atol=1e-7)
    assert result.row_count == settings.batch_size * (3 + 5)


# ------------------------------------------------------------ Flower objects, in one process
def _message(content, message_type="train", dst=11):
    from flwr.app import Message, Metadata

    metadata = Metadata(run_id=7, message_id="m1", src_node_id=1, dst_node_id=dst, reply_to_message_id="",
                        group_id="", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=metadata)


def _context(node_config, run_config, state=None):
    from flwr.app import Context, RecordDict

    return Context(run_id=7, node_id=11, node_config=node_config, state=state or RecordDict(), run_config=run_config)


@pytest.fixture
def one_node(tmp_path):
    pytest.importorskip("flwr")
    X, y, c = small_federation()
    app = export_app(small_estimator(), tmp_path / "app", classes=np.unique(y), n_features=5)
    np.savez(tmp_path / "node1.npz", X=X[c == 1], y=y[c == 1])
    node_config = {"partition-id": 1, "data-path": str(tmp_path / "node1.npz"), "state-dir": str(tmp_path / "s1")}
    run_config = run_config_for(small_estimator())
    return app / "pfedest_app", node_config, run_config, read_model(app / "pfedest_app" / "model.json")


def test_train_handler_sends_shared_only_and_keeps_personal_on_the_node(one_node):
    from flwr.app import ConfigRecord, RecordDict

    from pfedest.flower import _to_record, evaluate_handler, train_handler

    app_dir, node_config, run_config, spec = one_node
    ins = RecordDict({"arrays": _to_record(spec.shared), "config": ConfigRecord({"server-round": 1})})
    context = _context(node_config, run_config)
    reply = train_handler(_message(ins), context, app_dir)
    sent = reply.content.array_records["arrays"]
    assert set(sent.keys()) == set(spec.shared) and not set(sent.keys()) & set(spec.personal)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == int((small_federation()[2] == 1).sum()) and metrics["personal-source"] == 0
    kept = context.state.array_records["pfedest.personal"]
    assert set(kept.keys()) == set(spec.personal)
    assert any(not np.array_equal(kept[k].numpy(), spec.personal[k].numpy()) for k in spec.personal)
    # Round 2 in the same run continues from context.state.
    ins2 = RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 2})})
    reply2 = train_handler(_message(ins2), context, app_dir)
    assert reply2.content.metric_records["metrics"]["personal-source"] == 1
    # A restarted node (empty context.state) resumes from its file: where round 2 left it.
    after_round_2 = {k: a.numpy().copy() for k, a in context.state.array_records["pfedest.personal"].items()}
    fresh = _context(node_config, run_config)
    ins3 = RecordDict({"arrays": reply2.content.array_records["arrays"], "config": ConfigRecord({"server-round": 3})})
    reply3 = train_handler(_message(ins3), fresh, app_dir)
    assert reply3.content.metric_records["metrics"]["personal-source"] == 2
    log = [json.loads(line) for line in open(Path(node_config["state-dir"]) / f"pfedest-{spec.app_id}.log.jsonl")]
    assert [e["source"] for e in log] == ["init", "state", "disk"]
    assert log[2]["start"] == log[1]["end"]
    from pfedest.flower import _digest

    assert log[1]["end"] == _digest({k: torch.from_numpy(v) for k, v in after_round_2.items()})
    # The evaluate handler reports the node's personal accuracy and sends no arrays at all.
    res = evaluate_handler(_message(ins3, "evaluate"), fresh, app_dir)
    assert not res.content.array_records
    assert 0.0 <= res.content.metric_records["metrics"]["accuracy"] <= 1.0


def test_train_handler_names_a_missing_node_setting(one_node):
    from flwr.app import ConfigRecord, RecordDict

    from pfedest.flower import _to_record, train_handler

    app_dir, node_config, run_config, spec = one_node
    ins = RecordDict({"arrays": _to_record(spec.shared), "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(ValueError, match="data-path"):
        train_handler(_message(ins), _context({"partition-id": 1}, run_config), app_dir)
    wrong = {k: v[..., :1] for k, v in spec.shared.items()}
    bad = RecordDict({"arrays": _to_record(wrong), "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(ValueError, match="shape"):
        train_handler(_message(bad), _context(node_config, run_config), app_dir)


def test_strategy_refuses_replies_with_personal_keys_and_weights_by_examples():
    pytest.importorskip("flwr")
    from flwr.app import Error, Message, MetricRecord, RecordDict

    import pfedest.flower as pf

    shared = {"w": torch.zeros(2), "b": torch.zeros(1)}
    strategy = pf.PersonalizedFedAvg(shared, RunSettings.from_config({"server-lr": 1.0}))
    strategy.begin_round(1, shared, [101, 102, 103, 104, 105])
    ins = _message(RecordDict())

    def reply(params, n, pid):
        return Message(RecordDict({"arrays": pf._to_record(params),
                                   "metrics": MetricRecord({"num-examples": n, "partition-id": pid})}), reply_to=ins)

    replies = [
        reply({"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}, 1, 0),
        reply({"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([7.0])}, 3, 1),
        reply({"w": torch.ones(2), "b": torch.ones(1), "head": torch.ones(3)}, 100, 2),  # leaks a personal key
        reply({"w": torch.tensor([float("nan"), 0.0]), "b": torch.ones(1)}, 100, 3),
        Message(Error(code=0, reason="node crashed"), reply_to=ins),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    got = pf._to_tensors(arrays)
    torch.testing.assert_close(got["w"], torch.tensor([4.0, 5.0]))  # (1*[1,2] + 3*[5,6]) / 4
    torch.testing.assert_close(got["b"], torch.tensor([6.0]))
    record = strategy.rounds[-1]
    refused = [r for r in record["replies"] if not r["accepted"]]
    assert [r["partition_id"] for r in refused] == [2, 3]
    assert "head" in refused[0]["reason"] and "not finite" in refused[1]["reason"]
    assert record["failures"][0]["reason"] == "node crashed" and record["clients"] == [0, 1]
    # No usable reply: the round changes nothing.
    strategy.begin_round(2, got, [101])
    assert strategy.aggregate_train(2, replies[2:]) == (None, None)


class _InProcessGrid:
    """Delivers the strategy's messages to the nodes' handlers in this process, as a SuperLink and
    SuperNodes would: each node keeps its own context (its state) from round to round."""

    def __init__(self, app_dir, node_configs, run_config):
        self.app_dir = app_dir
        self.contexts = {node: _context(cfg, run_config) for node, cfg in node_configs.items()}
        self.sent = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from pfedest.flower import evaluate_handler, query_handler, train_handler

        handlers = {"train": train_handler, "query": query_handler, "evaluate": evaluate_handler}
        replies = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            self.sent.append((kind, node))
            replies.append(handlers[kind](_message(m.content, kind, dst=node), self.contexts[node], self.app_dir))
        return replies


TRAINING_OPTIONS = {
    "adam": dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="init", lr_schedule="linear",
                 server_optimizer="adam", server_lr=0.05),
    "momentum": dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="zero",
                     lr_schedule=StepLR(step_rounds=2, gamma=0.3), server_optimizer="sgd", server_momentum=0.9),
}


@pytest.mark.parametrize("algorithm, per_round, options", [
    ("fedalt", 2, "plain"), ("fedsim", 3, "plain"), ("fedalt", 2, "adam"), ("fedsim", 2, "momentum")])
def test_flower_rounds_in_process_reproduce_the_estimators_fit(tmp_path, monkeypatch, algorithm, per_round, options):
    """The strategy and the nodes' train handler, for a few rounds, give est.fit's sampled clients,
    shared and personal parameters: every draw is keyed by (seed, round, partition-id). So do the
    training options the app carries out: gradient clipping, the personal L2 penalty (towards zero
    or the initial personal part), the learning-rate schedule and the server's optimizer."""
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord

    try:  # flwr >= 1.42 makes a server's Message with the run and node ids of the ServerApp process
        from flwr.supercore.task_identity import TaskIdentity

        for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
            monkeypatch.setattr(TaskIdentity, name, value)
    except ImportError:
        pass

    import pfedest.flower as pf

    n_clients, n_rounds = 3, 3
    X, y, c = make_shifted_clients(n_clients=n_clients, n_samples_per_client=(20, 45), n_features=5, n_classes=3,
                                   random_state=1)
    # seed 5 samples clients (0, 2), (0, 1), (1, 2) in rounds 1-3 (with 2 per round)
    params = dict(algorithm=algorithm, clients_per_round=per_round, n_rounds=n_rounds, random_state=5,
                  **TRAINING_OPTIONS.get(options, {}))
    fitted = small_estimator(**params).fit(X, y, client_ids=c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of the estimator's is left out of the app
        app = export_app(small_estimator(**params), tmp_path / "app", classes=np.unique(y), n_features=5)
    app_dir = app / "pfedest_app"
    node_configs = {}
    for p in range(n_clients):  # node ids in the reverse order of the partitions
        np.savez(tmp_path / f"node{p}.npz", X=X[c == p], y=y[c == p])
        node_configs[1000 - 10 * p] = {"partition-id": p, "data-path": str(tmp_path / f"node{p}.npz"),
                                       "state-dir": str(tmp_path / f"state{p}")}
    run_config = run_config_for(fitted)
    grid = _InProcessGrid(app_dir, node_configs, run_config)
    spec = read_model(app_dir / "model.json")
    strategy = pf.PersonalizedFedAvg(spec.shared, RunSettings.from_config(run_config))
    arrays = pf._to_record(spec.shared)
    for r in range(1, n_rounds + 1):
        arrays, _ = strategy.aggregate_train(r, grid.send_and_receive(
            strategy.configure_train(r, arrays, ConfigRecord(), grid)))
    assert [rec["clients"] for rec in strategy.rounds] == [h["clients"] for h in fitted.history_]
    if per_round < n_clients:  # partial participation: the server asked each node its partition once
        assert sorted(node for kind, node in grid.sent if kind == "query") == sorted(node_configs)
        assert len({tuple(h["clients"]) for h in fitted.history_}) > 1
    shared = pf._to_tensors(arrays)
    for k, v in fitted.shared_params_.items():
        torch.testing.assert_close(shared[k], v, rtol=1e-5, atol=1e-6)
    for node, cfg in node_configs.items():
        personal = pf._to_tensors(grid.contexts[node].state.array_records["pfedest.personal"])
        for k, v in fitted.personal_params_.items():
            torch.testing.assert_close(personal[k], v[cfg["partition-id"]], rtol=1e-5, atol=1e-6)


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
        store.save(_context({}, {}, RecordDict()), {k: v[i] for k, v in est.personal_params_.items()},
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


# ------------------------------------------------------------------- a real Flower federation
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")


class Federation:
    """One SuperLink and its SuperNodes on 127.0.0.1, every process in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(root / "flwr-home"),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}
        (root / "flwr-home").mkdir(parents=True)
        (root / "flwr-home" / "config.toml").write_text(textwrap.dedent(f"""\
            [superlink]
            default = "pfedest-test"

            [superlink.pfedest-test]
            address = "127.0.0.1:{self.port}"
            insecure = true
            """))
        (root / "logs").mkdir()
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name, args):
        log = open(self.root / "logs" / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(args, env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        return self.procs[name]

    def start_superlink(self):
        self._start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1", "--port", str(self.port)])

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        _wait_for(listening, 90, "the SuperLink to listen")

    def start_node(self, partition: int, **extra):
        config = {"partition-id": partition, "data-path": str(self.root / f"node{partition}.npz"),
                  "state-dir": str(self.root / f"state{partition}"), **extra}
        node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        return self._start(f"node{partition}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(_free_port()), "--node-config", node_config])

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self):
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


STALL_CLIENT = '''"""The exported ClientApp plus a test mod: the node with node config stall-round=R hangs in
round R's training (writing a marker first), so that the test can kill it mid-round."""

import time
from pathlib import Path

from pfedest.flower import client_app


def stall(msg, context, call_next):
    cfg = msg.content.config_records.get("config")
    if (msg.metadata.message_type == "train" and cfg is not None
            and context.node_config.get("stall-round") == cfg["server-round"]):
        Path(context.node_config["state-dir"], "stalled").write_text(str(cfg["server-round"]))
        time.sleep(600)
    return call_next(msg, context)


app = client_app(Path(__file__).parent, mods=[stall])
'''


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    """Run the 4-round app once; kill node 1 in round 3 and restart it. Yields what the tests check."""
    pytest.importorskip("flwr")
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    root = tmp_path_factory.mktemp("flower")
    X, y, c = small_federation()
    for p in range(N_NODES):
        np.savez(root / f"node{p}.npz", X=X[c == p], y=y[c == p])
    app = export_app(small_estimator(n_rounds=N_ROUNDS), root / "app", classes=np.unique(y), n_features=5,
                     min_nodes=N_NODES, round_timeout=ROUND_TIMEOUT, straggler_wait=STRAGGLER_WAIT,
                     node_wait=120.0, evaluate_every=-1,
                     poll_interval=0.5, keep_rounds=True, result_dir=str(root / "result"))
    (app / "pfedest_app" / "client_app.py").write_text(STALL_CLIENT)
    fed = Federation(root)
    tic = time.monotonic()
    timeline = {}
    try:
        fed.start_superlink()
        for p in range(N_NODES):
            fed.start_node(p, **({"stall-round": STALL_ROUND} if p == VICTIM else {}))
        timeline["federation up"] = time.monotonic() - tic
        with open(root / "logs" / "flwr-run.log", "wb") as log:
            run = subprocess.Popen(["flwr", "run", str(app), "pfedest-test", "--stream"], env=fed.env, cwd=root,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            fed.procs["flwr-run"] = run
            marker = root / f"state{VICTIM}" / "stalled"
            _wait_for(lambda: marker.exists() or run.poll() is not None, 300, f"node {VICTIM} to stall")
            assert marker.exists(), (root / "logs" / "flwr-run.log").read_text()[-3000:]
            timeline["kill"] = time.monotonic() - tic
            fed.kill(f"node{VICTIM}")  # SIGKILL to the node and its ClientApp: it dies mid-round
            fed.start_node(VICTIM)      # the same node restarted, without the stall
            run.wait(timeout=400)
            fed.procs.pop("flwr-run")
        timeline["run done"] = time.monotonic() - tic
        summary = json.loads((root / "result" / "rounds.json").read_text())
        yield {"root": root, "app": app, "rc": run.returncode, "summary": summary, "data": (X, y, c),
               "spec": read_model(app / "pfedest_app" / "model.json"), "timeline": timeline,
               "log": (root / "logs" / "flwr-run.log").read_text()}
    finally:
        fed.stop()
        print(f"\nFlower loopback run: {json.dumps({k: round(v, 1) for k, v in timeline.items()})}, "
              f"with teardown {time.monotonic() - tic:.1f} s")


def _npz(path):
    with np.load(path) as data:
        return {k: torch.from_numpy(data[k].copy()) for k in data.files}


def _node_log(run, partition):
    path = run["root"] / f"state{partition}" / f"pfedest-{run['spec'].app_id}.log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _personal(run, partition):
    from pfedest.flower import NodeStore

    return NodeStore(run["root"] / f"state{partition}", run["spec"].app_id, partition).read()


def _replay(run, upto):
    """The run's rounds 1..upto in-process: each round, every node that answered runs
    pfedest.core.rounds.run_round on its rows of the whole federation with RoundKeys(seed, round), and the server
    averages with WeightedAverage; returns the shared and the stacked personal parameters."""
    X, y, c = run["data"]
    spec = run["spec"]
    settings = RunSettings(**run["summary"]["settings"])
    template = spec.template()
    order = np.argsort(c, kind="stable")
    counts = np.bincount(c)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codes = np.searchsorted(template.classes_, y[order])
    loss = make_loss(template.module_, dict(template.module_.named_buffers()), torch.as_tensor(X[order]),
                     torch.as_tensor(codes))
    engine = make_engine("loop", loss, spec.shared)
    shared = {k: v.clone() for k, v in spec.shared.items()}
    personal = {k: v[None].repeat(N_NODES, *([1] * v.dim())).clone() for k, v in spec.personal.items()}
    for record in run["summary"]["rounds"][:upto]:
        answered = sorted(record["clients"])
        outs = []
        for p in answered:
            out, _ = run_round(algorithm=ALGORITHMS[settings.algorithm], engine=engine, shared=shared,
                               personal_state=personal, counts=counts, offsets=offsets, sampled=np.array([p]),
                               rng=RoundKeys(settings.seed, record["round"]), batch_size=settings.batch_size,
                               steps=settings.steps(), lr=settings.step_sizes(), server_lr=1.0, chunk_size=None,
                               device=CPU)
            outs.append(out)
        average = WeightedAverage()
        average.add({k: torch.stack([o[k] for o in outs]) for k in shared},
                    torch.tensor(counts[answered], dtype=torch.float32))
        shared = average.step(shared, settings.server_lr)
    return shared, personal


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_flower_run_finishes_every_round(flower_run):
    assert flower_run["rc"] == 0, flower_run["log"][-3000:]
    rounds = flower_run["summary"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, N_ROUNDS + 1))
    assert "finished" in flower_run["summary"]


@pytest.mark.slow
def test_only_shared_parameters_crossed_the_network(flower_run):
    spec = flower_run["spec"]
    shared_names, personal_names = sorted(spec.shared), set(spec.personal)
    replies = [r for rnd in flower_run["summary"]["rounds"] for r in rnd["replies"]]
    assert len(replies) >= N_NODES * (N_ROUNDS - 1)
    for reply in replies:
        assert reply["keys"] == shared_names and not personal_names & set(reply["keys"])
        assert reply["accepted"], reply
    # Sizes: the serialized shared arrays only (the personal head would add to every reply).
    assert len({r["bytes"] for r in replies}) == 1
    # What the server saved is the shared part too.
    assert sorted(_npz(flower_run["root"] / "result" / "shared.npz")) == shared_names


@pytest.mark.slow
def test_the_shared_model_improved(flower_run):
    X, y, c = flower_run["data"]
    spec = flower_run["spec"]
    final = _npz(flower_run["root"] / "result" / "shared.npz")
    template = spec.template()
    before, after = [], []
    for p in range(N_NODES):
        personal = _personal(flower_run, p)
        mine = c == p
        before.append(personal_metrics(template, X[mine], y[mine], spec.shared, personal)["loss"])
        after.append(personal_metrics(template, X[mine], y[mine], final, personal)["loss"])
    # With each node's final personal part, the trained shared part fits better than the initial one.
    assert np.mean(after) < np.mean(before) - 0.05, (before, after)
    losses = [r["train_loss"] for r in flower_run["summary"]["rounds"]]
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_each_node_has_its_own_personal_parameters(flower_run):
    spec = flower_run["spec"]
    personal = [_personal(flower_run, p) for p in range(N_NODES)]
    for p in range(N_NODES):
        assert _max_diff(personal[p], spec.personal) > 1e-3  # trained
        for q in range(p):
            assert _max_diff(personal[p], personal[q]) > 1e-3


@pytest.mark.slow
def test_flower_run_equals_the_in_process_simulator(flower_run):
    full = [r for r in flower_run["summary"]["rounds"] if r["round"] < STALL_ROUND]
    assert all(sorted(r["clients"]) == list(range(N_NODES)) for r in full)  # full participation
    shared_3, _ = _replay(flower_run, STALL_ROUND - 1)
    flower_3 = _npz(flower_run["root"] / "result" / f"shared-round-{STALL_ROUND - 1}.npz")
    shared_end, personal_end = _replay(flower_run, N_ROUNDS)
    flower_end = _npz(flower_run["root"] / "result" / "shared.npz")
    personal_diff = max(_max_diff(_personal(flower_run, p), {k: v[p] for k, v in personal_end.items()})
                        for p in range(N_NODES))
    print(f"\nFlower vs in-process run_round: shared max|diff| after round {STALL_ROUND - 1} (all nodes) "
          f"{_max_diff(flower_3, shared_3):.2e}, after round {N_ROUNDS} (with the fault) "
          f"{_max_diff(flower_end, shared_end):.2e}; personal max|diff| {personal_diff:.2e}; "
          f"shared max|value| {max(float(v.abs().max()) for v in flower_end.values()):.2f}")
    assert _max_diff(flower_3, shared_3) < 1e-5
    assert _max_diff(flower_end, shared_end) < 1e-5
    assert personal_diff < 1e-5


@pytest.mark.slow
def test_a_killed_node_does_not_stop_or_corrupt_the_round(flower_run):
    rounds = {r["round"]: r for r in flower_run["summary"]["rounds"]}
    fault = rounds[STALL_ROUND]
    assert sorted(fault["clients"]) == [p for p in range(N_NODES) if p != VICTIM]
    assert fault["n_accepted"] == N_NODES - 1 and len(fault["missing"]) + len(fault["failures"]) >= 1
    final = _npz(flower_run["root"] / "result" / "shared.npz")
    assert all(torch.isfinite(v).all() for v in final.values())
    # The restarted node took part again after the fault.
    assert VICTIM in rounds[N_ROUNDS]["clients"], rounds[N_ROUNDS]


@pytest.mark.slow
def test_a_restarted_node_resumes_with_its_stored_personal_parameters(flower_run):
    log = _node_log(flower_run, VICTIM)
    pids = [e["pid"] for e in log]
    # Killed before finishing STALL_ROUND; back (a new process, an empty context.state) for the last.
    assert [e["round"] for e in log] == list(range(1, STALL_ROUND)) + [N_ROUNDS]
    assert [e["source"] for e in log] == ["init"] + ["state"] * (STALL_ROUND - 2) + ["disk"]
    assert log[-1]["start"] == log[-2]["end"]  # exactly where its last finished round left it
    survivors = _node_log(flower_run, 0)
    assert [e["source"] for e in survivors] == ["init"] + ["state"] * (N_ROUNDS - 1)
    assert len(set(pids)) == len(pids)  # every message ran in a fresh ClientApp process


@pytest.mark.slow
def test_load_result_predicts_with_each_nodes_personal_model(flower_run):
    X, y, c = flower_run["data"]
    root = flower_run["root"]
    est = load_result(root / "result", [root / f"state{p}" for p in range(N_NODES)])
    assert est.clients_.tolist() == list(range(N_NODES)) and len(est.history_) == N_ROUNDS
    final = _npz(root / "result" / "shared.npz")
    for p in range(N_NODES):
        mine = c == p
        expected = personal_metrics(est, X[mine], y[mine], final, _personal(flower_run, p))["accuracy"]
        assert est.score(X[mine], y[mine], client_ids=c[mine]) == pytest.approx(expected)
