"""Run FedAlt or FedSim on a problem of :mod:`pfedest.theory.problems`, measuring every round.

:func:`run` drives :func:`pfedest.core.rounds.run_round` with
:data:`pfedest.core.algorithms.ALGORITHMS`, the code the estimator trains with, on the problem's
:meth:`~pfedest.theory.problems.PersonalizedProblem.torch_loss` (shared ``{"u": [d_u]}``, personal
``{"v": [n_clients, d_v]}``, in float64). After every round it records, at the new iterate, the
quantities the theory speaks of (the objective gap, the distance to the optimum, the stationarity
measure and the noise of the round's updates) in a :class:`Trajectory`, which
:mod:`pfedest.theory.rates` sets next to its predictions.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from sklearn.utils import check_random_state

from ..core.algorithms import ALGORITHMS, StepSizes
from ..core.engine import make_engine
from ..core.rounds import run_round
from ..core.sampling import RoundKeys, sample_clients
from .problems import PersonalizedProblem

__all__ = ["Trajectory", "run", "local_step_counts", "draw_seed"]


@dataclass
class Trajectory:
    """What :func:`run` measured, round by round.

    Arrays indexed by round ``t = 0..T`` hold values at the iterate ``(u_t, V_t)`` before round
    ``t + 1``; arrays of length ``T`` hold one value per round. Built by :func:`run`; the fields
    below are its constructor's parameters and the instance's attributes.

    Parameters
    ----------
    algorithm : str
    lr_shared, lr_personal : float
    local_steps : tuple of int
        ``(personal, shared)`` for FedAlt, ``(joint, joint)`` for FedSim.
    batch_size : int
        Rows per minibatch (``>= m_i``: full gradients).
    clients_per_round : int
    participation : float
        ``m / n``.
    objective_gap : ndarray of shape (T + 1,)
        ``F(u_t, V_t) - F*``.
    distance : ndarray of shape (T + 1,)
        ``sqrt(||u_t - u*||^2 + sum_i ||v_i,t - v_i*||^2)``.
    stationarity : ndarray of shape (T + 1,)
        The measure of :meth:`PersonalizedProblem.stationarity` at ``(u_t, V_t)``.
    stationarity_shared : ndarray of shape (T + 1,)
        Its shared part alone, ``(1/L_u) ||grad_u F(u_t, V_t)||^2``.
    measured : ndarray of shape (T,)
        The per-round quantity that the descent bound of :func:`pfedest.theory.rates.descent_bound`
        covers: ``stationarity[t]`` for FedSim; for FedAlt the shared part is evaluated at
        ``(u_t, V_{t+1})``, the point its shared step starts from.
    noise_shared : ndarray of shape (T,)
        ``E ||g_u - grad_u F||^2`` of the round's averaged shared gradient (first local step), given
        the iterate: client sampling (``delta^2``) plus minibatch noise (see
        :meth:`PersonalizedProblem.update_noise`).
    noise_personal : ndarray of shape (T,)
        ``(m/n) sum_i alpha_i Var(g_v,i)``: the personal minibatch noise of the clients that move.
    train_loss : ndarray of shape (T,)
        The engine's reported mean data loss over the round's minibatches.
    shared, personal : ndarray
        The final ``u`` and ``V``.
    diverged_at : int or None
        The round whose loss or iterate was no longer finite (the run stopped there).

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, theory_step_sizes
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> traj = run(p, "fedalt", 3, lr_shared=lr_u, lr_personal=lr_v, random_state=0)
    >>> traj.n_rounds, traj.objective_gap.shape, traj.local_steps
    (3, (4,), (1, 1))
    >>> bool(np.all(np.diff(traj.objective_gap) < 0))
    True
    >>> traj.running_mean().shape
    (3,)
    """

    algorithm: str
    lr_shared: float
    lr_personal: float
    local_steps: Tuple[int, int]
    batch_size: int
    clients_per_round: int
    participation: float
    objective_gap: np.ndarray
    distance: np.ndarray
    stationarity: np.ndarray
    stationarity_shared: np.ndarray
    measured: np.ndarray
    noise_shared: np.ndarray
    noise_personal: np.ndarray
    train_loss: np.ndarray
    shared: np.ndarray
    personal: np.ndarray
    diverged_at: Optional[int] = None

    @property
    def n_rounds(self) -> int:
        return len(self.measured)

    def running_mean(self, name: str = "measured") -> np.ndarray:
        """``(1/T) sum_{t<T}`` of a per-round array, for ``T = 1..n_rounds``: what the theorems bound."""
        values = np.asarray(getattr(self, name), dtype=float)[: self.n_rounds]
        return np.cumsum(values) / np.arange(1, len(values) + 1)


def local_step_counts(local_steps: Union[int, Tuple[int, int]], algorithm: Optional[str] = None) -> Tuple[int, int]:
    """``(personal, shared)`` local step counts from one count for both blocks or a pair.

    Parameters
    ----------
    local_steps : int or (int, int)
        FedSim: joint steps. FedAlt: ``(personal, shared)`` steps, or one number for both.
    algorithm : {"fedalt", "fedsim"}, default=None
        Checked when given; FedSim takes joint steps, so its pair must be equal.

    Returns
    -------
    personal, shared : int

    Examples
    --------
    >>> local_step_counts(2), local_step_counts((1, 3), "fedalt")
    ((2, 2), (1, 3))
    """
    if algorithm is not None and algorithm not in ("fedalt", "fedsim"):
        raise ValueError(f"algorithm must be 'fedalt' or 'fedsim', got {algorithm!r}.")
    pair = (local_steps, local_steps) if isinstance(local_steps, Integral) else tuple(local_steps)
    if len(pair) != 2 or not all(isinstance(s, Integral) and s >= 1 for s in pair):
        raise ValueError(f"local_steps must be a positive integer or a pair of them, got {local_steps!r}.")
    personal, shared = (int(s) for s in pair)
    if algorithm == "fedsim" and personal != shared:
        raise ValueError(f"FedSim takes joint steps: give one local step count, got {local_steps!r}.")
    return personal, shared


def draw_seed(random_state) -> int:
    """The seed that keys a run's draws: an int ``random_state`` is itself the seed, as for the estimator.

    Anything else (``None``, a ``RandomState``) draws one number from it.

    Examples
    --------
    >>> draw_seed(7), draw_seed(np.random.RandomState(0)) == draw_seed(np.random.RandomState(0))
    (7, True)
    """
    if isinstance(random_state, Integral) and not isinstance(random_state, (bool, np.bool_)):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state!r}.")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class _Measures(NamedTuple):
    """What the driver reads at one iterate: the measure's two parts and the noise of a round from it."""

    shared: float  # (1/L_u) ||grad_u F||^2
    personal: float  # (1/L_v) sum_i alpha_i ||grad_v F_i||^2, not yet weighted by m/n
    noise_shared: float  # N_u
    noise_personal: float  # N_v


