"""Per-client cross-validation: folds inside each client, routing of client_ids, GridSearchCV."""

import numpy as np
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_validate

from pfedest import AdapterSplit, HeadSplit, PartialPersonalizedClassifier
from pfedest.evaluation.model_selection import ClientKFold, train_test_split

client_arrays = st.lists(st.integers(0, 6), min_size=1, max_size=60).map(np.array)


def tiny(**params):
    return PartialPersonalizedClassifier(n_rounds=3, hidden_layer_sizes=(8,), random_state=0, **params)


# ----------------------------------------------------------------- ClientKFold
@settings(max_examples=60, deadline=None, database=None)
@given(ids=client_arrays, n_splits=st.integers(2, 5), shuffle=st.booleans())
def test_every_test_row_has_its_client_in_training_and_rows_are_tested_once(ids, n_splits, shuffle):
    cv = ClientKFold(n_splits, shuffle=shuffle, random_state=0 if shuffle else None)
    X = np.zeros((len(ids), 1))
    clients, counts = np.unique(ids, return_counts=True)
    try:
        splits = list(cv.split(X, client_ids=ids))
    except ValueError as exc:  # allowed only when too few clients can be tested
        assert "has no test row" in str(exc)
        assert np.sum(counts >= 2) < n_splits
        return
    times_tested = np.zeros(len(ids), dtype=int)
    for train, test in splits:
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(ids)
        assert set(ids[test]) <= set(ids[train])
        times_tested[test] += 1
    big = np.isin(ids, clients[counts >= 2])
    assert np.all(times_tested[big] == 1)
    assert np.all(times_tested[~big] == 0)  # single-row clients always train
    for client, n in zip(clients, counts):
        if n >= n_splits:  # fold sizes inside one client differ by at most one row
            sizes = [np.sum(ids[test] == client) for _, test in splits]
            assert max(sizes) - min(sizes) <= 1


def test_small_clients_are_tested_one_row_per_fold_and_folds_stay_balanced():
    ids = np.repeat(np.arange(6), 2)  # six clients of two rows, three folds
    folds = list(ClientKFold(3).split(np.zeros((12, 1)), client_ids=ids))
    assert [len(test) for _, test in folds] == [4, 4, 4]
    for _, test in folds:
        assert len(np.unique(ids[test])) == len(test)  # at most one row per client per fold


def test_split_is_reproducible_and_shuffle_changes_it():
    ids = np.repeat(np.arange(4), 10)
    X = np.zeros((40, 1))
    same = [[t.tolist() for _, t in ClientKFold(3, shuffle=True, random_state=s).split(X, client_ids=ids)]
            for s in (1, 1, 2)]
    assert same[0] == same[1]
    assert same[0] != same[2]
    contiguous = [test for _, test in ClientKFold(2).split(X, client_ids=ids)]
    assert contiguous[0][:5].tolist() == [0, 1, 2, 3, 4]


def test_groups_are_read_as_client_ids():
    ids = np.repeat(np.arange(3), 4)
    X = np.zeros((12, 1))
    by_ids = [t.tolist() for _, t in ClientKFold(2).split(X, client_ids=ids)]
    by_groups = [t.tolist() for _, t in ClientKFold(2).split(X, groups=ids)]
    assert by_ids == by_groups


@pytest.mark.parametrize("kwargs, match", [
    ({"n_splits": 1}, "n_splits"),
    ({"n_splits": 2.5}, "n_splits"),
    ({"n_splits": 3, "random_state": 0}, "shuffle=True"),
])
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClientKFold(**kwargs)


def test_split_needs_client_ids_of_the_right_length():
    X = np.zeros((6, 1))
    with pytest.raises(ValueError, match="client_ids is required"):
        next(ClientKFold(2).split(X))
    with pytest.raises(ValueError, match=r"one id per row of X \(6 rows\)"):
        next(ClientKFold(2).split(X, client_ids=[0, 1]))
    with pytest.raises(ValueError, match="Fold 2 of 3 has no test row"):
        list(ClientKFold(3).split(X[:4], client_ids=[0, 0, 1, 2]))


def test_splitter_requests_client_ids_by_default():
    request = ClientKFold().get_metadata_routing().split.requests
    assert request["client_ids"] is True


