"""The guard against harmful personalization: the decision rule, the estimator option, its state."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest import PartialPersonalizedClassifier
from pfedest.checkpoint import CheckpointError
from pfedest.core.guard import decide
from pfedest.datasets import make_shifted_clients
from pfedest.fit_state import ClientData
from pfedest.guard import guard_holdout

# ------------------------------------------------------------------------------------- decide


def test_decide_reads_the_paired_differences():
    # client 0: personal right where the fallback is wrong on 3 of 4 rows; client 1: personal worse;
    # client 2: one row only; client 3: no rows
    personal = [0, 0, 0, 1, 1, 0, 0]
    fallback = [1, 1, 1, 1, 0, 0, 1]
    clients = [0, 0, 0, 0, 1, 1, 2]
    weights, ev = decide(personal, fallback, clients, 4, margin=1.0)
    assert weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert ev.n_valid.tolist() == [4, 2, 1, 0]
    assert ev.gain[:3].tolist() == [0.75, -0.5, 1.0] and np.isnan(ev.gain[3])
    assert ev.gain_se[0] == pytest.approx(np.std([1, 1, 1, 0], ddof=1) / 2)
    assert np.isinf(ev.gain_se[2]) and np.isinf(ev.gain_se[3])
    # a large enough margin takes client 0's personal model away too
    assert decide(personal, fallback, clients, 4, margin=4.0)[0].tolist() == [0.0] * 4


def test_decide_refuses_bad_input():
    with pytest.raises(ValueError, match="1-D of one length"):
        decide([0.0, 1.0], [0.0], [0, 0], 1)
    with pytest.raises(ValueError, match=r"clients must lie in \[0, 2\)"):
        decide([0.0], [0.0], [2], 2)
    with pytest.raises(ValueError, match="margin"):
        decide([0.0], [0.0], [0], 1, margin=-1.0)


rows = st.lists(st.tuples(st.integers(0, 3), st.floats(0, 5), st.floats(0, 5)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows, st.floats(0, 5))
def test_a_client_whose_personal_model_is_not_better_never_keeps_it(data, margin):
    clients = np.array([c for c, _, _ in data], dtype=np.int64)
    personal = np.array([p for _, p, _ in data])
    fallback = np.array([f for _, _, f in data])
    weights, ev = decide(personal, fallback, clients, 4, margin)
    for c in range(4):
        mine = clients == c
        if mine.sum() < 2 or personal[mine].mean() >= fallback[mine].mean():
            assert weights[c] == 0.0
        if weights[c] == 1.0:
            assert ev.gain[c] > margin * ev.gain_se[c]


@settings(max_examples=100, deadline=None)
@given(rows, st.floats(0, 3), st.floats(0, 3))
def test_a_larger_margin_keeps_no_more_personal_models(data, a, b):
    clients = np.array([c for c, _, _ in data], dtype=np.int64)
    personal = np.array([p for _, p, _ in data])
    fallback = np.array([f for _, _, f in data])
    low, high = sorted((a, b))
    assert np.all(decide(personal, fallback, clients, 4, high)[0] <= decide(personal, fallback, clients, 4, low)[0])


# ---------------------------------------------------------------------------------- estimator
COMMON = dict(hidden_layer_sizes=(16,), n_rounds=12, tol=None, clients_per_round=4, batch_size=16,
              validation_fraction=0.25, random_state=0)


@pytest.fixture(scope="module")
def permuted():
    """Every client permutes the labels (4 classes: its own permutation, most likely): a personal output
    layer clearly helps all of them."""
    return make_shifted_clients(n_clients=6, n_samples_per_client=(40, 60), n_features=5, n_classes=4,
                                label_shift=1.0, feature_shift=0.0, class_sep=3.0, random_state=0)


@pytest.fixture(scope="module")
def guarded(permuted):
    X, y, c = permuted
    return PartialPersonalizedClassifier(guard="validation", **COMMON).fit(X, y, client_ids=c)


def test_where_personalization_clearly_helps_most_clients_keep_it(guarded, permuted):
    X, y, c = permuted
    assert guarded.guard_weights_.mean() >= 0.8, guarded.guard_evidence_
    assert np.all(guarded.guard_evidence_["n_valid"] >= 2)
    # the fallback is a model all clients share: on clients with their own labels it is far worse
    fallback_only = pickle.loads(pickle.dumps(guarded))
    fallback_only.guard_weights_[:] = 0.0
    assert guarded.score(X, y, c) > fallback_only.score(X, y, c) + 0.2


def test_clients_that_fall_back_are_answered_by_the_fallback(guarded, permuted):
    X, y, c = permuted
    est = pickle.loads(pickle.dumps(guarded))
    est.guard_weights_[:] = [1, 0, 1, 0, 1, 0]
    rows = np.isin(c, est.clients_[[1, 3, 5]])
    block = {k: v[None] for k, v in est.fallback_params_.items()}
    shared = est.shared_params_
    from pfedest.core.model import personalized_logits

    expected = personalized_logits(est.module_, {}, shared, block, torch.as_tensor(X[rows], dtype=torch.float32),
                                   torch.zeros(rows.sum(), dtype=torch.int64)).argmax(1).numpy()
    assert np.array_equal(est.predict(X[rows], c[rows]), est.classes_[expected])
    # and the others by their own personal part
    plain = pickle.loads(pickle.dumps(guarded))
    del plain.guard_weights_
    assert np.array_equal(est.predict(X[~rows], c[~rows]), plain.predict(X[~rows], c[~rows]))


def held_out(est, X, y, c):
    """The rows the guarded fit trained on: its holdout keyed by the fit's seed, dealt on row numbers."""
    index = {k: i for i, k in enumerate(est.clients_.tolist())}
    rows = np.array([index[k] for k in c.tolist()])
    numbers = np.arange(len(X), dtype=np.float64)[:, None]
    data = ClientData.from_rows(numbers, np.searchsorted(est.classes_, y), rows, len(est.clients_), "cpu",
                                dtype=torch.float64)
    train, _ = guard_holdout(data, est.validation_fraction, est._fit.seed)
    mask = np.zeros(len(X), dtype=bool)
    mask[train.X[:, 0].long().numpy()] = True
    return mask


