"""pfedest.flower.strategy: PersonalizedFedAvg refuses what is not the shared part, and with the
nodes' handlers reproduces the estimator's fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pfedest.core.schedules import StepLR
from pfedest.core.server import ServerOptimizer
from pfedest.datasets import make_shifted_clients
from pfedest.flower import RunSettings, export_app, read_model, run_config_for
from test_flower import flower_context, flower_message, pin_server_identity, small_estimator


def test_strategy_refuses_replies_with_personal_keys_and_weights_by_examples():
    pytest.importorskip("flwr")
    from flwr.app import Error, Message, MetricRecord, RecordDict

    import pfedest.flower as pf

    shared = {"w": torch.zeros(2), "b": torch.zeros(1)}
    strategy = pf.PersonalizedFedAvg(shared, RunSettings.from_config({"server-lr": 1.0}))
    strategy.begin_round(1, shared, [101, 102, 103, 104, 105])
    ins = flower_message(RecordDict())

    def reply(params, n, pid):
        return Message(RecordDict({"arrays": pf.to_record(params),
                                   "metrics": MetricRecord({"num-examples": n, "partition-id": pid})}), reply_to=ins)

    replies = [
        reply({"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}, 1, 0),
        reply({"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([7.0])}, 3, 1),
        reply({"w": torch.ones(2), "b": torch.ones(1), "head": torch.ones(3)}, 100, 2),  # leaks a personal key
        reply({"w": torch.tensor([float("nan"), 0.0]), "b": torch.ones(1)}, 100, 3),
        Message(Error(code=0, reason="node crashed"), reply_to=ins),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    got = pf.to_tensors(arrays)
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
        self.contexts = {node: flower_context(cfg, run_config) for node, cfg in node_configs.items()}
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
            replies.append(handlers[kind](flower_message(m.content, kind, dst=node), self.contexts[node], self.app_dir))
        return replies


TRAINING_OPTIONS = {
    "adam": dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="init", lr_schedule="linear",
                 server_optimizer="adam", server_lr=0.05),
    "momentum": dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="zero",
                     lr_schedule=StepLR(step_rounds=2, gamma=0.3),
                     server_optimizer=ServerOptimizer("sgd", lr=0.8, momentum=0.9)),
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

    pin_server_identity(monkeypatch)

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
    arrays = pf.to_record(spec.shared)
    for r in range(1, n_rounds + 1):
        arrays, _ = strategy.aggregate_train(r, grid.send_and_receive(
            strategy.configure_train(r, arrays, ConfigRecord(), grid)))
    assert [rec["clients"] for rec in strategy.rounds] == [h["clients"] for h in fitted.history_]
    if per_round < n_clients:  # partial participation: the server asked each node its partition once
        assert sorted(node for kind, node in grid.sent if kind == "query") == sorted(node_configs)
        assert len({tuple(h["clients"]) for h in fitted.history_}) > 1
    shared = pf.to_tensors(arrays)
    for k, v in fitted.shared_params_.items():
        torch.testing.assert_close(shared[k], v, rtol=1e-5, atol=1e-6)
    for node, cfg in node_configs.items():
        personal = pf.to_tensors(grid.contexts[node].state.array_records["pfedest.personal"])
        for k, v in fitted.personal_params_.items():
            torch.testing.assert_close(personal[k], v[cfg["partition-id"]], rtol=1e-5, atol=1e-6)

