"""The stopping rule (tol, n_iter_no_change, early_stopping), and fits that must fail loudly or keep their ids."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from pfedest import Checkpoint, EarlyStopping, PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients
from pfedest.fit_state import ClientData

from test_checkpoint import CrashAt

SMALL = dict(hidden_layer_sizes=(8,), batch_size=16, clients_per_round=3, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    return make_shifted_clients(n_clients=6, n_samples_per_client=30, n_features=5, n_classes=3, random_state=0)


def test_a_fit_stops_by_itself_once_converged(data):
    X, y, c = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = PartialPersonalizedClassifier(**SMALL, n_rounds=500, lr=0.3, tol=1e-3, n_iter_no_change=5).fit(X, y, c)
    assert 0 < est.n_iter_ < 500 and len(est.history_) == est.n_iter_
    assert est.stop_reason_.startswith("converged: train_loss_pass has not improved by more than tol=0.001")
    # the monitored value: the mean training loss over the last pass over the clients (6 clients, 3 a round)
    losses = est.history_[:, "train_loss"]
    assert est.history_[-1]["train_loss_pass"] == pytest.approx(np.mean(losses[-2:]))
    assert np.isnan(est.history_[0]["train_loss_pass"])


def test_a_fit_that_runs_out_of_rounds_warns_and_says_so(data):
    X, y, c = data
    with pytest.warns(ConvergenceWarning, match="stopped after n_rounds=3 rounds before it converged"):
        est = PartialPersonalizedClassifier(**SMALL, n_rounds=3).fit(X, y, c)
    assert est.n_iter_ == 3 and est.stop_reason_.startswith("n_rounds: the 3 rounds ended")


def test_tol_none_runs_every_round_silently(data):
    X, y, c = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = PartialPersonalizedClassifier(**SMALL, n_rounds=4, tol=None).fit(X, y, c)
    assert est.n_iter_ == 4 and est.stop_reason_ is None


def test_the_estimator_rule_and_the_early_stopping_callback_agree(data):
    # one mechanism: the callback watching the same value with the same numbers stops at the same round
    X, y, c = data
    rule = PartialPersonalizedClassifier(**SMALL, n_rounds=400, lr=0.3, tol=1e-3, n_iter_no_change=5).fit(X, y, c)
    callback = PartialPersonalizedClassifier(
        **SMALL, n_rounds=400, lr=0.3, tol=None,
        callbacks=[EarlyStopping(monitor="train_loss_pass", mode="min", patience=5, min_delta=1e-3)])
    with pytest.raises(KeyError):  # with tol=None nothing computes train_loss_pass: the callback sees no value
        callback.callbacks_ if False else callback.fit(X, y, c).history_[-1]["train_loss_pass"]
    both = PartialPersonalizedClassifier(
        **SMALL, n_rounds=400, lr=0.3, tol=1e-3, n_iter_no_change=1000,
        callbacks=[EarlyStopping(monitor="train_loss_pass", mode="min", patience=5, min_delta=1e-3)]).fit(X, y, c)
    assert both.n_iter_ == rule.n_iter_


def test_early_stopping_monitors_held_out_rows_and_keeps_the_best_round(data):
    X, y, c = data
    params = dict(SMALL, lr=1.0, early_stopping=True, validation_fraction=0.2, n_iter_no_change=4, tol=0.0)
    est = PartialPersonalizedClassifier(**params, n_rounds=60).fit(X, y, c)
    valid = est.history_[:, "valid_loss"]
    best = int(np.argmin(valid))
    assert est.stop_reason_.startswith("converged: valid_loss")
    assert len(valid) - 1 - best == 4  # stopped n_iter_no_change rounds after the best one
    # its parameters are the best round's: a run stopped right there (same keyed draws) has them
    there = PartialPersonalizedClassifier(**{**params, "tol": None}, n_rounds=best + 1).fit(X, y, c)
    for k in est.shared_params_:
        assert torch.equal(est.shared_params_[k], there.shared_params_[k]), k
    for k in est.personal_params_:
        assert torch.equal(est.personal_params_[k], there.personal_params_[k]), k


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=1, max_size=6), fraction=st.floats(0.05, 0.5),
       n_classes=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_holdout_splits_each_clients_rows_and_keeps_its_labels(counts, fraction, n_classes, seed):
    rows = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(seed).integers(0, n_classes, len(rows))
    X = np.arange(len(rows), dtype=float)[:, None]
    data = ClientData.from_rows(X, labels, rows, len(counts), "cpu")
    train, valid = data.holdout(fraction, seed)
    assert (train.counts + valid.counts).tolist() == list(counts)
    assert (valid.counts == np.floor(np.array(counts) * fraction + 1e-9)).all() or \
        (np.abs(valid.counts - np.array(counts) * fraction) <= 1).all()
    assert (train.counts >= 1).all()
    seen = sorted(train.X[:, 0].tolist() + valid.X[:, 0].tolist())
    assert seen == sorted(X[:, 0].tolist())  # every row once
    for client in range(len(counts)):  # a label with enough rows on a client is held out in proportion
        for label in range(n_classes):
            have = int(((rows == client) & (labels == label)).sum())
            held = int(((valid.row_clients() == client) & (valid.y.numpy() == label)).sum())
            assert held <= have and abs(held - have * fraction) <= 1 + 1e-9


def test_a_killed_early_stopping_fit_resumes_to_the_same_end(data, tmp_path):
    X, y, c = data
    params = dict(SMALL, lr=1.0, early_stopping=True, n_iter_no_change=3, tol=0.0, n_rounds=40)
    reference = PartialPersonalizedClassifier(**params).fit(X, y, c)
    crashing = PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=1), CrashAt(6)])
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, c)
    resumed = PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=1)]).fit(X, y, c)
    assert resumed.n_iter_ == reference.n_iter_ and resumed.stop_reason_ == reference.stop_reason_
    for k in reference.shared_params_:
        assert torch.equal(resumed.shared_params_[k], reference.shared_params_[k]), k


def test_a_warm_start_fit_trains_again_with_the_rule(data):
    X, y, c = data
    est = PartialPersonalizedClassifier(**SMALL, n_rounds=3, tol=None).fit(X, y, c)
    est.set_params(warm_start=True, n_rounds=4)
    est.fit(X, y, c)
    assert est.n_iter_ == 4 and len(est.history_) == 7


# --------------------------------------------------------------------- client ids keep their identity
def test_a_float_id_joins_int_ids_without_changing_them():
    X = np.random.default_rng(0).normal(size=(40, 3))
    y, c = np.arange(40) % 2, np.array([2**60, 2**60 + 1] * 20)
    est = PartialPersonalizedClassifier(n_rounds=1, tol=None, random_state=0, hidden_layer_sizes=(4,)).fit(X, y, c)
    est.personalize(X[:4], y[:4], np.array([7.0] * 4))
    assert est.clients_.dtype == np.int64 and est.clients_.tolist() == [2**60, 2**60 + 1, 7]
    one, other = est.predict_proba(X[:1], [2**60]), est.predict_proba(X[:1], [2**60 + 1])
    assert not np.allclose(one, other)  # still two clients, each with its own model


def test_an_id_that_would_change_the_known_ids_is_refused():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y, c = np.arange(20) % 2, np.array([3, 4] * 10, dtype=np.uint64)
    est = PartialPersonalizedClassifier(n_rounds=1, tol=None, random_state=0, hidden_layer_sizes=(4,)).fit(X, y, c)
    with pytest.raises(TypeError, match="no exact uint64 value"):
        est.personalize(X[:2], y[:2], np.array([-1, -1]))
    with pytest.raises(TypeError, match="no exact uint64 value"):
        est.predict(X[:2], np.array([3.5, 3.5]))
    assert est.clients_.dtype == np.uint64 and est.clients_.tolist() == [3, 4]


# ------------------------------------------------------------------------- divergence, loudly
@pytest.mark.parametrize("params, names", [(dict(personal_lr=1e6), "personal_lr (now 1e+06)"),
                                           (dict(server_lr=1e30), "server_lr (now 1e+30)")])
# server_lr=1e30 is caught only by the probe after the round, on the round's clients' rows: the loop (1, 3), vmap (6)
@pytest.mark.parametrize("per_round", [1, 3, 6])
def test_a_finite_blow_up_is_caught_naming_the_setting_and_keeping_the_last_good_round(data, params, names, per_round):
    X, y, c = data
    small = {**SMALL, "clients_per_round": per_round}
    good = PartialPersonalizedClassifier(**small, n_rounds=2, tol=None).fit(X, y, c)
    est = PartialPersonalizedClassifier(**small, n_rounds=2, tol=None).fit(X, y, c)
    est.set_params(warm_start=True, n_rounds=1, **params)
    with pytest.raises(FloatingPointError, match=r"Training diverged in round 3 \(train\)") as caught:
        est.fit(X, y, c)
    assert names in str(caught.value) and "kept as it was after round 2" in str(caught.value)
    for k in good.personal_params_:
        assert torch.equal(est.personal_params_[k], good.personal_params_[k]), k
    for k in good.shared_params_:
        assert torch.equal(est.shared_params_[k], good.shared_params_[k]), k
    assert np.isfinite(est.predict_proba(X, c)).all()


def test_a_fit_under_a_float64_default_dtype_trains_in_float64(data):
    X, y, c = data
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        est = PartialPersonalizedClassifier(**SMALL, n_rounds=2, tol=None).fit(X, y, c)
    finally:
        torch.set_default_dtype(previous)
    assert all(v.dtype == torch.float64 for v in est.shared_params_.values())
    assert np.isfinite(est.predict_proba(X, c)).all()


def test_a_warm_start_fit_with_a_checkpoint_trains_on_instead_of_resuming_the_last_fit(data, tmp_path):
    X, y, c = data
    plain = PartialPersonalizedClassifier(**SMALL, n_rounds=4, tol=None).fit(X, y, c)
    plain.set_params(warm_start=True)
    plain.fit(X, y, c)
    saved = PartialPersonalizedClassifier(**SMALL, n_rounds=4, tol=None, callbacks=[Checkpoint(tmp_path, every=2)])
    saved.fit(X, y, c)
    saved.set_params(warm_start=True)
    saved.fit(X, y, c)
    assert len(saved.history_) == 8 and saved.callbacks_[0].resumed_from_ is None
    for k in plain.shared_params_:
        assert torch.equal(saved.shared_params_[k], plain.shared_params_[k]), k
