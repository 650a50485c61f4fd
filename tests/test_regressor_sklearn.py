"""scikit-learn citizenship of the regressor: the estimator checks, as the classifier's (tests/test_sklearn_compat.py)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from pfedest import PartialPersonalizedRegressor

# clip_grad_norm: some checks fit unscaled features (check_fit_idempotent: x ~ N(100, 1)); the squared
# error's gradient grows with x times the residual and diverges at lr=0.1 (FloatingPointError, measured),
# where cross-entropy's stays bounded. Clipping bounds it as a user would for such data.
ESTIMATOR = PartialPersonalizedRegressor(n_rounds=20, lr=0.1, clip_grad_norm=1.0, random_state=0)

# predict runs float32 networks: a row's output depends in its last bits (~1e-7 relative) on how
# many rows share the matrix product, and the regressor answers in y's units (y_scale_ times
# the network's output), where check_methods_subset_invariance asks for 1e-7 absolute and
# relative. Measured: 1 of 20 rows off by 1.8e-7 (4.4e-7 relative). The classifier passes only
# because it compares argmax labels and probabilities near one; no setting makes float32 exact.
EXPECTED_FAILURES = {
    "check_methods_subset_invariance": "float32 outputs differ in the last bits with the batch size "
                                       "(1.8e-7 measured, 1e-7 required)",
}


@parametrize_with_checks([ESTIMATOR], expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
