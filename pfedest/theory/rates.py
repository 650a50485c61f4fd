"""What the theory predicts for a problem of :mod:`pfedest.theory.problems`, to set next to what :func:`pfedest.theory.driver.run` measured.

Three kinds of prediction, kept apart because they are not equally certain:

1. **Proven here** (:func:`descent_bound`, :func:`trajectory_bound`): with one local step per
   block, the descent lemma bounds the average over rounds of the stationarity measure

       Phi_t = (1/L_u) ||grad_u F||^2 + (m/n) (1/L_v) sum_i alpha_i ||grad_v F_i||^2

   by ``K [ (F(x_0) - F*) / T + (kappa/2) avg_t (L_u gamma_u^2 N_u,t + L_v gamma_v^2 N_v,t) ]``,
   where ``kappa = 1 + chi`` for FedSim and ``1`` for FedAlt, ``c_b = gamma_b (1 - kappa L_b
   gamma_b / 2)``, ``K = max(1 / (L_u c_u), 1 / (L_v c_v))``, and ``N_u,t``, ``N_v,t`` are the
   variances of the round's shared and personal updates (client sampling and minibatches; see
   :class:`pfedest.theory.driver.Trajectory`). The derivation is in ``docs/theory.md``. It covers FedSim
   with full or partial participation and FedAlt with full participation (for FedAlt the shared
   gradient is taken at ``(u_t, V_{t+1})``, where its shared step starts). Without noise it holds
   for every run; with noise it holds in expectation.
2. **Exact for least squares** (:func:`round_jacobian`, :func:`linear_rate`): with full gradients
   and full participation a round is an affine map ``x -> x* + J (x - x*)`` of ``x = (u, V)``; its
   spectral radius is the linear convergence factor of the last iterate (for logistic regression:
   of the Jacobian at the optimum, locally).
3. **Recalled, shape only** (:func:`recalled_rate`): the paper's rates for smooth nonconvex
   objectives (arXiv 2204.03809), as this project recalls them, have the shape
   ``sqrt(dF0 s1 / T) + (dF0^2 s2 / T^2)^(1/3) + dF0 / T``. The theorems' text was not available to
   this project, so their constants are unknown here: use these for exponents and trends only,
   never as upper bounds, and never as "what the paper states".

:func:`round_bounds` is the per-round form of 1 with its convexity counterpart from below: a round's
measure lies between ``(F_t - F_{t+1}) / max(L_u gamma_u, L_v gamma_v)`` and ``K (F_t - F_{t+1})``
(plus the noise term). :data:`PREDICTED_SLOPES` and :data:`PREDICTED_FLOOR_EXPONENTS` are the
limits of 1 as ``T -> oo`` or ``eta -> 0``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from .driver import Trajectory, local_step_counts
from .problems import PersonalizedProblem

__all__ = ["PREDICTED_SLOPES", "PREDICTED_FLOOR_EXPONENTS", "theory_step_sizes", "tuned_eta", "descent_bound",
           "trajectory_bound", "round_bounds", "reference_round", "round_jacobian", "linear_rate", "recalled_rate",
           "fit_slope", "fit_linear_rate"]

#: Log-log slope of the average stationarity over ``T`` rounds: -1 without noise at a constant
#: step, -1/2 with noise and the step tuned to ``T`` (``gamma ~ 1/sqrt(T)``), both as ``T -> oo``.
#: Derived here from :func:`descent_bound` (proven in ``docs/theory.md``); the -1/2 is also the
#: ``sqrt(dF0 s1 / T)`` term of the paper's rate as the project recalls it (the paper's theorem
#: statements could not be read here, so this is not "what the paper states").
PREDICTED_SLOPES = {"deterministic": -1.0, "stochastic": -0.5}

#: Exponents of the constant-step noise floor ``lim_T (1/T) sum_t E Phi_t ~ eta^a (sigma^2)^b`` to
#: leading order in ``eta``: the noise term of :func:`descent_bound` with ``gamma_b = eta / L_b`` is
#: ``kappa eta S / (2 - kappa eta)``, ``S = N_u / L_u + N_v / L_v`` proportional to the noise
#: variance (proven here as a bound; its exponent in ``eta`` is ``1 + kappa eta / (2 - kappa eta)``).
PREDICTED_FLOOR_EXPONENTS = {"eta": 1.0, "noise": 1.0}


def _kappa(problem: PersonalizedProblem, algorithm: str) -> float:
    if algorithm == "fedsim":
        return 1.0 + problem.constants.chi
    if algorithm == "fedalt":
        return 1.0
    raise ValueError(f"algorithm must be 'fedalt' or 'fedsim', got {algorithm!r}.")


def _descent_constants(problem: PersonalizedProblem, algorithm: str, lr_shared: float, lr_personal: float,
                       clients_per_round: Optional[int], local_steps) -> Tuple[float, float]:
    """``(kappa, K)`` of the descent bound, refusing the cases its proof does not cover."""
    kappa = _kappa(problem, algorithm)
    if local_step_counts(local_steps, algorithm) != (1, 1):
        raise NotImplementedError(f"the descent bound covers one local step per block, got "
                                  f"local_steps={local_steps!r}; use recalled_rate for the shape of the "
                                  "multi-step rates.")
    n = problem.n_clients
    m = n if clients_per_round is None else int(clients_per_round)
    if m < n and algorithm == "fedalt":
        raise NotImplementedError("FedAlt with partial participation is not covered: its shared step uses personal "
                                  "vectors that depend on which clients were sampled (the paper needs its 'virtual "
                                  "full participation' argument there).")
    if m < n and not np.allclose(problem.alpha, 1.0 / n):
        raise NotImplementedError("partial participation is covered for equal client weights (equal row counts) only.")
    k = problem.constants
    c_u = lr_shared * (1.0 - kappa * k.L_u * lr_shared / 2.0)
    c_v = lr_personal * (1.0 - kappa * k.L_v * lr_personal / 2.0)
    if c_u <= 0 or c_v <= 0:
        raise ValueError(f"step sizes too large for the descent lemma: need lr_shared < {2 / (kappa * k.L_u):.4g} and "
                         f"lr_personal < {2 / (kappa * k.L_v):.4g} (kappa={kappa:.3g}), got {lr_shared:.4g} and "
                         f"{lr_personal:.4g}.")
    return kappa, max(1.0 / (k.L_u * c_u), 1.0 / (k.L_v * c_v))


def theory_step_sizes(problem: PersonalizedProblem, eta: float = 1.0, *, n_rounds: Optional[int] = None,
                      local_steps: Union[int, Tuple[int, int]] = 1) -> Tuple[float, float]:
    """``gamma_u = eta / (L_u tau_u)`` and ``gamma_v = eta / (L_v tau_v)``, divided by ``sqrt(n_rounds)`` if given.

    Parameters
    ----------
    problem : PersonalizedProblem
    eta : float, default=1.0
        The common step scale. The descent lemma needs ``eta < 2 / kappa`` with one local step
        (``kappa = 1`` for FedAlt, ``1 + chi`` for FedSim).
    n_rounds : int, default=None
        Tune the steps to a horizon ``T``: ``eta / sqrt(T)``.
    local_steps : int or (int, int), default=1
        ``(tau_v, tau_u)``, or one count for both.

    Returns
    -------
    lr_shared, lr_personal : float

    Examples
    --------
    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=1.0)
    >>> bool(np.isclose(lr_u * p.constants.L_u, 1.0))
    True
    """
    if not eta > 0:
        raise ValueError(f"eta must be positive, got {eta!r}.")
    tau_v, tau_u = local_step_counts(local_steps)
    scale = eta / np.sqrt(n_rounds) if n_rounds else eta
    k = problem.constants
    return scale / (k.L_u * tau_u), scale / (k.L_v * tau_v)


def tuned_eta(problem: PersonalizedProblem, algorithm: str, n_rounds: int, *, batch_size: Optional[int] = None,
              clients_per_round: Optional[int] = None, initial_gap: Optional[float] = None) -> float:
    """The ``eta`` that minimizes :func:`descent_bound` at horizon ``T`` (noise evaluated at the optimum).

    With ``gamma_b = eta / L_b`` the bound is about ``(dF0 / T + eta^2 kappa S / 2) / eta`` with
    ``S = N_u / L_u + N_v / L_v``: minimal at ``eta = sqrt(2 dF0 / (kappa S T))``, which falls like
    ``1 / sqrt(T)``; capped at ``1 / kappa`` (where the descent coefficient is still ``eta / 2``).
    Without noise (``S = 0``) this is the cap.

    Parameters
    ----------
    problem : PersonalizedProblem
    algorithm : {"fedalt", "fedsim"}
    n_rounds : int
        The horizon ``T``.
    batch_size : int, default=None
        Rows per minibatch; ``None`` gives full gradients (no minibatch noise).
    clients_per_round : int, default=None
        ``m``; ``None`` is all clients (no client-sampling noise).
    initial_gap : float, default=None
        ``F(x_0) - F*``; ``None`` takes ``x_0 = 0``, the start of :func:`pfedest.theory.driver.run`.

    Returns
    -------
    eta : float
        To pass to :func:`theory_step_sizes`.

    Examples
    --------
    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> tuned_eta(p, "fedalt", 100)
    1.0
    >>> bool(np.isclose(tuned_eta(p, "fedsim", 100), 1.0 / (1.0 + p.constants.chi)))
    True
    >>> bool(tuned_eta(p, "fedalt", 100, batch_size=2) < 1.0)
    True
    """
    kappa = _kappa(problem, algorithm)
    u, V, F_star = problem.optimum
    N_u, N_v = problem.update_noise(u, V, batch_size, clients_per_round)
    k = problem.constants
    S = N_u / k.L_u + N_v / k.L_v
    if initial_gap is None:
        initial_gap = problem.objective(np.zeros_like(u), np.zeros_like(V)) - F_star
    cap = 1.0 / kappa
    if S <= 0:
        return cap
    return float(min(cap, np.sqrt(2.0 * initial_gap / (kappa * S * n_rounds))))


def descent_bound(problem: PersonalizedProblem, algorithm: str, lr_shared: float, lr_personal: float,
                  n_rounds: int, *, initial_gap: float, clients_per_round: Optional[int] = None,
                  local_steps: Union[int, Tuple[int, int]] = 1, noise_shared=0.0, noise_personal=0.0) -> np.ndarray:
    """Upper bound on the average of the measure over the first ``T`` rounds, for ``T = 1..n_rounds``.

    See the module docstring for the formula and ``docs/theory.md`` for its proof. It bounds
    :meth:`pfedest.theory.driver.Trajectory.running_mean` of ``measured`` (surely without noise, in
    expectation with noise).

    Parameters
    ----------
    problem : PersonalizedProblem
    algorithm : {"fedalt", "fedsim"}
    lr_shared, lr_personal : float
        ``gamma_u``, ``gamma_v``.
    n_rounds : int
    initial_gap : float
        ``F(x_0) - F*``.
    clients_per_round : int, default=None
        ``m``; ``None`` is all clients. FedAlt is covered only with all clients.
    local_steps : int, default=1
        Only one local step per block is covered.
    noise_shared, noise_personal : float or ndarray of shape (n_rounds,), default=0.0
        ``N_u,t`` and ``N_v,t`` per round (a number: the same every round).

    Returns
    -------
    bound : ndarray of shape (n_rounds,)

    Raises
    ------
    NotImplementedError
        For a case the proof does not cover (several local steps; FedAlt with partial participation).
    ValueError
        When a step size is too large for the descent lemma (``gamma_b >= 2 / (kappa L_b)``).

    Examples
    --------
    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> bound = descent_bound(p, "fedalt", lr_u, lr_v, 100, initial_gap=1.0)
    >>> bool(np.isclose(bound[9] / bound[99], 10.0))
    True
    """
    kappa, K = _descent_constants(problem, algorithm, lr_shared, lr_personal, clients_per_round, local_steps)
    k = problem.constants
    T = np.arange(1, n_rounds + 1)
    per_round = (kappa / 2.0) * (k.L_u * lr_shared ** 2 * np.broadcast_to(noise_shared, (n_rounds,))
                                 + k.L_v * lr_personal ** 2 * np.broadcast_to(noise_personal, (n_rounds,)))
    return K * (initial_gap / T + np.cumsum(per_round) / T)


def trajectory_bound(problem: PersonalizedProblem, trajectory: Trajectory) -> np.ndarray:
    """:func:`descent_bound` with the step sizes, participation and per-round noise of a run.

    Parameters
    ----------
    problem : PersonalizedProblem
        The problem the run was on.
    trajectory : Trajectory
        What :func:`pfedest.theory.driver.run` returned (one local step per block).

    Returns
    -------
    bound : ndarray of shape (trajectory.n_rounds,)
        Bound on ``trajectory.running_mean()`` round by round.

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, run
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> steps = dict(zip(["lr_shared", "lr_personal"], theory_step_sizes(p, eta=0.5)))
    >>> bool(np.all(run(p, "fedalt", 3, **steps).running_mean() <= trajectory_bound(p, run(p, "fedalt", 3, **steps))))
    True
    """
    return descent_bound(problem, trajectory.algorithm, trajectory.lr_shared, trajectory.lr_personal,
                         trajectory.n_rounds, initial_gap=float(trajectory.objective_gap[0]),
                         clients_per_round=trajectory.clients_per_round, local_steps=trajectory.local_steps,
                         noise_shared=trajectory.noise_shared, noise_personal=trajectory.noise_personal)


def round_bounds(problem: PersonalizedProblem, trajectory: Trajectory) -> Tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on each round's measure from that round's decrease of ``F``.

    With ``D_t = F(x_t) - F(x_{t+1})`` and one local step per block:

    - **lower** (convexity of ``F``): the step is ``-gamma`` times the block gradients, so
      ``D_t <= gamma_u ||grad_u F||^2 + (m/n) gamma_v sum_i alpha_i ||grad_v F_i||^2 <=
      max(L_u gamma_u, L_v gamma_v) Phi_t``; FedAlt's two half-steps each obey it, with the shared
      gradient at ``(u_t, V_{t+1})`` (:attr:`Trajectory.measured`);
    - **upper** (descent lemma, the per-round form of :func:`descent_bound`):
      ``Phi_t <= K [D_t + (kappa/2)(L_u gamma_u^2 N_u,t + L_v gamma_v^2 N_v,t)]``.

    So ``D_t / max(L_u gamma_u, L_v gamma_v) <= measured_t <= K D_t`` without noise, every
    round; with noise both hold in expectation. With ``gamma_b = eta / L_b`` the two sides differ
    by the factor ``1 / (1 - kappa eta / 2)`` only. Summed over rounds and divided by ``T`` they
    bound :meth:`Trajectory.running_mean`. Covered: as :func:`descent_bound`, on convex problems
    (all of :mod:`pfedest.theory`'s).

    Parameters
    ----------
    problem : PersonalizedProblem
    trajectory : Trajectory
        A run of :func:`pfedest.theory.driver.run` on ``problem``.

    Returns
    -------
    lower, upper : ndarray of shape (trajectory.n_rounds,)

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, run
    >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.2)
    >>> traj = run(p, "fedalt", 20, lr_shared=lr_u, lr_personal=lr_v)
    >>> lower, upper = round_bounds(p, traj)
    >>> bool(np.all(lower <= traj.measured) and np.all(traj.measured <= upper))
    True
    >>> round(float(np.max(upper / lower)), 6)  # 1 / (1 - eta / 2)
    1.111111
    """
    kappa, K = _descent_constants(problem, trajectory.algorithm, trajectory.lr_shared, trajectory.lr_personal,
                                  trajectory.clients_per_round, trajectory.local_steps)
    k = problem.constants
    decrease = -np.diff(trajectory.objective_gap[: trajectory.n_rounds + 1])
    noise = (kappa / 2.0) * (k.L_u * trajectory.lr_shared ** 2 * trajectory.noise_shared
                             + k.L_v * trajectory.lr_personal ** 2 * trajectory.noise_personal)
    first_order = max(k.L_u * trajectory.lr_shared, k.L_v * trajectory.lr_personal)
    return decrease / first_order, K * (decrease + noise)


