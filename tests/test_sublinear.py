"""A problem where O(1/T) is a real prediction: separable logistic regression, no minimizer.

On the strongly convex problems every converging run has a geometrically falling measure, whose
running mean is S/T whatever S is: the slope -1 there says nothing about the theory. Here F is
convex, smooth, not strongly convex, and its infimum 0 is never attained: the measure falls like a
power of T, the sum of the measure keeps growing, and the bounds have to hold for it.
"""

import numpy as np
import pytest

from pfedest.theory.driver import run
from pfedest.theory.generators import make_separable_logistic
from pfedest.theory.rates import PREDICTED_SLOPES, fit_slope, round_bounds, theory_step_sizes, trajectory_bound
from pfedest.theory.simulate import simulate

SEPARABLE = make_separable_logistic(n_clients=4, n_samples_per_client=16, dim_shared=3, dim_personal=2,
                                    random_state=0)
ETA = 0.5  # FedSim's descent needs eta < 2 / (1 + chi); chi is 0.96 here (a loose bound, see docs/theory.md)


def test_the_problem_has_no_minimizer_and_its_infimum_is_zero():
    u, V, F_star = SEPARABLE.optimum
    assert F_star == 0.0 and np.isnan(u).all() and SEPARABLE.constants.mu == 0.0
    su, sV = SEPARABLE.separator
    values = [SEPARABLE.objective(k * su, k * sV) for k in (1, 10, 100, 1000)]
    assert np.all(np.diff(values) < 0) and 0 < values[-1] < 1e-2  # falls towards 0 along the separator


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_each_round_is_sandwiched_by_the_decrease_of_F(algorithm):
    # D_t / max(L gamma) <= measured_t <= K D_t every round (docs/theory.md): at eta = 0.5 the two
    # sides are a factor 1 / (1 - kappa eta / 2) apart, 1.33 for FedAlt and 1.93 for FedSim here.
    lr_u, lr_v = theory_step_sizes(SEPARABLE, ETA)
    traj = run(SEPARABLE, algorithm, 100, lr_shared=lr_u, lr_personal=lr_v)
    lower, upper = round_bounds(SEPARABLE, traj)
    assert np.all(lower <= traj.measured * (1 + 1e-9)) and np.all(traj.measured <= upper * (1 + 1e-9))
    # The curvature seen along the path fades: the first-order term is soon nearly all of the
    # decrease (measured / lower: 1.26-1.31 in the first round, 1.03 and 1.002 by round 100).
    assert np.median(traj.measured / lower) < 1.15


@pytest.fixture(scope="module")
def long_runs():
    out = {}
    for alg in ("fedalt", "fedsim"):
        lr_u, lr_v = theory_step_sizes(SEPARABLE, ETA)
        out[alg] = simulate(SEPARABLE, alg, 1000, lr_shared=lr_u, lr_personal=lr_v)
    return out


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_the_measure_falls_like_a_power_of_T_not_geometrically(long_runs, algorithm):
    runs = long_runs[algorithm]
    T = np.arange(1, runs.n_rounds + 1)
    late = T >= 100
    exponent = fit_slope(T[late], runs.measured[0][late])
    assert -2.0 < exponent < -1.0, exponent  # summable (the bound needs it), but only polynomially
    assert runs.measured[0][-1] / runs.measured[0][499] > 0.2  # halving T loses less than a factor 5


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_the_average_is_order_one_over_T_with_the_bounds_constant_nearly_attained(long_runs, algorithm):
    # T * average = the sum of the measure, which grows here; the descent bound caps it at
    # K (F_0 - F*), and the convexity bound holds it above (F_0 - F_T) / max(L gamma): a claim
    # that the average falls faster than 1/T (or slower) breaks one of the two.
    runs = long_runs[algorithm]
    T = np.arange(1, runs.n_rounds + 1)
    total = T * runs.running_mean()[0]
    lr_u, lr_v = theory_step_sizes(SEPARABLE, ETA)
    kappa = 1.0 + SEPARABLE.constants.chi if algorithm == "fedsim" else 1.0
    cap = np.log(2.0) / (ETA * (1.0 - kappa * ETA / 2.0))  # K (F_0 - F*), F_0 = log 2 at the origin
    floor = (np.log(2.0) - runs.objective_gap[0][1:]) / ETA
    assert np.all(floor <= total * (1 + 1e-9)) and np.all(total <= cap)
    assert total[-1] > 0.5 * cap  # 0.55 of the cap at T = 1000
    assert total[-1] > 1.05 * total[99]  # and still growing (by 12 % from T = 100)
    late = T >= 100
    slope = fit_slope(T[late], runs.running_mean()[0][late])
    assert slope == pytest.approx(PREDICTED_SLOPES["deterministic"], abs=0.05)
    assert slope > PREDICTED_SLOPES["deterministic"] + 0.01  # not yet -1: the sum has not converged


def test_the_driver_and_the_bound_agree_on_the_separable_problem():
    lr_u, lr_v = theory_step_sizes(SEPARABLE, ETA)
    traj = run(SEPARABLE, "fedalt", 50, lr_shared=lr_u, lr_personal=lr_v)
    assert np.all(traj.running_mean() <= trajectory_bound(SEPARABLE, traj))
    assert traj.objective_gap[0] == pytest.approx(np.log(2.0))