def test_the_refit_guarded_model_is_the_plain_one_on_all_rows_with_the_decisions_of_the_held_out_ones(guarded,
                                                                                                     permuted):
    # without the refit, the guarded model is the unguarded one trained on the rows the guard did not
    # hold out; the refit (the default) trains again on every row, as scikit-learn refits after a
    # search: the plain model on all rows, the same seed, with the decisions the held-out rows made
    X, y, c = permuted
    mask = held_out(guarded, X, y, c)
    assert 0 < (~mask).sum() < len(X) / 2
    assert guarded.guard_refit is True
    unrefit = PartialPersonalizedClassifier(guard="validation", guard_refit=False, **COMMON).fit(X, y, client_ids=c)
    on_kept_rows = PartialPersonalizedClassifier(**COMMON).fit(X[mask], y[mask], client_ids=c[mask])
    on_all_rows = PartialPersonalizedClassifier(**COMMON).fit(X, y, client_ids=c)
    assert not hasattr(on_all_rows, "guard_weights_") and not hasattr(on_all_rows, "fallback_params_")
    for plain, est in ((on_kept_rows, unrefit), (on_all_rows, guarded)):
        for name in ("shared_params_", "personal_params_"):
            for k, v in getattr(plain, name).items():
                torch.testing.assert_close(getattr(est, name)[k], v)
        assert len(est.history_) == len(plain.history_) == COMMON["n_rounds"] and est.n_iter_ == plain.n_iter_
    # the held-out rows changed the model: the refit trained on them
    for k, v in unrefit.personal_params_.items():
        assert not torch.allclose(guarded.personal_params_[k], v)
    # the refit changes no decision: the weights and evidence are those the held-out rows made
    assert np.array_equal(guarded.guard_weights_, unrefit.guard_weights_)
    for k, v in unrefit.guard_evidence_.items():
        np.testing.assert_array_equal(guarded.guard_evidence_[k], v)
    # the fallback is the average of the personal parts the model answers with
    for k, v in guarded.fallback_params_.items():
        torch.testing.assert_close(v, on_all_rows.personal_params_[k].mean(0))