def reference_round(problem: PersonalizedProblem, u: np.ndarray, V: np.ndarray, algorithm: str, lr_shared: float,
                    lr_personal: float, local_steps: Union[int, Tuple[int, int]] = 1) -> Tuple[np.ndarray, np.ndarray]:
    """One round with full gradients and all clients, written directly in NumPy from the algorithms' definitions.

    An independent statement of FedAlt and FedSim (it shares no code with :mod:`pfedest.core.algorithms`),
    used for :func:`linear_rate` and as a test oracle.

    Parameters
    ----------
    problem : PersonalizedProblem
    u : ndarray of shape (d_u,)
        The server's shared vector at the start of the round.
    V : ndarray of shape (n_clients, d_v)
        Every client's personal vector.
    algorithm : {"fedalt", "fedsim"}
    lr_shared, lr_personal : float
        ``gamma_u``, ``gamma_v``.
    local_steps : int or (int, int), default=1
        FedSim: joint steps. FedAlt: ``(personal, shared)`` steps, or one number for both.

    Returns
    -------
    u_new : ndarray of shape (d_u,)
        The ``alpha``-weighted average of the clients' shared vectors.
    V_new : ndarray of shape (n_clients, d_v)

    Examples
    --------
    The optimum is a fixed point of a full-gradient round:

    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> u, V, _ = p.optimum
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> u1, V1 = reference_round(p, u, V, "fedalt", lr_u, lr_v)
    >>> bool(np.allclose(u1, u) and np.allclose(V1, V))
    True
    """
    tau_v, tau_u = local_step_counts(local_steps, algorithm)
    n = problem.n_clients
    U = np.broadcast_to(np.asarray(u, dtype=np.float64), (n, problem.dim_shared)).copy()
    V = np.asarray(V, dtype=np.float64).copy()
    if algorithm == "fedalt":
        for _ in range(tau_v):
            _, g_v = problem.client_gradients(u, V, per_client_shared=U)
            V = V - lr_personal * g_v
        for _ in range(tau_u):
            g_u, _ = problem.client_gradients(u, V, per_client_shared=U)
            U = U - lr_shared * g_u
    else:  # FedSim: joint steps
        for _ in range(tau_u):
            g_u, g_v = problem.client_gradients(u, V, per_client_shared=U)
            U, V = U - lr_shared * g_u, V - lr_personal * g_v
    return problem.alpha @ U, V


