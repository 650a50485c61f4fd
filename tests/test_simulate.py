"""The NumPy twin of the driver (pfedest.theory.simulate): equal to the engine on the same draws."""

import numpy as np
import pytest

from pfedest.theory.driver import draw_seed, run
from pfedest.theory.rates import reference_round, theory_step_sizes
from pfedest.theory.simulate import simulate
from test_problems import least_squares, logistic, random_point

FIELDS = ("objective_gap", "stationarity", "stationarity_shared", "measured")


@pytest.mark.parametrize("make, algorithm, steps, batch, m", [
    (least_squares, "fedalt", (2, 1), 3, 2),
    (least_squares, "fedsim", 2, 5, 4),
    (logistic, "fedalt", 1, 4, 3),
    (logistic, "fedsim", 1, 16, 2),  # full batches, clients sampled
])
def test_keyed_twin_equals_the_engine_round_by_round(make, algorithm, steps, batch, m):
    problem = make(coupling=0.6, ridge=0.05, shared_noise=0.5, personal_noise=0.8)
    lr_u, lr_v = theory_step_sizes(problem, 0.6, local_steps=steps)
    kw = dict(lr_shared=lr_u, lr_personal=lr_v, local_steps=steps, batch_size=batch, clients_per_round=m,
              init=random_point(problem, 3))
    twin = simulate(problem, algorithm, 12, draws="keyed", random_state=[5, 11], noise=True, **kw)
    for row, seed in enumerate((5, 11)):
        traj = run(problem, algorithm, 12, random_state=seed, **kw)
        for name in FIELDS + ("noise_shared", "noise_personal"):
            np.testing.assert_allclose(getattr(twin, name)[row], getattr(traj, name), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
        np.testing.assert_allclose(twin.shared[row], traj.shared, atol=1e-12)
        np.testing.assert_allclose(twin.personal[row], traj.personal, atol=1e-12)


def test_fedalts_measure_takes_the_shared_gradient_where_its_shared_step_starts():
    # (u_t, V_{t+1}): V_{t+1} from an independent NumPy statement of the round (full gradients).
    problem = least_squares(coupling=0.7)
    lr_u, lr_v = theory_step_sizes(problem, 0.8)
    traj = run(problem, "fedalt", 4, lr_shared=lr_u, lr_personal=lr_v)
    u, V = np.zeros(problem.dim_shared), np.zeros((problem.n_clients, problem.dim_personal))
    for t in range(4):
        u_next, V_next = reference_round(problem, u, V, "fedalt", lr_u, lr_v)
        shared_part = problem.stationarity_terms(u, V_next)[0]
        assert traj.measured[t] == pytest.approx(shared_part + problem.stationarity_terms(u, V)[1], rel=1e-10)
        assert traj.measured[t] != pytest.approx(traj.stationarity[t], rel=1e-3)  # V_t would differ here
        u, V = u_next, V_next


def test_fast_draws_have_the_distribution_of_the_keyed_ones():
    # Two ways of drawing the same random rounds: the noise floors agree within their spread.
    problem = least_squares(shared_noise=1.0, personal_noise=1.0)
    u, V, _ = problem.optimum
    lr_u, lr_v = theory_step_sizes(problem, 0.3)
    kw = dict(lr_shared=lr_u, lr_personal=lr_v, batch_size=4, clients_per_round=2, init=(u, V))
    fast = simulate(problem, "fedalt", 120, n_seeds=32, random_state=0, **kw).measured[:, 30:].mean(1)
    keyed = simulate(problem, "fedalt", 120, n_seeds=32, draws="keyed", random_state=1000, **kw)
    keyed = keyed.measured[:, 30:].mean(1)
    se = np.sqrt(fast.var(ddof=1) / len(fast) + keyed.var(ddof=1) / len(keyed))
    assert abs(fast.mean() - keyed.mean()) < 3 * se
    assert fast.std() > 0.05 * fast.mean()  # the seeds differ


def test_seeds_and_bad_input():
    assert draw_seed(3) == 3 and isinstance(draw_seed(None), int)
    problem = least_squares()
    with pytest.raises(ValueError, match="draws"):
        simulate(problem, "fedalt", 3, lr_shared=0.1, lr_personal=0.1, draws="sequential")
    with pytest.raises(ValueError, match="clients_per_round"):
        simulate(problem, "fedsim", 3, lr_shared=0.1, lr_personal=0.1, clients_per_round=0)
    with pytest.raises(ValueError, match="joint"):
        simulate(problem, "fedsim", 3, lr_shared=0.1, lr_personal=0.1, local_steps=(1, 2))
    with pytest.raises(ValueError, match="non-negative"):
        draw_seed(-1)
