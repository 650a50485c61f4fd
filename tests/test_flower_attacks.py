"""What a hostile or broken party can send pfedest.flower, and what it gets: the server refuses
malformed replies (keys, shapes, dtypes, values, weights, metrics) and rounds whose step is not
finite; a node sets a damaged state file aside and starts its personal part afresh.
(``model.json`` read without pickle: ``test_flower_model_file.py``.)

Each attack of issue 15 has a test here that failed before the fix; a hypothesis test then sends
sequences of generated malformed replies among valid ones and checks that the shared state equals
the state of the valid replies alone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pfedest.flower import RunSettings, export_app, read_model, run_config_for
from test_flower import flower_context, flower_message, pin_server_identity, small_estimator, small_federation

flwr = pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

import pfedest.flower as pf  # noqa: E402

LAYOUT = {"b": (3,), "w": (2, 3)}


def new_strategy(config=None, on_round=None):
    shared = {k: torch.zeros(shape) for k, shape in LAYOUT.items()}
    return pf.PersonalizedFedAvg(shared, RunSettings.from_config(config or {}), on_round=on_round)


def reply(content: dict, node: int, kind: str = "train") -> Message:
    """A node's reply (from node id ``node``) holding the records of ``content``."""
    return Message(RecordDict(content), reply_to=flower_message(RecordDict(), kind, dst=node))


def arrays_of(values: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def train_reply(values: dict, n, pid: int, node: int = None, **metrics) -> Message:
    metrics = {"num-examples": n, "partition-id": pid, **metrics}
    return reply({"arrays": arrays_of(values), "metrics": MetricRecord(metrics)}, node or 100 + pid)


def good(value: float) -> dict:
    return {k: np.full(shape, value, dtype=np.float32) for k, shape in LAYOUT.items()}


def run_round(strategy, replies, server_round=1):
    strategy.begin_round(server_round, {k: torch.zeros(s) for k, s in LAYOUT.items()}, [100, 101, 102])
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else pf.to_tensors(arrays)


# ------------------------------------------------------------------ items 1 and 2: train replies
@pytest.mark.parametrize("attack", ["num-examples 1e39", "values near 3e38", "float64 arrays", "bool arrays"])
def test_a_reply_that_would_break_the_mean_is_refused_and_the_rest_averaged(attack):
    """Before: 1e39 examples or 3e38 values made every shared parameter NaN; float64 arrays turned
    the shared parameters float64 (and every node failed every later round); bool arrays were
    averaged in."""
    values, n = good(1.0), 1
    if attack == "num-examples 1e39":
        n = 1e39
    elif attack == "values near 3e38":
        values = good(3e38)
    elif attack == "float64 arrays":
        values = {k: v.astype(np.float64) * 9 for k, v in values.items()}
    else:
        values = {k: np.ones(s, dtype=bool) for k, s in LAYOUT.items()}
    strategy = new_strategy()
    got = run_round(strategy, [train_reply(good(2.0), 3, 0), train_reply(values, n, 1),
                               train_reply(good(3.0 + 3e38), 1, 2) if attack == "values near 3e38" else
                               train_reply(good(2.0), 1, 2)])
    for k in LAYOUT:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], torch.full(LAYOUT[k], 2.0), rtol=0, atol=0)
    refused = [r for r in strategy.rounds[-1]["replies"] if not r["accepted"]]
    assert [r["partition_id"] for r in refused] == ([1, 2] if attack == "values near 3e38" else [1])
    shown = {"num-examples 1e39": "num-examples=1e+39 is not a whole number from 1 to 2147483647",
             "values near 3e38": "holds values beyond 1e+15 in magnitude",
             "float64 arrays": "has dtype float64, expected float32", "bool arrays": "has dtype bool"}[attack]
    assert shown in refused[0]["reason"]


def test_a_bool_only_reply_is_refused_not_raised():
    """Before: NotImplementedError inside aggregate_train."""
    strategy = new_strategy()
    bools = {k: np.zeros(s, dtype=bool) for k, s in LAYOUT.items()}
    assert run_round(strategy, [train_reply(bools, 4, 0)]) is None
    assert strategy.rounds[-1]["n_accepted"] == 0 and "dtype bool" in strategy.rounds[-1]["replies"][0]["reason"]


