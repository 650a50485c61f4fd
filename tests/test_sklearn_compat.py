"""scikit-learn citizenship: the estimator checks, metadata routing, clone."""

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.utils.estimator_checks import parametrize_with_checks

from pfedest import HeadSplit, PartialPersonalizedClassifier


# lr=0.1: with larger weights, float32 products of different batch sizes differ by ~2e-7, above the
# 1e-7 of check_methods_subset_invariance (the model is the same; the last bits of its logits are not)
@parametrize_with_checks([PartialPersonalizedClassifier(n_rounds=20, lr=0.1, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def test_gridsearch_routes_client_ids_to_fit_and_score_without_set_request(federated, routing, monkeypatch):
    X, y, c = federated
    calls = {"fit": 0, "score": 0}
    fit, score = PartialPersonalizedClassifier.fit, PartialPersonalizedClassifier.score

    def fit_spy(self, X, y, client_ids=None):
        assert client_ids is not None and len(client_ids) == len(X)
        calls["fit"] += 1
        return fit(self, X, y, client_ids=client_ids)

    def score_spy(self, X, y, client_ids=None, sample_weight=None):
        assert client_ids is not None and len(client_ids) == len(X)
        calls["score"] += 1
        return score(self, X, y, client_ids=client_ids)

    monkeypatch.setattr(PartialPersonalizedClassifier, "fit", fit_spy)
    monkeypatch.setattr(PartialPersonalizedClassifier, "score", score_spy)
    est = PartialPersonalizedClassifier(split=HeadSplit(), n_rounds=5, random_state=0)
    grid = GridSearchCV(est, {"split__fraction": [0.1, 0.6]}, cv=KFold(3, shuffle=True, random_state=0))
    grid.fit(X, y, client_ids=c)
    assert calls["fit"] == 2 * 3 + 1 and calls["score"] == 2 * 3
    assert grid.best_params_["split__fraction"] in (0.1, 0.6)
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))


def test_gridsearch_with_parallel_jobs(federated, routing):
    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=3, random_state=0)
    grid = GridSearchCV(est, {"split": ["none", "head"]}, cv=KFold(2, shuffle=True, random_state=0), n_jobs=2)
    grid.fit(X, y, client_ids=c)
    assert len(grid.cv_results_["params"]) == 2


def test_cross_validate_routes_client_ids(federated, routing):
    X, y, c = federated
    res = cross_validate(PartialPersonalizedClassifier(n_rounds=3, random_state=0), X, y,
                         params={"client_ids": c}, cv=KFold(2, shuffle=True, random_state=0))
    assert len(res["test_score"]) == 2