def round_jacobian(problem: PersonalizedProblem, algorithm: str, lr_shared: float, lr_personal: float,
                   local_steps: Union[int, Tuple[int, int]] = 1, eps: float = 1e-6) -> np.ndarray:
    """Jacobian of one full-gradient, full-participation round at the optimum, over ``x = (u, v_1, ..., v_n)``.

    Central differences of :func:`reference_round`. For least squares the round is affine, so
    ``x_t - x* = J^t (x_0 - x*)`` exactly; for logistic regression this holds near the optimum.

    Parameters
    ----------
    problem, algorithm, lr_shared, lr_personal, local_steps
        The round, as in :func:`reference_round`.
    eps : float, default=1e-6
        Step of the central differences.

    Returns
    -------
    J : ndarray of shape (d_u + n_clients * d_v, d_u + n_clients * d_v)

    Examples
    --------
    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> J = round_jacobian(p, "fedalt", lr_u, lr_v)
    >>> J.shape
    (11, 11)
    >>> bool(np.max(np.abs(np.linalg.eigvals(J))) < 1.0)
    True
    """
    u, V, _ = problem.optimum
    d_u = problem.dim_shared
    x0 = np.concatenate([u, V.ravel()])

    def round_map(x):
        u_new, V_new = reference_round(problem, x[:d_u], x[d_u:].reshape(V.shape), algorithm, lr_shared,
                                       lr_personal, local_steps)
        return np.concatenate([u_new, V_new.ravel()])

    J = np.empty((len(x0), len(x0)))
    for j in range(len(x0)):
        e = np.zeros_like(x0)
        e[j] = eps
        J[:, j] = (round_map(x0 + e) - round_map(x0 - e)) / (2 * eps)
    return J