def test_a_round_whose_step_is_not_finite_is_refused_and_keeps_the_parameters():
    """Valid replies, but a server step that overflows float32: the round is refused and recorded,
    the optimizer's state and the parameters stay, and what the server saves is the previous one."""
    saved = []
    strategy = new_strategy({"server-lr": 1e38}, on_round=lambda record, shared: saved.append(shared))
    assert run_round(strategy, [train_reply(good(5.0), 2, 0), train_reply(good(7.0), 2, 1)]) is None
    record = strategy.rounds[-1]
    assert "would make b, w NaN or infinite" in record["refused"] and record["n_accepted"] == 2
    assert strategy.server.t == 0
    assert all(torch.equal(saved[-1][k], torch.zeros(s)) for k, s in LAYOUT.items())


# --------------------------------------------------------------------- item 3: evaluate replies
def evaluate_reply(node: int, **metrics) -> Message:
    return reply({"metrics": MetricRecord({"partition-id": node - 100, **metrics})}, node, "evaluate")


@pytest.mark.parametrize("accuracy", [None, float("nan"), 1e9, -0.5])
def test_evaluate_replies_without_a_possible_accuracy_are_left_out(accuracy):
    """Before: a reply without accuracy raised TypeError out of strategy.start(); NaN or 1e9 were averaged in."""
    strategy = new_strategy()
    strategy.begin_round(1, {k: torch.zeros(s) for k, s in LAYOUT.items()}, [100, 101])
    bad = {} if accuracy is None else {"accuracy": accuracy}
    metrics = strategy.aggregate_evaluate(1, [evaluate_reply(100, **{"num-examples": 10, "accuracy": 0.5,
                                                                     "loss": 1.0}),
                                              evaluate_reply(101, **{"num-examples": 30, "loss": 2.0, **bad})])
    assert dict(metrics) == {"accuracy": 0.5, "loss": 1.0}
    left_out = [r for r in strategy.rounds[-1]["evaluation"] if not r["accepted"]]
    assert len(left_out) == 1 and "accuracy" in left_out[0]["reason"]


class HostileGrid:
    """Two honest nodes and one hostile one that answers every message with ``attack``."""

    def __init__(self, attack):
        self.attack, self.sent = attack, []

    def get_node_ids(self):
        return [100, 101, 102]

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            ins = flower_message(m.content, kind, dst=node)
            if kind == "train":
                sent = pf.to_tensors(m.content.array_records["arrays"])
                if node == 102:
                    content = self.attack(sent)
                else:  # an honest node: one step towards 1 + its partition
                    values = {k: (v + (node - 99)).numpy() for k, v in sent.items()}
                    content = {"arrays": arrays_of(values),
                               "metrics": MetricRecord({"num-examples": 10, "partition-id": node - 100})}
            else:
                content = {"metrics": MetricRecord({"num-examples": 10, "partition-id": node - 100,
                                                    "accuracy": 0.5, "loss": 1.0})}
                if node == 102:
                    content = {"metrics": MetricRecord({"num-examples": 10, "loss": 1.0})}
            replies.append(Message(RecordDict(content), reply_to=ins))
        return replies


@pytest.mark.parametrize("attack", ["weight", "float64"])
def test_one_hostile_node_neither_stops_nor_corrupts_the_federation(attack, monkeypatch):
    """strategy.start() for three rounds with a node that sends 1e39 examples (or float64 arrays)
    and evaluations without accuracy ends with the honest nodes' model."""
    pin_server_identity(monkeypatch)

    def hostile(sent):
        if attack == "weight":
            values, n = {k: (v * 0 + 5).numpy() for k, v in sent.items()}, 1e39
        else:
            values, n = {k: v.double().numpy() for k, v in sent.items()}, 10
        return {"arrays": arrays_of(values), "metrics": MetricRecord({"num-examples": n, "partition-id": 2})}

    strategy = new_strategy({"num-rounds": 3, "evaluate-every": 1})
    result = strategy.start(grid=HostileGrid(hostile), initial_arrays=pf.to_record(
        {k: torch.zeros(s) for k, s in LAYOUT.items()}), num_rounds=3, timeout=10)
    final = pf.to_tensors(result.arrays)
    for k, shape in LAYOUT.items():  # each round adds the honest nodes' mean step, 1.5
        assert torch.equal(final[k], torch.full(shape, 4.5))
    assert all(r["n_accepted"] == 2 for r in strategy.rounds)
    assert result.evaluate_metrics_clientapp[3]["accuracy"] == 0.5