def test_a_refit_personalize_trains_the_new_clients_again_on_all_their_rows(guarded, permuted):
    X_new, y_new, _ = make_shifted_clients(n_clients=2, n_samples_per_client=50, n_features=5, n_classes=4,
                                           label_shift=1.0, feature_shift=0.0, class_sep=3.0, random_state=1)
    c_new = np.repeat([100, 101], 50)
    plain = pickle.loads(pickle.dumps(guarded))
    del plain.guard_weights_, plain.guard_evidence_, plain.fallback_params_
    plain.set_params(guard=None).personalize(X_new, y_new, c_new, epochs=3)
    est = pickle.loads(pickle.dumps(guarded))
    unrefit = pickle.loads(pickle.dumps(guarded)).set_params(guard_refit=False)
    est.personalize(X_new, y_new, c_new, epochs=3)
    unrefit.personalize(X_new, y_new, c_new, epochs=3)
    for k, v in plain.personal_params_.items():
        torch.testing.assert_close(est.personal_params_[k], v)
        torch.testing.assert_close(est.fallback_params_[k], guarded.fallback_params_[k])  # kept by personalize
    assert np.array_equal(est.guard_weights_, unrefit.guard_weights_)
    np.testing.assert_array_equal(est.guard_evidence_["gain"], unrefit.guard_evidence_["gain"])


def test_loop_and_vmap_engines_agree(permuted):
    X, y, c = permuted
    fits = {engine: PartialPersonalizedClassifier(guard="validation", engine=engine, **COMMON).fit(X, y, client_ids=c)
            for engine in ("loop", "vmap")}
    for k, v in fits["loop"].fallback_params_.items():
        torch.testing.assert_close(fits["vmap"].fallback_params_[k], v, rtol=1e-4, atol=1e-5)
    assert np.array_equal(fits["loop"].guard_weights_, fits["vmap"].guard_weights_)
    np.testing.assert_allclose(fits["loop"].guard_evidence_["gain"], fits["vmap"].guard_evidence_["gain"])


def test_the_decision_survives_pickling(guarded, permuted):
    X, y, c = permuted
    again = pickle.loads(pickle.dumps(guarded))
    assert np.array_equal(again.guard_weights_, guarded.guard_weights_)
    assert np.array_equal(again.predict(X, c), guarded.predict(X, c))


def test_the_decision_survives_state_dict(guarded, permuted):
    X, y, c = permuted
    guarded = pickle.loads(pickle.dumps(guarded))
    guarded.guard_weights_[0] = 1 - guarded.guard_weights_[0]  # no fit decided this: it must come from the state
    if True:
        state = guarded.state_dict()
        fresh = PartialPersonalizedClassifier(guard="validation", **COMMON).initialize(X, y, client_ids=c)
        assert not hasattr(fresh, "guard_weights_")
        fresh.load_state_dict(state)
        assert np.array_equal(fresh.guard_weights_, guarded.guard_weights_)
        for k in guarded.guard_evidence_:
            np.testing.assert_array_equal(fresh.guard_evidence_[k], guarded.guard_evidence_[k])
        assert np.array_equal(fresh.predict(X, c), guarded.predict(X, c))
        # through the checkpoint file format (weights_only loading)
        import tempfile
        from pathlib import Path

        from pfedest.checkpoint import load_checkpoint, save_checkpoint

        path = save_checkpoint(state, Path(tempfile.mkdtemp()) / "state.pt")
        other = PartialPersonalizedClassifier(guard="validation", **COMMON).initialize(X, y, client_ids=c)
        other.load_state_dict(load_checkpoint(path))
        assert np.array_equal(other.guard_weights_, guarded.guard_weights_)


def test_a_state_for_other_clients_is_refused_before_anything_changes(guarded, permuted):
    X, y, c = permuted
    state = guarded.state_dict()
    state["guard"]["weights"] = state["guard"]["weights"][:3]
    fresh = PartialPersonalizedClassifier(guard="validation", **COMMON).initialize(X, y, client_ids=c)
    before = {k: v.clone() for k, v in fresh.shared_params_.items()}
    with pytest.raises(CheckpointError, match="guard decisions are for 3 clients"):
        fresh.load_state_dict(state)
    for k, v in before.items():
        torch.testing.assert_close(fresh.shared_params_[k], v)


