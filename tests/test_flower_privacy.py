"""pfedest.flower.privacy: user-level DP of the shared part in the Flower app, as the simulator runs it
(the nodes clip, the strategy samples as the accountant assumes, adds the keyed noise, counts epsilon)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.core.privacy import PrivateSum
from pfedest.datasets import make_shifted_clients
from pfedest.flower import RunSettings, export_app, read_model, run_config_for, write_model
from pfedest.flower.privacy import ServerPrivacy, check_flower_privacy, clip_update
from pfedest.privacy import DifferentialPrivacy, PrivateTraining, epsilon_of, round_event
from test_flower import flower_context, flower_message, pin_server_identity, small_estimator

dp_accounting = pytest.importorskip("dp_accounting")


def _norm(params):
    return float(sum(v.double().pow(2).sum() for v in params.values()).sqrt())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3), st.floats(1e-3, 10.0))
def test_a_clipped_update_never_exceeds_the_clip(seed, scale, clip):
    g = torch.Generator().manual_seed(seed)
    shared = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    new = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in shared.items()}
    sent = clip_update(new, shared, clip)
    delta = {k: sent[k].double() - shared[k].double() for k in shared}
    original = {k: new[k].double() - shared[k].double() for k in shared}
    # float32 rounding of the scaled delta (and of u + delta) can leave it a few ulps above the clip
    assert _norm(delta) <= clip * (1 + 1e-5) + 1e-6 * _norm(shared)
    if _norm(original) <= clip:  # within the clip: sent as it is
        for k in shared:
            torch.testing.assert_close(sent[k], new[k])
    else:  # clipped: the same direction
        cosine = sum((delta[k] * original[k]).sum() for k in shared) / (_norm(delta) * _norm(original))
        assert float(cosine) > 1 - 1e-5


def _replies(params_by_partition):
    from flwr.app import Message, MetricRecord, RecordDict

    import pfedest.flower as pf

    ins = flower_message(RecordDict())
    return [Message(RecordDict({"arrays": pf.to_record(p), "metrics": MetricRecord({"num-examples": 1,
                                                                                   "partition-id": pid})}),
                    reply_to=ins) for pid, p in params_by_partition.items()]


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_the_strategys_noisy_aggregate_and_epsilon_are_the_simulators(sampling):
    pytest.importorskip("flwr")
    import pfedest.flower as pf

    config = DifferentialPrivacy(clip=0.5, noise_multiplier=0.8, sampling=sampling)
    n_nodes, seed = 6, 3
    settings_ = RunSettings.from_config({"clients-per-round": 3, "seed": seed, "num-rounds": 4})
    shared = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    strategy = pf.PersonalizedFedAvg(shared, settings_, privacy=config)
    reference = PrivateTraining(config, n_nodes, 3, 4, [])
    events, current = [], shared
    for r in (1, 2, 3):
        nodes = [100 + p for p in range(n_nodes)]
        strategy.partitions.update({n: n - 100 for n in nodes})
        sampled = strategy.begin_round(r, current, nodes)
        expected = reference.sample(np.random.default_rng([seed, r]), np.arange(n_nodes))
        assert [int(n) - 100 for n in sampled] == expected.tolist()
        g = torch.Generator().manual_seed(r)
        sent = {int(n) - 100: {k: v + 2 * torch.randn(v.shape, generator=g) for k, v in current.items()}
                for n in sampled}  # unclipped: the server clips whatever a node sends
        arrays, metrics = strategy.aggregate_train(r, _replies(sent))
        got = pf.to_tensors(arrays)
        total = reference.aggregator(current, seed, r)
        if sent:
            total.add({k: torch.stack([sent[p][k] for p in sorted(sent)]) for k in current}, torch.ones(len(sent)))
        want = total.mean()  # server-lr 1 and plain SGD: the server steps to the noisy mean
        for k in current:
            torch.testing.assert_close(got[k], want[k])
        events.append(round_event(sampling, n_nodes, 3, 0.8))
        assert strategy.rounds[-1]["epsilon"] == pytest.approx(epsilon_of(events, 1e-5, "rdp", sampling), rel=1e-9)
        assert metrics["epsilon"] == strategy.rounds[-1]["epsilon"] and strategy.rounds[-1]["dp_clip"] == 0.5
        current = got
    assert strategy.rounds[-1]["epsilon"] > strategy.rounds[0]["epsilon"] > 0


def test_a_round_without_replies_still_releases_noise_and_counts():
    pytest.importorskip("flwr")
    import pfedest.flower as pf

    shared = {"w": torch.zeros(4)}
    config = DifferentialPrivacy(clip=1.0, noise_multiplier=1.0)
    strategy = pf.PersonalizedFedAvg(shared, RunSettings.from_config({"clients-per-round": 2, "seed": 1}),
                                     privacy=config)
    strategy.begin_round(1, shared, [7, 8, 9, 10])
    arrays, metrics = strategy.aggregate_train(1, [])
    got = pf.to_tensors(arrays)["w"]
    assert torch.count_nonzero(got) == 4  # the noise over the expected 2 clients
    assert metrics["nodes"] == 0 and math.isfinite(metrics["epsilon"]) and metrics["epsilon"] > 0


class _Grid:
    """The strategy's messages delivered to the nodes' handlers in this process (a SuperLink's job)."""

    def __init__(self, app_dir, node_configs, run_config):
        self.app_dir = app_dir
        self.contexts = {node: flower_context(cfg, run_config) for node, cfg in node_configs.items()}
        self.train_replies = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from pfedest.flower import query_handler, train_handler

        handlers = {"train": train_handler, "query": query_handler}
        replies = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            reply = handlers[kind](flower_message(m.content, kind, dst=node), self.contexts[node], self.app_dir)
            if kind == "train":
                self.train_replies.append((m, reply))
            replies.append(reply)
        return replies


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_a_private_flower_run_in_process_reproduces_the_private_fit(tmp_path, monkeypatch, sampling):
    """Nodes' train handler and the strategy, over a few rounds, give the private fit's sampled
    clients, shared parameters and epsilon; every node sends an update within the clip, counted once."""
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord

    pin_server_identity(monkeypatch)
    import pfedest.flower as pf

    n_clients, n_rounds, clip = 4, 3, 0.3
    X, y, c = make_shifted_clients(n_clients=n_clients, n_samples_per_client=(20, 45), n_features=5, n_classes=3,
                                   random_state=1)
    params = dict(clients_per_round=2, n_rounds=n_rounds, random_state=5,
                  privacy=DifferentialPrivacy(clip=clip, noise_multiplier=0.7, sampling=sampling))
    # tol=None: the app has no stopping rule, and a private fit warns about one
    fitted = small_estimator(tol=None, **params).fit(X, y, client_ids=c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of the estimator's is left out of the app
        app = export_app(small_estimator(**params), tmp_path / "app", classes=np.unique(y), n_features=5)
    app_dir = app / "pfedest_app"
    node_configs = {}
    for p in range(n_clients):
        np.savez(tmp_path / f"node{p}.npz", X=X[c == p], y=y[c == p])
        node_configs[1000 - 10 * p] = {"partition-id": p, "data-path": str(tmp_path / f"node{p}.npz"),
                                       "state-dir": str(tmp_path / f"state{p}")}
    run_config = run_config_for(fitted)
    grid = _Grid(app_dir, node_configs, run_config)
    spec = read_model(app_dir / "model.json")
    strategy = pf.PersonalizedFedAvg(spec.shared, RunSettings.from_config(run_config),
                                     privacy=spec.estimator_params()["privacy"])
    arrays = pf.to_record(spec.shared)
    for r in range(1, n_rounds + 1):
        arrays, _ = strategy.aggregate_train(r, grid.send_and_receive(
            strategy.configure_train(r, arrays, ConfigRecord(), grid)))
    assert [rec["clients"] for rec in strategy.rounds] == [h["clients"] for h in fitted.history_]
    assert [rec["epsilon"] for rec in strategy.rounds] == pytest.approx([h["epsilon"] for h in fitted.history_],
                                                                        rel=1e-9)
    assert [rec["dp"] for rec in strategy.rounds] == [h["dp"] for h in fitted.history_]
    shared = pf.to_tensors(arrays)
    for k, v in fitted.shared_params_.items():
        torch.testing.assert_close(shared[k], v, rtol=1e-5, atol=1e-6)
    assert grid.train_replies
    for ins, reply in grid.train_replies:
        received, sent = pf.to_tensors(ins.content.array_records["arrays"]), pf.to_tensors(reply.content["arrays"])
        assert _norm({k: sent[k].double() - received[k].double() for k in sent}) <= clip * (1 + 1e-5)
        assert reply.content["metrics"]["num-examples"] == 1  # every client counts once
    # the result folder the ServerApp would write: load_result's history_ keeps each round's epsilon
    result = tmp_path / "result"
    result.mkdir()
    (result / "model.json").write_text((app_dir / "model.json").read_text())
    pf.write_npz(result / "shared.npz", shared)
    (result / "rounds.json").write_text(json.dumps({"settings": {}, "rounds": strategy.rounds}, default=str))
    trained = [cfg["state-dir"] for cfg in node_configs.values()  # a node never sampled has no state file
               if (tmp_path / cfg["state-dir"] / pf.NodeStore.file_name(spec.app_id)).is_file()]
    loaded = pf.load_result(result, trained)
    assert [h["epsilon"] for h in loaded.history_] == [h["epsilon"] for h in fitted.history_]
    assert loaded.privacy.get_params() == fitted.privacy.get_params()


def test_model_json_carries_the_privacy_settings_without_pickle(tmp_path):
    config = DifferentialPrivacy(clip=0.25, target_epsilon=3.0, delta=1e-6, sampling="fixed")
    path = write_model(small_estimator(privacy=config), tmp_path / "model.json", classes=[0, 1], n_features=3)
    raw = json.loads(path.read_text())
    assert raw["objects"]["privacy"] == {"class": "pfedest.privacy:DifferentialPrivacy",
                                         "params": config.get_params(deep=False)}
    back = read_model(path).estimator_params()["privacy"]
    assert isinstance(back, DifferentialPrivacy) and back.get_params() == config.get_params()
    assert read_model(write_model(small_estimator(), tmp_path / "plain.json", classes=[0, 1],
                                  n_features=3)).estimator_params()["privacy"] is None


def test_settings_the_app_cannot_run_privately_are_refused(tmp_path):
    with pytest.raises(ValueError, match="adaptive clipping"):
        write_model(small_estimator(privacy=DifferentialPrivacy(noise_multiplier=1.0, target_quantile=0.5)),
                    tmp_path / "m.json", classes=[0, 1], n_features=3)
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        write_model(small_estimator(privacy=DifferentialPrivacy()), tmp_path / "m.json", classes=[0, 1],
                    n_features=3)
    with pytest.raises(TypeError, match="DifferentialPrivacy"):
        check_flower_privacy({"clip": 1.0})
    with pytest.raises(ValueError, match="guard"):
        check_flower_privacy(DifferentialPrivacy(noise_multiplier=1.0), guard="validation")
    # a crafted model.json: the class is right, its numbers are not
    path = write_model(small_estimator(privacy=DifferentialPrivacy(noise_multiplier=1.0)), tmp_path / "m.json",
                       classes=[0, 1], n_features=3)
    raw = json.loads(path.read_text())
    raw["objects"]["privacy"]["params"]["clip"] = -1.0
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="clip must be a number"):
        ServerPrivacy(read_model(path).estimator_params()["privacy"], seed=0, planned=3)
    pytest.importorskip("flwr")
    import pfedest.flower as pf

    with pytest.raises(ValueError, match="guard"):
        pf.PersonalizedFedAvg({"w": torch.zeros(2)}, RunSettings.from_config({"guard": "validation"}),
                              privacy=DifferentialPrivacy(noise_multiplier=1.0))


def test_private_sum_of_clipped_replies_is_that_of_unclipped_ones():
    # the node's clipping and the server's compose: clipping twice changes a sum by float32 rounding only
    g = torch.Generator().manual_seed(0)
    shared = {"w": torch.randn(5, generator=g)}
    new = [{"w": shared["w"] + 3 * torch.randn(5, generator=g)} for _ in range(4)]
    sums = []
    for sent in (new, [clip_update(p, shared, 0.7) for p in new]):
        total = PrivateSum(shared, clip=0.7, noise_std=0.5, denominator=3.0,
                           generator=torch.Generator().manual_seed(9))
        total.add({"w": torch.stack([p["w"] for p in sent])}, torch.ones(4))
        sums.append(total.mean()["w"])
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-6, atol=1e-6)
