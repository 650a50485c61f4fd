"""scikit-learn citizenship of the regressor: the estimator checks, as the classifier's (tests/test_sklearn_compat.py)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from pfedest import PartialPersonalizedRegressor


# lr=0.1 as for the classifier: float32 products of different batch sizes must stay within
# check_methods_subset_invariance's 1e-7
@parametrize_with_checks([PartialPersonalizedRegressor(n_rounds=20, lr=0.1, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
