"""Fits with bootstrap intervals over seeds (pfedest.theory.evidence): they reject what they should."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.theory.evidence import Estimate, bootstrap_fit, bootstrap_slope

T = np.array([50.0, 100.0, 200.0, 400.0, 800.0])


@settings(max_examples=25, deadline=None, database=None)
@given(slope=st.floats(-2.0, 1.0), scale=st.floats(1e-6, 1e6), seeds=st.integers(2, 6))
def test_an_exact_power_law_gives_a_zero_width_interval_at_its_exponent(slope, scale, seeds):
    estimate = bootstrap_slope(T, np.tile(scale * T ** slope, (seeds, 1)), n_boot=50)
    assert estimate.value == pytest.approx(slope, abs=1e-9)
    assert estimate.high - estimate.low < 1e-9
    assert estimate.rejects(slope + 1e-6) and not estimate.rejects(slope, allowance=1e-9)


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(1e-3, 1e3))
def test_the_fit_ignores_the_scale_and_covers_its_point_estimate(seed, factor):
    runs = T ** -0.5 * np.exp(0.1 * np.random.default_rng(seed).standard_normal((6, len(T))))
    a, b = bootstrap_slope(T, runs, n_boot=200), bootstrap_slope(T, factor * runs, n_boot=200)
    assert a.value == pytest.approx(b.value, abs=1e-9) and a.low == pytest.approx(b.low, abs=1e-9)
    assert a.low <= a.value <= a.high


def test_noisy_runs_cover_the_true_slope_and_reject_one_a_tenth_away():
    # 8 seeds with 5 % noise per run: the interval is about +-0.03 wide.
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(40):
        runs = T ** -0.5 * np.exp(0.05 * rng.standard_normal((8, len(T))))
        estimate = bootstrap_slope(T, runs, n_boot=300, random_state=int(rng.integers(1000)))
        covered += not estimate.rejects(-0.5)
        assert estimate.rejects(-0.6) and estimate.rejects(-0.4)
    assert covered >= 33  # a 95 % interval; 38 of 40 expected


def test_the_control_is_subtracted_before_the_fit():
    # y = control + noise part: the excess has the noise part's exponent, not the total's.
    control = 3.0 / T
    noise = 0.5 * T ** -0.5
    runs = (control + noise) * np.exp(0.01 * np.random.default_rng(0).standard_normal((10, len(T))))
    assert bootstrap_slope(T, runs).value < -0.55  # the total mixes -1 and -1/2
    assert not bootstrap_slope(T, runs, control=control).rejects(-0.5, allowance=0.02)


def test_two_exponents_at_once():
    eta, s2 = np.meshgrid([0.05, 0.1, 0.2], [1.0, 4.0])
    X = np.column_stack([eta.ravel(), s2.ravel()])
    runs = 0.3 * X[:, 0] ** 1.1 * X[:, 1] * np.exp(0.02 * np.random.default_rng(2).standard_normal((12, 6)))
    e_eta, e_s2 = bootstrap_fit(X, runs)
    assert e_eta.value == pytest.approx(1.1, abs=0.03) and e_s2.value == pytest.approx(1.0, abs=0.03)
    assert e_eta.rejects(1.0) and e_s2.rejects(1.1)
    assert "[" in str(e_eta) and e_eta.n_seeds == 12 and e_eta.level == 0.95


def test_what_cannot_be_fitted_is_refused():
    with pytest.raises(ValueError, match="positive at every setting"):
        bootstrap_slope(T, np.ones((3, len(T))), control=np.ones(len(T)))
    with pytest.raises(ValueError, match="n_settings"):
        bootstrap_slope(T, np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-positive mean"):
        noisy = np.array([[1.0] * 5, [-0.9] * 5])
        bootstrap_slope(T, noisy + 0.2, n_boot=200)
    assert Estimate(1.0, 0.9, 1.1, 0.95, 4).rejects(1.2)
