"""pfedest.flower.guard: a node holds out, updates the fallback and decides as the simulator does for
its client; the decision stays on the node."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pfedest.flower import RunSettings, export_app, local_round, read_model, run_config_for
from pfedest.flower.guard import PREFIX, node_decision, split_fallback, train_rows, with_fallback
from test_flower import N_NODES, flower_context, flower_message, small_estimator, small_federation

# a node gives no held-out row back (no refit): the simulator without guard_refit is what it matches
GUARD = dict(guard="validation", guard_refit=False, validation_fraction=0.25, clients_per_round=N_NODES, tol=None,
             weighting="uniform")


@pytest.fixture(scope="module")
def one_round():
    """An estimator after one guarded round of every client, and the one it started from."""
    X, y, c = small_federation()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = small_estimator(n_rounds=1, **GUARD).initialize(X, y, client_ids=c)
        est = small_estimator(n_rounds=1, **GUARD).fit(X, y, client_ids=c)
    return X, y, c, start, est


def test_the_nodes_personal_parts_average_to_the_simulators_fallback(one_round):
    # the fallback is the average personal part: in a round of every node with uniform weights, the
    # server's average of what the nodes send is the simulator's
    X, y, c, start, est = one_round
    settings = RunSettings.from_config(run_config_for(est))
    assert settings.guard == "validation" and settings.validation_fraction == 0.25
    sent = []
    for p in range(N_NODES):
        mine = c == p
        keep = train_rows(est, y[mine], settings, partition_id=p)
        assert 0 < (~keep).sum() < keep.sum()
        personal = {k: v[p] for k, v in start.personal_params_.items()}
        _, new_personal, _ = local_round(est, X[mine][keep], y[mine][keep], start.shared_params_, personal, settings,
                                         server_round=1, partition_id=p)
        sent.append(new_personal)
    for k, v in est.fallback_params_.items():
        torch.testing.assert_close(sum(s[k] for s in sent) / N_NODES, v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v, est.personal_params_[k].mean(0))


def test_a_node_decides_as_the_simulator_does_for_its_client(one_round):
    X, y, c, _, est = one_round
    settings = RunSettings.from_config(run_config_for(est))
    for p in range(N_NODES):
        mine = c == p
        held = ~train_rows(est, y[mine], settings, partition_id=p)
        personal = {k: v[p] for k, v in est.personal_params_.items()}
        weight, evidence = node_decision(est, X[mine][held], y[mine][held], est.shared_params_, personal,
                                         est.fallback_params_, settings.guard_margin)
        assert weight == est.guard_weights_[p]
        assert evidence["n_valid"] == est.guard_evidence_["n_valid"][p] == held.sum()
        assert evidence["gain"] == pytest.approx(est.guard_evidence_["gain"][p])


def test_fallback_arrays_travel_with_the_shared_ones():
    shared, fallback = {"w": torch.zeros(2)}, {"b": torch.ones(3)}
    both = with_fallback(shared, fallback)
    assert set(both) == {"w", PREFIX + "b"}
    back = split_fallback(both)
    assert back[0].keys() == shared.keys() and torch.equal(back[1]["b"], fallback["b"])


def test_handlers_send_the_fallback_and_keep_the_decision_on_the_node(tmp_path):
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, RecordDict

    from pfedest.flower import evaluate_handler, to_record, train_handler
    from pfedest.flower.guard import decision_file

    X, y, c = small_federation()
    est = small_estimator(guard="validation", validation_fraction=0.25)
    with pytest.warns(UserWarning, match="guard_refit=True"):  # a node does not give its held-out rows back
        app = export_app(est, tmp_path / "app", classes=np.unique(y), n_features=5)
    with warnings.catch_warnings():  # what a node does: nothing to warn about
        warnings.simplefilter("error")
        export_app(small_estimator(guard="validation", guard_refit=False), tmp_path / "app2",
                   classes=np.unique(y), n_features=5)
        export_app(small_estimator(), tmp_path / "app3", classes=np.unique(y), n_features=5)
    app_dir = app / "pfedest_app"
    spec = read_model(app_dir / "model.json")
    np.savez(tmp_path / "node1.npz", X=X[c == 1], y=y[c == 1])
    node_config = {"partition-id": 1, "data-path": str(tmp_path / "node1.npz"), "state-dir": str(tmp_path / "s1")}
    run_config = run_config_for(est)
    assert run_config["guard"] == "validation"
    arrays = with_fallback(spec.shared, spec.personal)
    ins = RecordDict({"arrays": to_record(arrays), "config": ConfigRecord({"server-round": 1})})
    context = flower_context(node_config, run_config)
    reply = train_handler(flower_message(ins), context, app_dir)
    sent = reply.content.array_records["arrays"]
    assert set(sent.keys()) == set(arrays)  # the shared part and, for the fallback, the personal part
    kept = context.state.array_records["pfedest.personal"]
    for k in spec.personal:
        np.testing.assert_array_equal(sent[PREFIX + k].numpy(), kept[k].numpy())
    held = ~train_rows(spec.template(), y[c == 1], RunSettings.from_config(run_config), 1)
    assert reply.content.metric_records["metrics"]["num-examples"] == int((~held).sum())
    # a server without the fallback in its arrays is refused by a guarded node
    bad = RecordDict({"arrays": to_record(spec.shared), "config": ConfigRecord({"server-round": 2})})
    with pytest.raises(ValueError, match="fallback"):
        train_handler(flower_message(bad), context, app_dir)
    # evaluate: the node decides on its held-out rows, writes the decision beside its state, sends no arrays
    ins2 = RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 1})})
    res = evaluate_handler(flower_message(ins2, "evaluate"), context, app_dir)
    assert not res.content.array_records
    decision = json.loads(decision_file(tmp_path / "s1", spec.app_id).read_text())
    assert decision["partition_id"] == 1 and decision["n_valid"] == int(held.sum())
    assert decision["weight"] in (0.0, 1.0) and decision["keeps_personal"] == (decision["weight"] == 1.0)
    assert "weight" not in res.content.metric_records["metrics"]


def test_a_node_without_held_out_rows_takes_the_fallback(one_round):
    X, y, c, _, est = one_round
    personal = {k: v[0] for k, v in est.personal_params_.items()}
    weight, evidence = node_decision(est, X[:0], y[:0], est.shared_params_, personal, est.fallback_params_, 0.5)
    assert weight == 0.0 and evidence["n_valid"] == 0
