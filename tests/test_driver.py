"""The driver (pfedest.theory.driver): FedAlt and FedSim on the problems, through the engine, measured."""

import numpy as np
import pytest

from pfedest.theory.driver import local_step_counts, run
from pfedest.theory.generators import make_least_squares
from pfedest.theory.rates import linear_rate, reference_round, theory_step_sizes
from test_problems import least_squares, logistic, random_point


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
@pytest.mark.parametrize("make", [least_squares, logistic])
def test_both_algorithms_reach_the_optimum_without_noise(algorithm, make):
    problem = make()
    lr_u, lr_v = theory_step_sizes(problem, eta=1.0 if algorithm == "fedalt" else 0.5)
    # Enough rounds for the predicted linear rate to shrink the distance by 1e-9.
    rounds = int(np.ceil(np.log(1e-9) / np.log(linear_rate(problem, algorithm, lr_u, lr_v))))
    traj = run(problem, algorithm, rounds, lr_shared=lr_u, lr_personal=lr_v)
    u, V, F_star = problem.optimum
    assert np.abs(traj.shared - u).max() < 1e-6
    assert np.abs(traj.personal - V).max() < 1e-6
    assert abs(traj.objective_gap[-1]) < 1e-10
    assert np.all(np.diff(traj.objective_gap) <= 1e-12)  # every round descends (full gradients, eta < 2/kappa)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("algorithm, steps", [("fedalt", (2, 3)), ("fedsim", 2)])
def test_engine_rounds_equal_the_numpy_statement_of_the_algorithms(engine, algorithm, steps):
    problem = least_squares(coupling=0.7, ridge=0.1)
    lr_u, lr_v = theory_step_sizes(problem, eta=0.7, local_steps=steps)
    init = random_point(problem, 5)
    traj = run(problem, algorithm, 3, lr_shared=lr_u, lr_personal=lr_v, local_steps=steps, engine=engine, init=init)
    u, V = init
    for _ in range(3):
        u, V = reference_round(problem, u, V, algorithm, lr_u, lr_v, steps)
    np.testing.assert_allclose(traj.shared, u, atol=1e-12)
    np.testing.assert_allclose(traj.personal, V, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_without_coupling_fedalt_and_fedsim_take_the_same_iterates(steps):
    # chi = 0: grad_u F_i does not depend on v_i, so updating v first changes nothing for u.
    kw = dict(lr_shared=0.3, lr_personal=0.4, clients_per_round=2, local_steps=steps, random_state=7)
    separable = least_squares(coupling=0.0)
    alt, sim = (run(separable, a, 30, **kw) for a in ("fedalt", "fedsim"))
    np.testing.assert_allclose(alt.shared, sim.shared, atol=1e-12)
    np.testing.assert_allclose(alt.personal, sim.personal, atol=1e-12)
    np.testing.assert_allclose(alt.objective_gap, sim.objective_gap, atol=1e-12)
    coupled = least_squares(coupling=0.6)
    alt, sim = (run(coupled, a, 30, **kw) for a in ("fedalt", "fedsim"))
    assert np.abs(alt.shared - sim.shared).max() > 1e-6


def test_personal_part_of_the_measure_scales_with_participation():
    # Without coupling each v_i does plain gradient descent, one step per round its client is
    # sampled (probability m/n): the unweighted sum over rounds of ||grad_v F_i||^2 grows by n/m
    # in expectation, and the measure's factor m/n brings it back to the full-participation value.
    # Many clients per run average the random holding times (their spread per run: docs/theory.md).
    problem = make_least_squares(n_clients=128, n_samples_per_client=10, dim_shared=3, dim_personal=2,
                                 coupling=0.0, random_state=1)
    lr_u, lr_v = theory_step_sizes(problem, eta=1.0)

    def personal_sum(m, rounds, seed):
        traj = run(problem, "fedsim", rounds, lr_shared=lr_u, lr_personal=lr_v, clients_per_round=m,
                   random_state=seed)
        personal = traj.stationarity - traj.stationarity_shared
        assert personal[-1] < 1e-4 * personal.sum()  # the sum has converged
        return personal.sum()

    full = personal_sum(128, 50, 0)
    quarter = np.mean([personal_sum(32, 200, seed) for seed in range(2)])
    assert quarter == pytest.approx(full, rel=0.15)
    assert quarter / 0.25 == pytest.approx(4 * full, rel=0.15)  # unweighted: four times larger


def test_heterogeneity_is_what_partial_participation_pays_for():
    # Full gradients, constant step: sampling m < n clients leaves a floor only when the clients'
    # shared gradients disagree at the optimum (delta^2 > 0); the floor shrinks as m grows, and
    # full participation removes it.
    def make(heterogeneity):
        return make_least_squares(n_clients=6, n_samples_per_client=16, heterogeneity=heterogeneity,
                                  label_noise=0.0, coupling=0.0, random_state=0)

    homogeneous, diverse = make(0.0), make(1.0)
    lr_u, lr_v = theory_step_sizes(diverse, eta=1.0)
    floors = [run(diverse, "fedsim", 120, lr_shared=lr_u, lr_personal=lr_v, clients_per_round=m,
                  random_state=0).objective_gap[40:].mean() for m in (2, 5)]
    assert floors[0] > floors[1] > 1e-3
    full = run(diverse, "fedsim", 120, lr_shared=lr_u, lr_personal=lr_v)
    assert full.objective_gap[-1] < 1e-6
    lr_u, lr_v = theory_step_sizes(homogeneous, eta=1.0)
    exact = run(homogeneous, "fedsim", 120, lr_shared=lr_u, lr_personal=lr_v, clients_per_round=2, random_state=0)
    gap = exact.objective_gap
    assert gap[-1] < 0.1 * gap[60] and gap[-1] < 1e-3 * floors[0]  # delta = 0: no floor, it keeps falling


def test_a_diverging_run_stops_and_says_when():
    problem = least_squares(coupling=0.8)
    lr_u, lr_v = theory_step_sizes(problem, eta=30.0)
    with np.errstate(over="ignore", invalid="ignore"):
        traj = run(problem, "fedsim", 400, lr_shared=lr_u, lr_personal=lr_v)
    assert traj.diverged_at is not None and traj.n_rounds == traj.diverged_at - 1
    assert len(traj.objective_gap) == traj.n_rounds + 1


def test_bad_input_is_refused_with_the_value():
    problem = least_squares()
    with pytest.raises(ValueError, match="fedavg"):
        run(problem, "fedavg", 3, lr_shared=0.1, lr_personal=0.1)
    with pytest.raises(ValueError, match="clients_per_round"):
        run(problem, "fedalt", 3, lr_shared=0.1, lr_personal=0.1, clients_per_round=9)
    with pytest.raises(ValueError, match="joint"):
        run(problem, "fedsim", 3, lr_shared=0.1, lr_personal=0.1, local_steps=(1, 2))
    with pytest.raises(ValueError, match="positive integer or a pair"):
        run(problem, "fedalt", 3, lr_shared=0.1, lr_personal=0.1, local_steps=(1, 0))
    with pytest.raises(ValueError, match="V of shape"):
        run(problem, "fedalt", 3, lr_shared=0.1, lr_personal=0.1, init=(np.zeros(3), np.zeros((3, 2))))


def test_local_step_counts_are_one_pair_for_every_caller():
    assert local_step_counts(3) == (3, 3)
    assert local_step_counts(np.int64(2), "fedsim") == (2, 2)
    assert local_step_counts([1, 4], "fedalt") == (1, 4)
    with pytest.raises(ValueError, match="joint"):
        local_step_counts((1, 4), "fedsim")
