"""The generators (pfedest.theory.generators): each knob sets the quantity of the theory it is named for."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.theory.generators import (make_coupled_least_squares, make_least_squares, make_logistic,
                                       make_separable_logistic)
from pfedest.theory.separable import SeparableLogistic
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


@settings(max_examples=20, deadline=None, database=None)
@given(L_u=st.floats(0.5, 3.0), L_v=st.floats(0.5, 3.0), mu_share=st.floats(0.05, 0.9), chi_share=st.floats(0.0, 1.0))
def test_the_coupled_family_moves_chi_alone(L_u, L_v, mu_share, chi_share):
    # Every constant is set exactly; across chi the noise at the optimum, F* and the optimum stay.
    mu = mu_share * min(L_u, L_v)
    chi = chi_share * np.sqrt((L_u - mu) * (L_v - mu) / (L_u * L_v))
    kw = dict(L_u=L_u, L_v=L_v, mu=mu, shared_noise=0.7, personal_noise=1.3, random_state=0)
    problem, separable = (make_coupled_least_squares(3, 9, 2, 2, chi=c, **kw) for c in (chi, 0.0))
    k = problem.constants
    assert (k.L_u, k.L_v, k.mu, k.chi) == pytest.approx((L_u, L_v, mu, chi), abs=1e-9)
    assert separable.constants.chi < 1e-12 and separable.constants.mu == pytest.approx(mu, abs=1e-9)
    a, b = problem.summary(batch_size=3), separable.summary(batch_size=3)
    for key in ("F_star", "sigma2_u_at_optimum", "sigma2_v_at_optimum", "delta2_at_optimum"):
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


def test_the_coupled_family_refuses_a_chi_that_would_lower_mu():
    with pytest.raises(ValueError, match="largest chi"):
        make_coupled_least_squares(chi=0.8, mu=0.25)  # at most sqrt(0.75 * 0.75) = 0.75
    with pytest.raises(ValueError, match="dim_shared"):
        make_coupled_least_squares(dim_shared=1, dim_personal=1)
    with pytest.raises(ValueError, match="mu"):
        make_coupled_least_squares(mu=2.0)


def test_separable_rows_are_separated_by_the_stored_model_and_have_no_ridge():
    problem = make_separable_logistic(n_clients=5, n_samples_per_client=12, random_state=3)
    u, V = problem.separator
    margins = problem.y * (problem.A @ u + np.einsum("rd,rd->r", problem.B, V[problem.client_of_row]))
    assert np.all(margins > 0) and problem.ridge_u == problem.ridge_v == 0.0
    assert problem.optimum[2] == 0.0
    with pytest.raises(ValueError, match="does not separate"):
        SeparableLogistic(problem.A, problem.B, -problem.y, problem.counts, separator=(u, V))
