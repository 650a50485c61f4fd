"""The generators (pfedest.theory.generators): each knob sets the quantity of the theory it is named for."""

import numpy as np
import pytest

from pfedest.theory.generators import make_least_squares, make_logistic
from test_problems import least_squares, random_point


def test_coupling_knob_sets_chi_from_exactly_zero_upwards():
    chis = [least_squares(coupling=c).constants.chi for c in (0.0, 0.3, 0.6, 0.9)]
    assert chis[0] < 1e-12
    assert np.all(np.diff(chis) > 0) and chis[-1] <= 1.0


def test_noise_knobs_change_minibatch_noise_but_not_the_objective():
    quiet, noisy = least_squares(), least_squares(personal_noise=3.0)
    u, V = random_point(quiet, 3)
    assert noisy.objective(u, V) == pytest.approx(quiet.objective(u, V), rel=1e-13)
    for a, b in zip(quiet.client_gradients(u, V), noisy.client_gradients(u, V)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    u, V, _ = quiet.optimum  # near the optimum the added noise dominates the row gradients' spread
    (qu, qv), (nu, nv) = quiet.gradient_variance(u, V, 4), noisy.gradient_variance(u, V, 4)
    np.testing.assert_allclose(qu, nu, rtol=1e-12)
    assert np.all(nv > 2 * qv)
    assert np.all(quiet.gradient_variance(u, V, batch_size=16)[0] == 0)  # full batches: no noise


def test_heterogeneity_knob_sets_the_gradient_diversity_at_the_optimum():
    deltas = []
    for h in (0.0, 0.5, 2.0):
        problem = least_squares(heterogeneity=h, label_noise=0.0)
        u, V, _ = problem.optimum
        deltas.append(problem.heterogeneity(u, V))
    assert deltas[0] < 1e-20 and 0 < deltas[1] < deltas[2]


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="coupling"):
        make_least_squares(coupling=1.0)
    with pytest.raises(ValueError, match="coupling"):
        make_logistic(coupling=-0.1)
    with pytest.raises(ValueError, match="n_samples_per_client"):
        make_least_squares(n_samples_per_client=0)
    with pytest.raises(ValueError, match="scale"):
        make_logistic(scale=-1.0)