# ------------------------------------------------- the fuzz test: any sequence of malformed replies
def npy(array, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def raw_array(data: bytes, dtype="float32", shape=(3,)) -> Array:
    return Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data)


ARRAY_ATTACKS = {
    "missing key": lambda v: {"w": Array(v["w"])},
    "personal key": lambda v: {**{k: Array(a) for k, a in v.items()}, "head.weight": Array(np.ones(2, np.float32))},
    "renamed key": lambda v: {"b ": Array(v["b"]), "w": Array(v["w"])},
    "shape": lambda v: {"b": Array(v["b"][:2]), "w": Array(v["w"])},
    "transposed": lambda v: {"b": Array(v["b"]), "w": Array(np.ascontiguousarray(v["w"].T))},
    "scalar": lambda v: {"b": Array(np.array(1.0, dtype=np.float32)), "w": Array(v["w"])},
    "float64": lambda v: {k: Array(a.astype(np.float64)) for k, a in v.items()},
    "float16": lambda v: {k: Array(a.astype(np.float16)) for k, a in v.items()},
    "int32": lambda v: {k: Array(a.astype(np.int32)) for k, a in v.items()},
    "bool": lambda v: {k: Array(a != 0) for k, a in v.items()},
    "big-endian float32": lambda v: {k: Array(a.astype(">f4")) for k, a in v.items()},
    "complex64": lambda v: {k: Array(a.astype(np.complex64)) for k, a in v.items()},
    "nan": lambda v: {"b": Array(np.array([0, np.nan, 0], np.float32)), "w": Array(v["w"])},
    "inf": lambda v: {"b": Array(v["b"]), "w": Array(np.full((2, 3), -np.inf, np.float32))},
    "near float32 max": lambda v: {"b": Array(np.full(3, 3.3e38, np.float32)), "w": Array(v["w"])},
    "beyond the bound": lambda v: {"b": Array(np.full(3, 2e15, np.float32)), "w": Array(v["w"])},
    "pickled object array": lambda v: {"b": raw_array(npy(np.array([object()] * 3), allow_pickle=True), "O"),
                                       "w": Array(v["w"])},
    "not npy": lambda v: {"b": raw_array(b"\x00garbage" * 3), "w": Array(v["w"])},
    "npz bytes": lambda v: {"b": raw_array(_npz(v["b"])), "w": Array(v["w"])},
    "header claims 1e12 rows": lambda v: {"b": raw_array(_lying_header()), "w": Array(v["w"])},
    "another stype": lambda v: {"b": Array(dtype="float32", shape=(3,), stype="torch.Tensor",
                                           data=v["b"].tobytes()), "w": Array(v["w"])},
}

METRIC_ATTACKS = {  # a metric set to a bad value (None: left out)
    "num-examples missing": ("num-examples", None), "num-examples 0": ("num-examples", 0),
    "num-examples -5": ("num-examples", -5), "num-examples 1e39": ("num-examples", 1e39),
    "num-examples nan": ("num-examples", float("nan")), "num-examples inf": ("num-examples", float("inf")),
    "num-examples 2.5": ("num-examples", 2.5), "num-examples list": ("num-examples", [1, 2]),
    "num-examples 2**31": ("num-examples", 2**31), "num-examples 2**70": ("num-examples", 2**70),
    "partition-id -1": ("partition-id", -1), "partition-id 1.5": ("partition-id", 1.5),
    "partition-id list": ("partition-id", [0]), "train-loss-sum nan": ("train-loss-sum", float("nan")),
    "train-loss-sum -1": ("train-loss-sum", -1.0), "train-rows inf": ("train-rows", float("inf")),
    "train-rows list": ("train-rows", [1.0]),
}