# --------------------------------------------------- with scikit-learn's tools
def test_grid_search_routes_client_ids_to_the_splitter_fit_and_score(federated):
    X, y, c = federated
    cv = ClientKFold(2, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(tiny(split=AdapterSplit()), {"split__fraction": [0.1, 0.4]}, cv=cv)
        search.fit(X, y, client_ids=c)  # no set_*_request call: ClientKFold asks for client_ids itself
    # The first candidate's first fold, recomputed by hand: same folds, same fit, same per-client score.
    train, test = next(cv.split(X, client_ids=c))
    est = clone(tiny(split=AdapterSplit())).set_params(split__fraction=0.1)
    est.fit(X[train], y[train], client_ids=c[train])
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(est.score(X[test], y[test], c[test]))
    assert search.best_estimator_.personal_fraction_ > 0


def test_without_metadata_routing_the_error_says_how_to_turn_it_on(federated):
    X, y, c = federated
    with sklearn.config_context(enable_metadata_routing=False):
        with pytest.raises(ValueError, match="enable_metadata_routing=True"):
            GridSearchCV(tiny(), {"lr": [0.1]}, cv=ClientKFold(2)).fit(X, y, client_ids=c)


def test_cross_validate_with_client_ids_as_params(federated):
    X, y, c = federated
    with sklearn.config_context(enable_metadata_routing=True):
        scores = cross_validate(tiny(), X, y, cv=ClientKFold(3), params={"client_ids": c})["test_score"]
    assert scores.shape == (3,)
    assert np.all((0 <= scores) & (scores <= 1))


def test_grid_over_split_kinds_and_fractions_gives_the_same_results_with_two_jobs(federated):
    X, y, c = federated
    grid = [{"split": ["none"]}, {"split": [HeadSplit()], "split__fraction": [0.05, 0.5]}]
    results = []
    for n_jobs in (1, 2):
        with sklearn.config_context(enable_metadata_routing=True):
            search = GridSearchCV(tiny(), grid, cv=ClientKFold(2), n_jobs=n_jobs).fit(X, y, client_ids=c)
        results.append(search.cv_results_)
    assert np.all(np.isfinite(results[0]["mean_test_score"]))
    np.testing.assert_allclose(results[0]["mean_test_score"], results[1]["mean_test_score"])
    assert [type(p["split"]).__name__ if not isinstance(p["split"], str) else p["split"]
            for p in results[1]["params"]] == ["none", "HeadSplit", "HeadSplit"]


# ----------------------------------------------------------- train_test_split
@settings(max_examples=60, deadline=None, database=None)
@given(ids=client_arrays, test_size=st.one_of(st.floats(0.05, 0.95), st.integers(1, 5)), seed=st.integers(0, 5))
def test_train_test_split_keeps_a_training_row_for_every_client(ids, test_size, seed):
    X = np.arange(len(ids) * 2).reshape(-1, 2)
    y = np.arange(len(ids))
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, ids, test_size=test_size, random_state=seed)
    assert set(c_tr.tolist()) == set(ids.tolist())  # every client trains
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == y.tolist()  # a partition of the rows
    np.testing.assert_array_equal(X_tr[:, 0] // 2, y_tr)  # rows stay aligned
    np.testing.assert_array_equal(ids[y_te], c_te)
    for client in np.unique(ids):
        n = np.sum(ids == client)
        wanted = test_size if isinstance(test_size, int) else int(np.ceil(test_size * n))
        assert np.sum(c_te == client) == min(wanted, n - 1)


def test_train_test_split_is_reproducible_and_accepts_frames():
    pd = pytest.importorskip("pandas")
    ids = np.repeat(["a", "b", "c"], 5)
    X = pd.DataFrame({"f": np.arange(15.0)})
    first = train_test_split(X, np.arange(15), ids, test_size=0.4, random_state=3)
    again = train_test_split(X, np.arange(15), ids, test_size=0.4, random_state=3)
    assert isinstance(first[0], pd.DataFrame)
    assert first[0].index.tolist() == again[0].index.tolist()
    ordered = train_test_split(X, np.arange(15), ids, test_size=2, shuffle=False)
    assert ordered[3].tolist() == [3, 4, 8, 9, 13, 14]  # each client's last rows


@pytest.mark.parametrize("test_size, error", [(0.0, ValueError), (1.0, ValueError), (0, ValueError),
                                              ("half", TypeError), (True, TypeError)])
def test_train_test_split_refuses_bad_test_size(test_size, error):
    with pytest.raises(error, match="test_size"):
        train_test_split(np.zeros((4, 1)), np.zeros(4), [0, 0, 1, 1], test_size=test_size)


def test_the_unseen_client_error_names_the_way_to_cross_validate():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y, c = np.arange(20) % 2, np.repeat([0, 1], 10)
    est = PartialPersonalizedClassifier(n_rounds=1, tol=None, hidden_layer_sizes=(4,), random_state=0).fit(X, y, c)
    with pytest.raises(ValueError, match="ClientKFold"):
        est.predict(X[:2], client_ids=[2, 2])
