"""Callback state in checkpoints: a fit killed and resumed stops where the uninterrupted one does."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest import Callback, Checkpoint, EarlyStopping, EvaluateClients, PartialPersonalizedClassifier
from pfedest.checkpoint import CheckpointError, list_checkpoints, load_checkpoint

from test_checkpoint import CrashAt  # raises at the end of a round, before Checkpoint (run last) saves it

PARAMS = dict(n_rounds=30, clients_per_round=3, hidden_layer_sizes=(16,), finetune_epochs=2, random_state=0)


class RecordWait(Callback):
    """Copies EarlyStopping's wait counter into each record (keeps no state of its own)."""

    def on_round_end(self, estimator, record):
        record["waited"] = next(cb for cb in estimator.callbacks_ if isinstance(cb, EarlyStopping)).waited_


class CountRounds(Callback):
    """A stateful callback that runs last, like Checkpoint: listed before it, it runs before it."""

    run_last = True

    def on_train_begin(self, estimator):
        self.count_ = 0

    def on_round_end(self, estimator, record):
        self.count_ += 1
        record["counted"] = self.count_

    def state_dict(self):
        return {"count": self.count_}

    def load_state_dict(self, state):
        self.count_ = state["count"]


def callbacks(X, y, c, directory, *extra):
    val = slice(0, None, 3)
    return [EvaluateClients(X[val], y[val], c[val]), EarlyStopping(patience=3), RecordWait(), *extra,
            Checkpoint(directory, every=1, keep=2)]


def records(est):
    """History without the wall times; json makes NaN compare equal to NaN."""
    return json.dumps([{k: v for k, v in r.items() if k != "wall_time"} for r in est.history_], default=float)


def assert_same_fit(a, b):
    assert len(a.history_) == len(b.history_)
    assert records(a) == records(b)
    assert a.stop_reason_ == b.stop_reason_
    for k in a.shared_params_:
        assert torch.equal(a.shared_params_[k], b.shared_params_[k]), k
    for k in a.personal_params_:
        assert torch.equal(a.personal_params_[k], b.personal_params_[k]), k


@pytest.fixture(scope="module")
def reference(federated, tmp_path_factory):
    """The uninterrupted fit; early stopping ends its train stage before n_rounds."""
    X, y, c = federated
    est = PartialPersonalizedClassifier(**PARAMS, callbacks=callbacks(X, y, c, tmp_path_factory.mktemp("ref"),
                                                                      CountRounds()))
    est.fit(X, y, client_ids=c)
    stages = est.history_[:, "stage"]
    assert stages.count("train") < PARAMS["n_rounds"], "the data no longer triggers early stopping"
    return est


def crash_and_resume(federated, directory, crash_round, extra=()):
    X, y, c = federated
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=callbacks(X, y, c, directory, CrashAt(crash_round),
                                                                           *extra))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    resumed = PartialPersonalizedClassifier(**PARAMS, callbacks=callbacks(X, y, c, directory, *extra))
    return resumed.fit(X, y, client_ids=c)


def crash_rounds(reference):
    """Where a crash tests something: mid-patience in training, and just after the early stop."""
    history = reference.history_
    stop = history[:, "stage"].count("train")
    waiting = [r["round"] + 1 for r in history if r["stage"] == "train" and r["waited"] > 0 and r["round"] < stop]
    assert waiting, "no round of training ended with EarlyStopping waiting"
    # waiting[-1]: resumes from a checkpoint whose EarlyStopping had waited; stop + 1: from the round
    # the stop was requested in; stop + 2: from inside the fine-tuning after the early stop.
    return {"mid-patience": waiting[-1], "stop round": stop + 1, "fine-tuning": stop + 2}


@pytest.mark.parametrize("where", ["mid-patience", "stop round", "fine-tuning"])
def test_a_resumed_fit_stops_at_the_same_round_with_the_same_model(federated, reference, tmp_path, where):
    crash = crash_rounds(reference)[where]
    assert crash <= len(reference.history_)
    resumed = crash_and_resume(federated, tmp_path, crash, extra=[CountRounds()])
    early, counter, checkpoint = resumed.callbacks_[1], resumed.callbacks_[-2], resumed.callbacks_[-1]
    assert checkpoint.resumed_from_.endswith(f"round-{crash - 1:06d}.ckpt")
    assert_same_fit(reference, resumed)
    assert early.state_dict() == reference.callbacks_[1].state_dict()
    assert counter.count_ == reference.callbacks_[-2].count_ == len(reference.history_)


def test_a_callback_with_state_listed_after_checkpoint_runs_before_it(federated, tmp_path):
    # after Checkpoint, it would update its state after each save, and reset it after the restore
    X, y, c = federated
    params = {**PARAMS, "n_rounds": 3, "finetune_epochs": 0}
    est = PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=1), CountRounds()])
    est.fit(X, y, client_ids=c)
    assert [type(cb) for cb in est.callbacks_] == [CountRounds, Checkpoint]
    meta = json.loads(load_checkpoint(list_checkpoints(tmp_path)[0])["meta"])
    assert meta["callbacks"][0]["state"] == {"count": 3}  # the saved round's own count


def test_checkpoint_refuses_to_run_before_a_callback_with_state(tmp_path):
    # the estimator never orders them so; other code driving the callbacks might
    checkpoint = Checkpoint(tmp_path)
    driver = SimpleNamespace(callbacks_=[checkpoint, CountRounds()])
    with pytest.raises(ValueError, match="CountRounds runs after it"):
        checkpoint.on_train_begin(driver)