RECORD_ATTACKS = ("no ArrayRecord", "two ArrayRecords", "no MetricRecord", "two MetricRecords", "node error")


def _npz(a) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, b=a)
    return buffer.getvalue()


def _lying_header() -> bytes:
    data = npy(np.zeros(3, np.float32))
    return data.replace(b"(3,)", b"(1000000000000,)".ljust(4), 1)


finite32 = st.floats(-100, 100, width=32, allow_nan=False)


@st.composite
def valid_values(draw):
    return {k: np.array(draw(st.lists(finite32, min_size=int(np.prod(s)), max_size=int(np.prod(s)))),
                        dtype=np.float32).reshape(s) for k, s in LAYOUT.items()}


ALL_ATTACKS = sorted(ARRAY_ATTACKS) + sorted(METRIC_ATTACKS) + list(RECORD_ATTACKS)


def malformed(kind: str, values: dict, metrics: dict, node: int) -> Message:
    """A train reply of attack ``kind``, built on the valid ``values`` and ``metrics``."""
    metrics = dict(metrics)
    arrays = ArrayRecord(ARRAY_ATTACKS[kind](values) if kind in ARRAY_ATTACKS else
                         {k: Array(v) for k, v in values.items()})
    if kind in METRIC_ATTACKS:
        key, value = METRIC_ATTACKS[kind]
        if value is None:
            del metrics[key]
        else:
            metrics[key] = value
    content = {"arrays": arrays, "metrics": MetricRecord(metrics)}
    if kind == "no ArrayRecord":
        del content["arrays"]
    elif kind == "two ArrayRecords":
        content["more"] = ArrayRecord({k: Array(v) for k, v in values.items()})
    elif kind == "no MetricRecord":
        del content["metrics"]
    elif kind == "two MetricRecords":
        content["more"] = MetricRecord({"num-examples": 1})
    elif kind == "node error":
        return Message(Error(code=0, reason="crashed"), reply_to=flower_message(RecordDict(), dst=node))
    return reply(content, node)


@st.composite
def malformed_reply(draw, node: int):
    """A train reply that must be refused, and the kind of attack (for the statistics)."""
    values = draw(valid_values())
    metrics = {"num-examples": draw(st.integers(1, 500)), "partition-id": draw(st.integers(0, 5)),
               "train-loss-sum": 1.0, "train-rows": 8.0}
    kind = draw(st.sampled_from(ALL_ATTACKS))
    return kind, malformed(kind, values, metrics, node)


@pytest.mark.parametrize("kind", ALL_ATTACKS)
def test_every_kind_of_malformed_reply_is_refused_and_recorded(kind):
    with_it, without = new_strategy(), new_strategy()
    valid = [train_reply(good(1.0), 3, 0), train_reply(good(5.0), 1, 1)]
    attack = malformed(kind, good(9.0), {"num-examples": 5, "partition-id": 2}, node=102)
    got = run_round(with_it, [valid[0], attack, valid[1]])
    expected = run_round(without, valid)
    assert all(torch.equal(got[k], expected[k]) and torch.equal(got[k], torch.full(s, 2.0))
               for k, s in LAYOUT.items())
    record = with_it.rounds[-1]
    if kind == "node error":
        assert record["failures"] == [{"node": "102", "reason": "crashed"}]
    else:
        (refused,) = [r for r in record["replies"] if not r["accepted"]]
        assert refused["node"] == "102" and refused["reason"]


SERVERS = [{}, {"server-optimizer": "sgd", "server-lr": 0.7, "server-momentum": 0.9},
           {"server-optimizer": "adam", "server-lr": 0.1}, {"weighting": "uniform"}]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server=st.sampled_from(SERVERS), data=st.data())
