"""pfedest.flower.node: a node's local round is the simulator's for that client; its handlers keep
the personal parameters on the node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedest.core.algorithms import ALGORITHMS
from pfedest.core.engine import make_engine
from pfedest.core.model import make_loss
from pfedest.core.sampling import RoundKeys
from pfedest.flower import RunSettings, export_app, local_round, read_model, run_config_for
from test_flower import flower_context, flower_message, small_estimator, small_federation


def test_local_round_names_a_bad_round_or_partition():
    X, y, c = small_federation()
    est = small_estimator(n_rounds=1).fit(X, y, client_ids=c)
    settings = RunSettings.from_config(run_config_for(est))
    personal = {k: v[0] for k, v in est.personal_params_.items()}
    for server_round, partition_id, named in [(1, -1, "partition_id"), (1.5, 0, "server_round")]:
        with pytest.raises(ValueError, match=named):
            local_round(est, X[c == 0], y[c == 0], est.shared_params_, personal, settings,
                        server_round=server_round, partition_id=partition_id)


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

    from pfedest.flower import evaluate_handler, to_record, train_handler

    app_dir, node_config, run_config, spec = one_node
    ins = RecordDict({"arrays": to_record(spec.shared), "config": ConfigRecord({"server-round": 1})})
    context = flower_context(node_config, run_config)
    reply = train_handler(flower_message(ins), context, app_dir)
    sent = reply.content.array_records["arrays"]
    assert set(sent.keys()) == set(spec.shared) and not set(sent.keys()) & set(spec.personal)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == int((small_federation()[2] == 1).sum()) and metrics["personal-source"] == 0
    kept = context.state.array_records["pfedest.personal"]
    assert set(kept.keys()) == set(spec.personal)
    assert any(not np.array_equal(kept[k].numpy(), spec.personal[k].numpy()) for k in spec.personal)
    # Round 2 in the same run continues from context.state.
    ins2 = RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 2})})
    reply2 = train_handler(flower_message(ins2), context, app_dir)
    assert reply2.content.metric_records["metrics"]["personal-source"] == 1
    # A restarted node (empty context.state) resumes from its file: where round 2 left it.
    after_round_2 = {k: a.numpy().copy() for k, a in context.state.array_records["pfedest.personal"].items()}
    fresh = flower_context(node_config, run_config)
    ins3 = RecordDict({"arrays": reply2.content.array_records["arrays"], "config": ConfigRecord({"server-round": 3})})
    reply3 = train_handler(flower_message(ins3), fresh, app_dir)
    assert reply3.content.metric_records["metrics"]["personal-source"] == 2
    log = [json.loads(line) for line in open(Path(node_config["state-dir"]) / f"pfedest-{spec.app_id}.log.jsonl")]
    assert [e["source"] for e in log] == ["init", "state", "disk"]
    assert log[2]["start"] == log[1]["end"]
    from pfedest.flower import digest

    assert log[1]["end"] == digest({k: torch.from_numpy(v) for k, v in after_round_2.items()})
    # The evaluate handler reports the node's personal accuracy and sends no arrays at all.
    res = evaluate_handler(flower_message(ins3, "evaluate"), fresh, app_dir)
    assert not res.content.array_records
    assert 0.0 <= res.content.metric_records["metrics"]["accuracy"] <= 1.0


def test_train_handler_names_a_missing_node_setting(one_node):
    from flwr.app import ConfigRecord, RecordDict

    from pfedest.flower import to_record, train_handler

    app_dir, node_config, run_config, spec = one_node
    ins = RecordDict({"arrays": to_record(spec.shared), "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(ValueError, match="data-path"):
        train_handler(flower_message(ins), flower_context({"partition-id": 1}, run_config), app_dir)
    wrong = {k: v[..., :1] for k, v in spec.shared.items()}
    bad = RecordDict({"arrays": to_record(wrong), "config": ConfigRecord({"server-round": 1})})
    with pytest.raises(ValueError, match="shape"):
        train_handler(flower_message(bad), flower_context(node_config, run_config), app_dir)