def test_the_checkpoint_holds_early_stoppings_state(federated, reference, tmp_path):
    crash = crash_rounds(reference)["mid-patience"]
    X, y, c = federated
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=callbacks(X, y, c, tmp_path, CrashAt(crash)))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    meta = json.loads(load_checkpoint(list_checkpoints(tmp_path)[0])["meta"])
    saved = [entry for entry in meta["callbacks"] if entry["class"] == "EarlyStopping"]
    assert len(saved) == 1
    assert saved[0]["state"]["waited"] == reference.history_[crash - 2]["waited"] > 0
    assert [entry["state"] for entry in meta["callbacks"] if entry["class"] != "EarlyStopping"] == [None] * 4


def test_resuming_with_other_stateful_callbacks_is_refused(federated, reference, tmp_path):
    X, y, c = federated
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=callbacks(X, y, c, tmp_path, CrashAt(5)))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    without = PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match="EarlyStopping #1; this fit's callbacks with state are none"):
        without.fit(X, y, client_ids=c)
    other_mode = PartialPersonalizedClassifier(**PARAMS, callbacks=[EarlyStopping(mode="min"), Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match="EarlyStopping #1 does not fit.*mode='max'"):
        other_mode.fit(X, y, client_ids=c)
    two = PartialPersonalizedClassifier(**PARAMS, callbacks=[EarlyStopping(), EarlyStopping(), Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match="EarlyStopping #1, EarlyStopping #2"):
        two.fit(X, y, client_ids=c)


def test_a_state_that_is_not_json_is_refused_when_saving(federated, tmp_path):
    class TensorState(Callback):
        def state_dict(self):
            return {"w": torch.zeros(1)}

    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=2, hidden_layer_sizes=(4,), random_state=0,
                                        callbacks=[TensorState(), Checkpoint(tmp_path, every=1)])
    with pytest.raises(TypeError, match="state_dict\\(\\) is not JSON-able.*Tensor"):
        est.fit(X, y, client_ids=c)
    assert list_checkpoints(tmp_path) == []


class FakeEstimator:
    def __init__(self):
        self.stops = []

    def request_stop(self, reason):
        self.stops.append(reason)


def feed(stopper, values, first_round=1):
    est = FakeEstimator()
    for i, value in enumerate(values):
        stopper.on_round_end(est, {"round": first_round + i, "valid_mean": value})
    return est.stops


@settings(max_examples=40, deadline=None, database=None)
@given(values=st.lists(st.one_of(st.sampled_from([0.1, 0.5, 0.9]), st.just(math.nan)), max_size=12),
       split=st.integers(0, 12), mode=st.sampled_from(["max", "min"]), patience=st.integers(1, 3))
def test_early_stopping_split_by_a_state_round_trip_decides_as_one_run(values, split, mode, patience):
    split = min(split, len(values))
    whole = EarlyStopping(patience=patience, mode=mode)
    whole.on_train_begin(None)
    stops = feed(whole, values)
    first = EarlyStopping(patience=patience, mode=mode)
    first.on_train_begin(None)
    stops_first = feed(first, values[:split])
    second = EarlyStopping(patience=patience, mode=mode)
    second.on_train_begin(None)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint stores it
    assert stops_first + feed(second, values[split:], first_round=split + 1) == stops
    assert second.state_dict() == json.loads(json.dumps(whole.state_dict()))


class Scripted(Callback):
    """Writes ``score`` into each record: ``scores[stage][k]`` in the k-th round of that stage."""

    def __init__(self, scores=None):
        self.scores = scores

    def on_round_end(self, estimator, record):
        k = estimator.history_[:, "stage"].count(record["stage"]) - 1
        record["score"] = self.scores[record["stage"]][k]


# training: best in its first round, stopped after 2 more; fine-tuning: worse than training's best
# throughout, best in its first round, stopped after 2 more of its 6 epochs
SCORES = {"train": [1.0, 0.5, 0.5, 0.5, 0.5, 0.5], "finetune": [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]}
STAGED = dict(n_rounds=6, finetune_epochs=6, clients_per_round=3, hidden_layer_sizes=(4,), random_state=0)


def staged_callbacks(*extra):
    return [Scripted(SCORES), EarlyStopping(monitor="score", patience=2), *extra]


def test_early_stopping_starts_afresh_in_each_stage(federated):
    X, y, c = federated
    est = PartialPersonalizedClassifier(**STAGED, callbacks=staged_callbacks()).fit(X, y, client_ids=c)
    assert est.history_[:, "stage"] == ["train"] * 3 + ["finetune"] * 3
    stopper = est.callbacks_[1]
    assert (stopper.stage_, stopper.best_, stopper.best_round_, stopper.waited_) == ("finetune", 0.5, 4, 2)
    assert "best 0.5 in round 4" in est.stop_reason_


@pytest.mark.parametrize("crash", [4, 5])
def test_early_stopping_per_stage_resumes_across_the_stage_boundary(federated, tmp_path, crash):
    # crash=4 resumes from the checkpoint of training's stopped last round, 5 from inside fine-tuning
    X, y, c = federated
    reference = PartialPersonalizedClassifier(**STAGED, callbacks=staged_callbacks()).fit(X, y, client_ids=c)
    crashing = PartialPersonalizedClassifier(**STAGED, callbacks=staged_callbacks(Checkpoint(tmp_path, every=1),
                                                                                  CrashAt(crash)))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    resumed = PartialPersonalizedClassifier(**STAGED, callbacks=staged_callbacks(Checkpoint(tmp_path, every=1)))
    resumed.fit(X, y, client_ids=c)
    assert resumed.callbacks_[-1].resumed_from_.endswith(f"round-{crash - 1:06d}.ckpt")
    assert_same_fit(reference, resumed)
    assert resumed.callbacks_[1].state_dict() == reference.callbacks_[1].state_dict()