# One engine per (problem, name, compile): a compiled step is reused by every run on the problem.
_ENGINES: "weakref.WeakKeyDictionary[PersonalizedProblem, dict]" = weakref.WeakKeyDictionary()


def _engine(problem: PersonalizedProblem, name: str, compile: bool):
    cache = _ENGINES.setdefault(problem, {})
    if (name, compile) not in cache:
        shared = {"u": torch.zeros(problem.dim_shared, dtype=torch.float64)}
        cache[name, compile] = make_engine(name, problem.torch_loss(), shared, compile=compile)
    return cache[name, compile]


def run(problem: PersonalizedProblem, algorithm: str, n_rounds: int, *, lr_shared: float, lr_personal: float,
        clients_per_round: Optional[int] = None, local_steps: Union[int, Tuple[int, int]] = 1,
        batch_size: Optional[int] = None, engine: str = "vmap", compile: bool = False, init=None,
        random_state=None) -> Trajectory:
    """Run FedAlt or FedSim on ``problem`` through :func:`pfedest.core.rounds.run_round`, measuring every round.

    The shared vector is ``{"u": [d_u]}``, the personal state ``{"v": [n_clients, d_v]}``, in
    float64. Every draw is keyed as the estimator keys it: round ``t`` (from 1) samples its clients
    with :func:`pfedest.core.sampling.sample_clients` from ``default_rng([seed, t])`` and draws
    its minibatches from :class:`~pfedest.core.sampling.RoundKeys` ``(seed, t)``, ``seed =``
    :func:`draw_seed` ``(random_state)``. Two runs with the same ``random_state`` sample the same
    clients whatever the algorithm, and :func:`pfedest.theory.simulate.simulate` with
    ``draws="keyed"`` draws the same minibatches.

    Parameters
    ----------
    problem : PersonalizedProblem
    algorithm : {"fedalt", "fedsim"}
    n_rounds : int
    lr_shared, lr_personal : float
        Client step sizes ``gamma_u``, ``gamma_v`` (see :func:`pfedest.theory.rates.theory_step_sizes`).
    clients_per_round : int, default=None
        ``m``; ``None`` is full participation.
    local_steps : int or (int, int), default=1
        FedSim: joint steps. FedAlt: ``(personal, shared)`` steps, or one number for both.
    batch_size : int, default=None
        Rows per minibatch; ``None`` (or at least the largest client) gives full gradients.
    engine : {"vmap", "loop"}, default="vmap"
    compile : bool, default=False
        Compile the batched step with ``torch.compile`` (vmap engine): a one-off compilation per
        problem and step layout, then faster rounds; for runs of thousands of rounds (timings in
        ``docs/theory.md``).
    init : (ndarray, ndarray), default=None
        Starting ``(u, V)``; zeros by default.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    Trajectory

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, theory_step_sizes
    >>> p = make_least_squares(n_clients=4, n_samples_per_client=20, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> traj = run(p, "fedalt", 200, lr_shared=lr_u, lr_personal=lr_v)
    >>> bool(traj.objective_gap[-1] < 1e-10)
    True
    """
    personal_steps, shared_steps = local_step_counts(local_steps, algorithm)
    if not isinstance(n_rounds, Integral) or n_rounds < 1:
        raise ValueError(f"n_rounds must be a positive integer, got {n_rounds!r}.")
    if not (lr_shared > 0 and lr_personal > 0):
        raise ValueError(f"step sizes must be positive, got lr_shared={lr_shared!r}, lr_personal={lr_personal!r}.")
    n = problem.n_clients
    m = n if clients_per_round is None else int(clients_per_round)
    if not 1 <= m <= n:
        raise ValueError(f"clients_per_round must be in [1, {n}], got {clients_per_round!r}.")
    b = int(problem.counts.max()) if batch_size is None else int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
    steps = ALGORITHMS[algorithm].steps(personal_steps, shared_steps)

    seed = draw_seed(random_state)

    u, V = (np.zeros(problem.dim_shared), np.zeros((n, problem.dim_personal))) if init is None else init
    u, V = (a.copy() for a in problem.check_point(u, V))
    shared = {"u": torch.tensor(u, dtype=torch.float64)}
    personal = {"v": torch.tensor(V, dtype=torch.float64)}
    runner = _engine(problem, engine, compile)
    lr = StepSizes(shared=float(lr_shared), personal=float(lr_personal))
    u_star, V_star, F_star = problem.optimum
    participation = m / n

    def at(u, V) -> _Measures:
        return _Measures(*problem.stationarity_terms(u, V), *problem.update_noise(u, V, b, m))

    gap, dist, stat, stat_u = [], [], [], []

    def record(u, V, here: _Measures):
        gap.append(problem.objective(u, V) - F_star)
        dist.append(float(np.sqrt(np.sum((u - u_star) ** 2) + np.sum((V - V_star) ** 2))))
        stat.append(here.shared + participation * here.personal)
        stat_u.append(here.shared)

    here = at(u, V)
    record(u, V, here)
    measured, noise_u, noise_v, losses = [], [], [], []
    diverged_at = None
    for t in range(n_rounds):
        sampled = sample_clients(np.random.default_rng([seed, t + 1]), np.arange(n), m)
        new_shared, result = run_round(
            algorithm=ALGORITHMS[algorithm], engine=runner, shared=shared, personal_state=personal,
            counts=problem.counts, offsets=problem.offsets, sampled=sampled, rng=RoundKeys(seed, t + 1), batch_size=b,
            steps=steps, lr=lr, server_lr=1.0, chunk_size=None, device=torch.device("cpu"))
        u_new = new_shared["u"].numpy().copy()
        V_new = personal["v"].numpy().copy()
        if not (result.finite and np.all(np.isfinite(u_new)) and np.all(np.isfinite(V_new))):
            diverged_at = t + 1
            break
        # FedAlt's shared step starts from (u_t, V_{t+1}); FedSim's from (u_t, V_t).
        start = at(u, V_new) if algorithm == "fedalt" else here
        measured.append(start.shared + participation * here.personal)
        noise_u.append(start.noise_shared)
        noise_v.append(here.noise_personal)
        losses.append(result.loss_sum / max(result.row_count, 1.0))
        shared, u, V = new_shared, u_new, V_new
        here = at(u, V)
        record(u, V, here)

    return Trajectory(
        algorithm=algorithm, lr_shared=lr.shared, lr_personal=lr.personal, local_steps=(personal_steps, shared_steps),
        batch_size=b, clients_per_round=m, participation=participation, objective_gap=np.array(gap),
        distance=np.array(dist), stationarity=np.array(stat), stationarity_shared=np.array(stat_u),
        measured=np.array(measured), noise_shared=np.array(noise_u), noise_personal=np.array(noise_v),
        train_loss=np.array(losses), shared=u, personal=V, diverged_at=diverged_at)