def test_the_shared_state_after_malformed_replies_is_that_of_the_valid_ones_alone(server, data):
    with_them, without = new_strategy(server), new_strategy(server)
    shared = {k: torch.zeros(s) for k, s in LAYOUT.items()}
    n_rounds = data.draw(st.integers(1, 4), label="rounds")
    for r in range(1, n_rounds + 1):
        n_valid = data.draw(st.integers(0, 3), label="valid replies")
        valid = [train_reply(data.draw(valid_values()), data.draw(st.integers(1, 500)), p, node=100 + p,
                             **{"train-loss-sum": 2.0, "train-rows": 8.0}) for p in range(n_valid)]
        attacks = data.draw(st.lists(malformed_reply(node=200),
                                     max_size=4), label="malformed replies")
        for kind, _ in attacks:
            event(f"refused: {kind}")
        mixed = data.draw(st.permutations(valid + [m for _, m in attacks]), label="arrival order")
        for strategy in (with_them, without):
            strategy.begin_round(r, shared, [100, 101, 102, 200])
        got = with_them.aggregate_train(r, mixed)[0]
        expected = without.aggregate_train(r, [m for m in mixed if any(m is v for v in valid)])[0]
        assert (got is None) == (expected is None)
        record = with_them.rounds[-1]
        errors = sum(kind == "node error" for kind, _ in attacks)
        assert len(record["failures"]) == errors
        assert sum(not x["accepted"] for x in record["replies"]) == len(attacks) - errors
        assert sum(x["accepted"] for x in record["replies"]) == n_valid
        if got is not None:
            got, expected = pf.to_tensors(got), pf.to_tensors(expected)
            for k in LAYOUT:
                assert got[k].dtype == torch.float32 and torch.equal(got[k], expected[k]), k
            shared = got
    a, b = with_them.server.state_dict(), without.server.state_dict()
    assert a["t"] == b["t"] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


EVALUATE_ATTACKS = {
    "accuracy missing": ("accuracy", None), "accuracy nan": ("accuracy", float("nan")),
    "accuracy 1e9": ("accuracy", 1e9), "accuracy -0.1": ("accuracy", -0.1), "accuracy 1.01": ("accuracy", 1.01),
    "accuracy list": ("accuracy", [0.5]), "loss missing": ("loss", None), "loss nan": ("loss", float("nan")),
    "loss inf": ("loss", float("inf")), "loss -1": ("loss", -1.0), "loss 1e300": ("loss", 1e300),
    "num-examples missing": ("num-examples", None), "num-examples 0": ("num-examples", 0),
    "num-examples 1e39": ("num-examples", 1e39), "num-examples 2.5": ("num-examples", 2.5),
    "partition-id -3": ("partition-id", -3), "partition-id list": ("partition-id", [1]),
}


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_evaluation_metrics_after_malformed_replies_are_those_of_the_valid_ones_alone(data):
    valid = []
    for p in range(data.draw(st.integers(0, 3))):
        valid.append(evaluate_reply(100 + p, **{"num-examples": data.draw(st.integers(1, 500)),
                                                "accuracy": data.draw(st.floats(0, 1)),
                                                "loss": data.draw(st.floats(0, 50))}))
    attacks = []
    for kind in data.draw(st.lists(st.sampled_from(sorted(EVALUATE_ATTACKS) + ["two MetricRecords"]),
                                   max_size=4)):
        event(f"left out: {kind}")
        metrics = {"num-examples": 10, "accuracy": 0.5, "loss": 1.0}
        if kind == "two MetricRecords":
            attacks.append(reply({"m": MetricRecord(metrics), "n": MetricRecord(metrics)}, 200, "evaluate"))
            continue
        key, value = EVALUATE_ATTACKS[kind]
        if value is None:
            del metrics[key]
        else:
            metrics[key] = value
        attacks.append(reply({"metrics": MetricRecord(metrics)}, 200, "evaluate"))
    mixed = data.draw(st.permutations(valid + attacks))
    got = new_strategy().aggregate_evaluate(1, mixed)
    expected = new_strategy().aggregate_evaluate(1, [m for m in mixed if any(m is v for v in valid)])
    assert (got is None) == (expected is None)
    if got is not None:
        assert dict(got) == dict(expected)
        assert 0.0 <= got["accuracy"] <= 1.0