def linear_rate(problem: PersonalizedProblem, algorithm: str, lr_shared: float, lr_personal: float,
                local_steps: Union[int, Tuple[int, int]] = 1, eps: float = 1e-6) -> float:
    """Spectral radius of :func:`round_jacobian`: the asymptotic factor per round of ``||x_t - x*||``.

    Exact for least squares (locally for logistic regression); ``> 1`` means the iteration diverges.
    When the two largest eigenvalues are close, a run approaches this factor only slowly.

    Parameters
    ----------
    problem, algorithm, lr_shared, lr_personal, local_steps, eps
        As in :func:`round_jacobian`.

    Returns
    -------
    rate : float
        The spectral radius.

    Examples
    --------
    >>> from pfedest.theory import make_least_squares
    >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, coupling=0.0, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=1.0)
    >>> a, s = (linear_rate(p, alg, lr_u, lr_v) for alg in ("fedalt", "fedsim"))
    >>> bool(abs(a - s) < 1e-8)
    True
    """
    J = round_jacobian(problem, algorithm, lr_shared, lr_personal, local_steps, eps)
    return float(np.max(np.abs(np.linalg.eigvals(J))))


def recalled_rate(n_rounds, initial_gap: float, s1: float, s2: float = 0.0) -> np.ndarray:
    """The *shape* of the paper's rate: ``sqrt(dF0 s1 / T) + (dF0^2 s2 / T^2)^(1/3) + dF0 / T``.

    Recalled, not read: the theorems' constants are unknown here (see the module docstring). Use
    it for exponents and crossovers (the ``1/sqrt(T)`` term dominates at large ``T`` once there is
    noise, ``s1 > 0``), never as an upper bound.

    Parameters
    ----------
    n_rounds : int or array-like of int
        ``T``.
    initial_gap : float
        ``dF0 = F(x_0) - F*``.
    s1 : float
        Scale of the ``1/sqrt(T)`` (noise) term.
    s2 : float, default=0.0
        Scale of the ``T^(-2/3)`` term.

    Returns
    -------
    rate : ndarray of the shape of ``n_rounds``

    Examples
    --------
    >>> T = np.array([1e6, 1e8])
    >>> r = recalled_rate(T, 1.0, s1=1.0)
    >>> round(fit_slope(T, r), 2)
    -0.5
    """
    T = np.asarray(n_rounds, dtype=float)
    return np.sqrt(initial_gap * s1 / T) + np.cbrt(initial_gap ** 2 * s2 / T ** 2) + initial_gap / T