def test_warm_start_takes_the_fallback_anew_and_decides_again(permuted):
    X, y, c = permuted
    # without the refit (a warm start continues from the refit model: with it, two fits differ from
    # one, and the second decision is made by a model that has trained on its held-out rows)
    est = PartialPersonalizedClassifier(guard="validation", guard_refit=False, warm_start=True, **COMMON)
    est.fit(X, y, client_ids=c)
    first = {k: v.clone() for k, v in est.fallback_params_.items()}
    est.fit(X, y, client_ids=c)
    once = PartialPersonalizedClassifier(guard="validation", guard_refit=False, **{**COMMON, "n_rounds": 24})
    once.fit(X, y, client_ids=c)
    for k, v in once.fallback_params_.items():  # two fits of 12 rounds are one of 24, fallback included
        torch.testing.assert_close(est.fallback_params_[k], v)
        assert not torch.equal(est.fallback_params_[k], first[k])
    assert np.array_equal(est.guard_weights_, once.guard_weights_)
    # a warm start without the guard answers with the personal parts again
    est.set_params(guard=None).fit(X, y, client_ids=c)
    assert not hasattr(est, "guard_weights_") and not hasattr(est, "fallback_params_")


def test_personalize_decides_for_new_clients(guarded, permuted):
    X, y, c = permuted
    est = pickle.loads(pickle.dumps(guarded))
    X_new, y_new, _ = make_shifted_clients(n_clients=2, n_samples_per_client=50, n_features=5, n_classes=4,
                                           label_shift=1.0, feature_shift=0.0, class_sep=3.0, random_state=1)
    c_new = np.repeat([100, 101], 50)
    before = est.guard_weights_.copy()
    est.personalize(X_new, y_new, c_new, epochs=3)
    assert len(est.guard_weights_) == len(est.clients_) == 8
    assert np.array_equal(est.guard_weights_[:6], before)  # the known clients keep their decision
    assert np.all(est.guard_evidence_["n_valid"][6:] >= 2)  # the new ones decided on their own rows
    report = est.client_report(X_new, y_new, c_new)
    assert np.array_equal(np.asarray(report.clients["guard_weight"]), est.guard_weights_[6:])
    assert "guard:" in str(report)


def test_client_report_shows_the_decision_and_its_evidence(guarded, permuted):
    X, y, c = permuted
    report = guarded.client_report(X, y, c)
    table = report.clients
    assert np.array_equal(np.asarray(table["guard_weight"]), guarded.guard_weights_)
    np.testing.assert_array_equal(np.asarray(table["guard_gain"]), guarded.guard_evidence_["gain"])
    np.testing.assert_array_equal(np.asarray(table["guard_n_valid"]), guarded.guard_evidence_["n_valid"])
    plain = PartialPersonalizedClassifier(**COMMON).fit(X, y, client_ids=c).client_report(X, y, c)
    assert "guard_weight" not in plain.clients and "guard:" not in str(plain)


def test_unseen_clients_get_the_fallback(guarded, permuted):
    X, y, c = permuted
    est = pickle.loads(pickle.dumps(guarded)).set_params(unseen_clients="average")
    everyone_falls_back = pickle.loads(pickle.dumps(est))
    everyone_falls_back.guard_weights_[:] = 0.0
    assert np.array_equal(est.predict(X, np.full(len(X), 999)), everyone_falls_back.predict(X, c))


def test_the_guard_needs_a_personal_part(permuted):
    X, y, c = permuted
    with pytest.raises(ValueError, match="no personal part"):
        PartialPersonalizedClassifier(split="none", guard="validation", **COMMON).fit(X, y, client_ids=c)
    with pytest.raises(ValueError, match="guard"):
        PartialPersonalizedClassifier(guard="always").fit(X, y, client_ids=c)


def test_the_gallery_example_draws_every_client(tmp_path, load_example):
    example = load_example("plot_guard")
    acc = example.main(["--clients", "6", "--rounds", "3", "--out", str(tmp_path / "guard.png")])
    assert (tmp_path / "guard.png").stat().st_size > 0
    assert set(acc) == {"FedAvg", "without guard", "with guard"} and all(len(a) == 6 for a in acc.values())


def test_clients_too_small_to_hold_rows_out_get_the_fallback(permuted):
    X, y, c = permuted
    est = PartialPersonalizedClassifier(guard="validation", **{**COMMON, "validation_fraction": 0.01, "n_rounds": 2})
    est.fit(X, y, client_ids=c)  # fewer than 100 rows a client: none holds a row out
    assert est.guard_weights_.tolist() == [0.0] * 6 and est.guard_evidence_["n_valid"].tolist() == [0] * 6
