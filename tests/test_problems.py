"""Convex personalized problems: exact quantities, and FedAlt/FedSim on them through the engine."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad

from pfedest.theory.problems import PersonalizedLeastSquares, make_least_squares, make_logistic, run
from pfedest.theory.rates import linear_rate, reference_round, theory_step_sizes
from pfedest.core.sampling import minibatch_stream

SMALL = dict(n_clients=4, n_samples_per_client=16, dim_shared=3, dim_personal=2)


def least_squares(**kw):
    return make_least_squares(**{**SMALL, "random_state": 0, **kw})


def logistic(**kw):
    return make_logistic(**{**SMALL, "random_state": 0, **kw})


def random_point(problem, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(problem.dim_shared), rng.standard_normal((problem.n_clients, problem.dim_personal))


@pytest.mark.parametrize("make", [least_squares, logistic])
def test_numpy_quantities_match_the_torch_loss_the_engine_trains(make):
    problem = make(shared_noise=0.7, personal_noise=1.3, ridge=0.05)
    loss = problem.torch_loss()
    u, V = random_point(problem, 1)
    g_u, g_v = problem.client_gradients(u, V)
    F_i = problem.client_objectives(u, V)
    for c in range(problem.n_clients):
        idx = torch.arange(problem.offsets[c], problem.offsets[c] + problem.counts[c])
        mask = torch.ones(len(idx))
        shared, personal = {"u": torch.tensor(u)}, {"v": torch.tensor(V[c])}
        (gu, gv), _ = grad(loss, argnums=(0, 1), has_aux=True)(shared, personal, idx, mask)
        mean, _ = loss(shared, personal, idx, mask)
        np.testing.assert_allclose(gu["u"].numpy(), g_u[c], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gv["v"].numpy(), g_v[c], rtol=1e-12, atol=1e-12)
        assert mean.item() == pytest.approx(F_i[c], rel=1e-12)


def test_a_padding_step_of_the_loss_has_no_gradient_even_with_a_ridge():
    problem = least_squares(ridge=0.5)
    loss = problem.torch_loss()
    u, V = random_point(problem, 2)
    (gu, gv), _ = grad(loss, argnums=(0, 1), has_aux=True)({"u": torch.tensor(u)}, {"v": torch.tensor(V[0])},
                                                          torch.zeros(3, dtype=torch.long), torch.zeros(3))
    assert gu["u"].abs().max() == 0 and gv["v"].abs().max() == 0


def test_least_squares_optimum_agrees_with_a_dense_least_squares_solve():
    # An independent route: stack every client's rows into one design over (u, v_1..v_n), weight
    # rows by sqrt(alpha_i / m_i) and call lstsq.
    problem = least_squares()
    n, d_u, d_v = problem.n_clients, problem.dim_shared, problem.dim_personal
    design = np.zeros((len(problem.y), d_u + n * d_v))
    design[:, :d_u] = problem.A
    for c in range(n):
        rows = slice(problem.offsets[c], problem.offsets[c] + problem.counts[c])
        design[rows, d_u + c * d_v: d_u + (c + 1) * d_v] = problem.B[rows]
    w = np.sqrt(problem.alpha[problem.client_of_row] / problem.counts[problem.client_of_row])
    x = np.linalg.lstsq(design * w[:, None], problem.y * w, rcond=None)[0]
    u, V, F_star = problem.optimum
    np.testing.assert_allclose(u, x[:d_u], atol=1e-10)
    np.testing.assert_allclose(V, x[d_u:].reshape(n, d_v), atol=1e-10)
    assert F_star == pytest.approx(0.5 * np.sum((design @ x - problem.y) ** 2 * w ** 2), rel=1e-12)


@pytest.mark.parametrize("make, tol", [(least_squares, 1e-12), (logistic, 1e-12)])
def test_optimum_is_stationary(make, tol):
    problem = make(ridge=0.01, personal_noise=0.5)
    u, V, _ = problem.optimum
    g_u, g_v = problem.gradients(u, V)
    assert max(np.abs(g_u).max(), np.abs(g_v).max()) < tol
    assert problem.stationarity(u, V) < tol ** 2


@pytest.fixture(scope="module")
def both():
    return least_squares(), logistic()


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 3.0))
def test_optimum_is_minimal_and_the_constants_are_valid_bounds(both, seed, scale):
    for problem in both:
        u, V, F_star = problem.optimum
        du, dV = (scale * a for a in random_point(problem, seed))
        assert problem.objective(u + du, V + dV) >= F_star - 1e-12
        k = problem.constants
        # Lipschitz constants of each client's partial gradients, the definitions of L_u, L_v, L_uv.
        g0u, g0v = problem.client_gradients(u, V)
        g1u, g1v = problem.client_gradients(u + du, V)
        g2u, g2v = problem.client_gradients(u, V + dV)
        norm = lambda a: np.linalg.norm(a, axis=-1)  # noqa: E731
        assert np.all(norm(g1u - g0u) <= k.L_u * norm(du) * (1 + 1e-9))
        assert np.all(norm(g2v - g0v) <= k.L_v * norm(dV) * (1 + 1e-9))
        assert np.all(norm(g2u - g0u) <= k.L_uv * norm(dV) * (1 + 1e-9))
        assert np.all(norm(g1v - g0v) <= k.L_uv * norm(du) * (1 + 1e-9))


def test_least_squares_smoothness_is_attained():
    problem = least_squares()
    u, V, _ = problem.optimum
    H_uu, _, H_vv = problem.client_hessians(u, V)
    worst = int(np.argmax(np.linalg.eigvalsh(H_uu)[:, -1]))
    top = np.linalg.eigh(H_uu[worst])[1][:, -1]
    g0, _ = problem.client_gradients(u, V)
    g1, _ = problem.client_gradients(u + top, V)
    assert np.linalg.norm(g1[worst] - g0[worst]) == pytest.approx(problem.constants.L_u, rel=1e-10)


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


def test_gradient_variance_matches_the_minibatches_the_engine_draws():
    problem = least_squares(shared_noise=1.0)
    u, V = random_point(problem, 4)
    batch = 5
    idx, _ = minibatch_stream(np.random.default_rng(0), problem.counts, batch, steps=6000)
    g_u, g_v = problem.row_gradients(u, V)
    full_u, full_v = problem.client_gradients(u, V)
    var_u, var_v = problem.gradient_variance(u, V, batch)
    for c in range(problem.n_clients):
        rows = idx[c] + problem.offsets[c]  # [steps, batch]
        emp_u = np.mean(np.sum((g_u[rows].mean(1) - full_u[c]) ** 2, axis=1))
        emp_v = np.mean(np.sum((g_v[rows].mean(1) - full_v[c]) ** 2, axis=1))
        assert emp_u == pytest.approx(var_u[c], rel=0.08)
        assert emp_v == pytest.approx(var_v[c], rel=0.08)


def test_heterogeneity_knob_sets_the_gradient_diversity_at_the_optimum():
    deltas = []
    for h in (0.0, 0.5, 2.0):
        problem = least_squares(heterogeneity=h, label_noise=0.0)
        u, V, _ = problem.optimum
        deltas.append(problem.heterogeneity(u, V))
    assert deltas[0] < 1e-20 and 0 < deltas[1] < deltas[2]


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
    # Many clients per run average the random holding times (about 5% spread per run here).
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


def test_bad_input_is_refused_with_the_value():
    problem = least_squares()
    with pytest.raises(ValueError, match="fedavg"):
        run(problem, "fedavg", 3, lr_shared=0.1, lr_personal=0.1)
    with pytest.raises(ValueError, match="clients_per_round"):
        run(problem, "fedalt", 3, lr_shared=0.1, lr_personal=0.1, clients_per_round=9)
    with pytest.raises(ValueError, match="joint"):
        run(problem, "fedsim", 3, lr_shared=0.1, lr_personal=0.1, local_steps=(1, 2))
    with pytest.raises(ValueError, match="coupling"):
        make_least_squares(coupling=1.0)
    with pytest.raises(ValueError, match="n_samples_per_client"):
        make_least_squares(n_samples_per_client=0)
    with pytest.raises(ValueError, match="counts sum to 5"):
        PersonalizedLeastSquares(np.ones((4, 2)), np.ones((4, 1)), np.ones(4), np.array([2, 3]))
    with pytest.raises(ValueError, match="V of shape"):
        problem.objective(np.zeros(3), np.zeros((3, 2)))


def test_a_diverging_run_stops_and_says_when():
    problem = least_squares(coupling=0.8)
    lr_u, lr_v = theory_step_sizes(problem, eta=30.0)
    with np.errstate(over="ignore", invalid="ignore"):
        traj = run(problem, "fedsim", 400, lr_shared=lr_u, lr_personal=lr_v)
    assert traj.diverged_at is not None and traj.n_rounds == traj.diverged_at - 1
    assert len(traj.objective_gap) == traj.n_rounds + 1