def fit_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``.

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Positive values, ``n >= 2``.

    Returns
    -------
    slope : float

    Examples
    --------
    >>> round(fit_slope([1, 10, 100], [1, 0.1, 0.01]), 6)
    -1.0
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError(f"fit_slope needs at least two positive (x, y) pairs of equal length; got {len(x)} x and "
                         f"{len(y)} y values, min x {x.min() if x.size else None}, "
                         f"min y {y.min() if y.size else None}.")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def fit_linear_rate(values, low: float = 1e-11, high: float = 1e-3) -> float:
    """Per-round factor ``r`` of a sequence ``values[t] ~ C r^t``, fitted where ``low < values < high``.

    The window leaves out the start (before the slowest mode dominates) and the rounding floor.

    Parameters
    ----------
    values : array-like of shape (T,)
        The sequence, indexed by round (e.g. ``Trajectory.distance``).
    low, high : float, default=1e-11 and 1e-3
        The window; at least 3 values must fall in it.

    Returns
    -------
    r : float

    Examples
    --------
    >>> round(fit_linear_rate(0.5 ** np.arange(60)), 6)
    0.5
    """
    values = np.asarray(values, dtype=float)
    t = np.flatnonzero((values > low) & (values < high))
    if len(t) < 3:
        raise ValueError(f"fewer than 3 values between {low:g} and {high:g}: run more rounds or widen the window.")
    return float(np.exp(np.polyfit(t, np.log(values[t]), 1)[0]))