# -------------------------------------------------------------------- item 4: a node's state file
@pytest.fixture
def node(tmp_path):
    X, y, c = small_federation()
    app = export_app(small_estimator(), tmp_path / "app", classes=np.unique(y), n_features=5)
    np.savez(tmp_path / "node1.npz", X=X[c == 1], y=y[c == 1])
    node_config = {"partition-id": 1, "data-path": str(tmp_path / "node1.npz"), "state-dir": str(tmp_path / "s1")}
    app_dir = app / "pfedest_app"
    spec = read_model(app_dir / "model.json")
    run_config = run_config_for(small_estimator())

    def train(shared=None, context=None, server_round=1):
        ins = RecordDict({"arrays": pf.to_record(spec.shared if shared is None else shared),
                          "config": ConfigRecord({"server-round": server_round})})
        context = context or flower_context(node_config, run_config)
        return pf.train_handler(flower_message(ins), context, app_dir)

    train()  # the node's file now holds its personal parameters after round 1
    state_file = Path(node_config["state-dir"]) / f"pfedest-{spec.app_id}.npz"
    assert state_file.is_file()
    return train, state_file, spec


def damage(state_file: Path, how: str, spec) -> None:
    personal = {k: v.clone() for k, v in spec.personal.items()}
    meta = {"partition_id": 1, "round": 1, "run_id": 7, "names": sorted(personal)}
    if how == "empty":
        state_file.write_bytes(b"")
    elif how == "truncated":
        state_file.write_bytes(state_file.read_bytes()[:100])
    elif how == "garbage":
        state_file.write_bytes(b"\x93NUMPY garbage" * 50)
    elif how == "pickled":  # an object array: numpy's "contains pickled data"
        np.savez(state_file.with_suffix(""), **{k: np.array([object()]) for k in personal})
    elif how == "nan":
        pf.write_npz(state_file, {k: torch.full_like(v, float("nan")) for k, v in personal.items()}, meta=meta)
    elif how == "float64":
        pf.write_npz(state_file, {k: v.double() for k, v in personal.items()}, meta=meta)
    elif how == "no meta":
        np.savez(state_file.with_suffix(""), **{k: v.numpy() for k, v in personal.items()})
    elif how == "other names":
        pf.write_npz(state_file, {f"x.{k}": v for k, v in personal.items()}, meta=meta)


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "pickled", "nan", "float64", "no meta",
                                 "other names"])
def test_a_damaged_state_file_is_set_aside_and_the_node_starts_afresh(node, how):
    """Before: BadZipFile, EOFError, "contains pickled data", KeyError, a dtype error, or NaN
    reported as "lower lr" in every round."""
    train, state_file, spec = node
    damage(state_file, how, spec)
    restarted = train(server_round=2)  # a new process: empty context.state, so the file is read
    assert restarted.content.metric_records["metrics"]["personal-source"] == pf.SOURCES["reset"]
    (aside,) = state_file.parent.glob(f"{state_file.name}.damaged-*")
    assert aside.stat().st_size == 0 or how != "empty"
    personal, meta = pf.read_npz(state_file)  # rewritten, whole, after the round
    assert meta["round"] == 2 and all(torch.isfinite(v).all() for v in personal.values())
    log = [json.loads(line) for line in state_file.with_name(f"pfedest-{spec.app_id}.log.jsonl").open()]
    assert log[-2]["event"] == "reset" and log[-2]["moved_to"] == aside.name and log[-2]["damaged"]
    # the server accepts what the restarted node sends
    strategy = pf.PersonalizedFedAvg(spec.shared, RunSettings.from_config({}))
    strategy.check_train_reply(restarted.content)


def test_a_state_file_of_another_partition_is_refused_and_left_alone(node):
    train, state_file, spec = node
    pf.write_npz(state_file, spec.personal, meta={"partition_id": 4, "round": 1, "run_id": 7})
    before = state_file.read_bytes()
    with pytest.raises(ValueError, match=r"pfedest-.*\.npz holds the personal parameters of partition 4, but this "
                                         r"node is partition 1: give each node a state-dir of its own"):
        train(server_round=2)
    assert state_file.read_bytes() == before


def test_a_node_refuses_non_finite_shared_parameters_naming_them(node):
    """Before: the node trained on them and blamed its learning rate ("Lower lr")."""
    train, _, spec = node
    broken = {k: torch.full_like(v, float("inf")) for k, v in spec.shared.items()}
    with pytest.raises(ValueError, match="The shared parameters from the server: .* holds NaN or infinite values"):
        train(shared=broken)
