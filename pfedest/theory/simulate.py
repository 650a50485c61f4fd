"""FedAlt and FedSim in NumPy, many seeds at once: the fast twin of :func:`pfedest.theory.driver.run`.

A rate measured with an interval over seeds needs hundreds of runs of thousands of rounds. The
driver runs one seed through the engine the estimator trains with (a few milliseconds a round,
most of it PyTorch's overhead on these tiny models). :func:`simulate` states the same round in
NumPy, vectorized over seeds, a hundred times faster per run:

- clients sampled uniformly without replacement, minibatches from
  :func:`pfedest.core.sampling.minibatch_stream` (``b`` distinct rows per step);
- FedAlt: ``tau_v`` steps on ``v_i`` with ``u`` fixed, then ``tau_u`` steps on ``u`` with the new
  ``v_i``, each stream its own minibatches; FedSim: joint steps on one stream;
- the server takes the row-count-weighted mean of the clients' ``u_i`` (the engine's default
  weights, the server's SGD at learning rate 1); unsampled clients keep ``v_i``.

With ``draws="keyed"`` it draws what the driver (and the estimator) draw, seed by seed, and then
equals :func:`~pfedest.theory.driver.run` to rounding (``tests/test_simulate.py``); with
``draws="fast"`` one generator draws every seed's clients and minibatches at once (the same
distribution, other realizations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..core.algorithms import ALGORITHMS
from ..core.rounds import draw_batches
from ..core.sampling import RoundKeys, minibatch_stream, sample_clients
from .driver import draw_seed, local_step_counts
from .problems import PersonalizedProblem

__all__ = ["Ensemble", "simulate"]


@dataclass
class Ensemble:
    """What :func:`simulate` measured: one row per seed, one column per round.

    The fields mean what the fields of :class:`pfedest.theory.driver.Trajectory` of the same name
    mean, with a leading axis of seeds.

    Parameters
    ----------
    algorithm : str
    lr_shared, lr_personal : float
    local_steps : (int, int)
    batch_size, clients_per_round : int
    participation : float
    objective_gap, stationarity, stationarity_shared : ndarray of shape (n_seeds, T + 1)
    measured : ndarray of shape (n_seeds, T)
    noise_shared, noise_personal : ndarray of shape (n_seeds, T) or None
        Recorded with ``noise=True`` (for :func:`pfedest.theory.rates.descent_bound`).
    shared : ndarray of shape (n_seeds, d_u)
    personal : ndarray of shape (n_seeds, n_clients, d_v)

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, theory_step_sizes
    >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> runs = simulate(p, "fedsim", 50, lr_shared=lr_u, lr_personal=lr_v, batch_size=2, n_seeds=4)
    >>> runs.measured.shape, runs.running_mean().shape
    ((4, 50), (4, 50))
    """

    algorithm: str
    lr_shared: float
    lr_personal: float
    local_steps: Tuple[int, int]
    batch_size: int
    clients_per_round: int
    participation: float
    objective_gap: np.ndarray
    stationarity: np.ndarray
    stationarity_shared: np.ndarray
    measured: np.ndarray
    shared: np.ndarray
    personal: np.ndarray
    noise_shared: Optional[np.ndarray] = None
    noise_personal: Optional[np.ndarray] = None

    @property
    def n_rounds(self) -> int:
        return self.measured.shape[1]

    @property
    def n_seeds(self) -> int:
        return self.measured.shape[0]

    def running_mean(self, name: str = "measured") -> np.ndarray:
        """``(1/T) sum_{t<T}`` of a per-round array for ``T = 1..n_rounds``, each seed: shape ``(n_seeds, T)``."""
        values = np.asarray(getattr(self, name), dtype=float)[:, : self.n_rounds]
        return np.cumsum(values, axis=1) / np.arange(1, values.shape[1] + 1)


class _Batched:
    """The problem's objective and gradients at one point per seed, ``U [S, d_u]``, ``V [S, n, d_v]``."""

    def __init__(self, problem: PersonalizedProblem):
        self.p = problem
        self.c = problem.client_of_row

    def margins(self, U, V):
        return U @ self.p.A.T + np.einsum("rd,srd->sr", self.p.B, V[:, self.c])

    def client_means(self, rows):  # [S, n_rows, ...] -> [S, n, ...]
        sums = np.add.reduceat(rows, self.p.offsets, axis=1)
        return sums / self.p.counts.reshape(1, -1, *([1] * (rows.ndim - 2)))

    def objective(self, U, V):
        p = self.p
        rows = (p._loss(self.margins(U, V), p.y) + U @ p.noise_u.T
                + np.einsum("rd,srd->sr", p.noise_v, V[:, self.c]))
        F_i = self.client_means(rows) + 0.5 * p.ridge_u * np.sum(U * U, 1)[:, None] + 0.5 * p.ridge_v * np.sum(V * V, 2)
        return F_i @ p.alpha

    def gradients(self, U, V):
        """``grad_u F [S, d_u]`` and each client's ``grad_v F_i [S, n, d_v]``."""
        p = self.p
        s = p._dloss(self.margins(U, V), p.y)[..., None]
        g_u = self.client_means(s * p.A + p.noise_u)
        g_v = self.client_means(s * p.B + p.noise_v) + p.ridge_v * V
        return np.einsum("n,snd->sd", p.alpha, g_u) + p.ridge_u * U, g_v

    def terms(self, U, V):
        """The two parts of the measure (:meth:`PersonalizedProblem.stationarity_terms`) per seed."""
        g_u, g_v = self.gradients(U, V)
        k = self.p.constants
        return np.sum(g_u * g_u, 1) / k.L_u, np.sum(g_v * g_v, 2) @ self.p.alpha / k.L_v

    def noise(self, U, V, batch_size, m):
        """``N_u`` and ``N_v`` of :meth:`PersonalizedProblem.update_noise` per seed."""
        p, n = self.p, self.p.n_clients
        s = p._dloss(self.margins(U, V), p.y)[..., None]
        b = np.minimum(batch_size, p.counts)
        factor = np.where(p.counts > 1, (p.counts - b) / (b * np.maximum(p.counts - 1, 1)), 0.0)
        var, means = [], []
        for rows in (s * p.A + p.noise_u, s * p.B + p.noise_v):
            mean = self.client_means(rows)
            var.append(factor * self.client_means(np.sum((rows - mean[:, self.c]) ** 2, -1)))
            means.append(mean)
        if m == n:
            N_u = var[0] @ p.alpha ** 2
        else:
            spread = means[0] - np.einsum("n,snd->sd", p.alpha, means[0])[:, None]
            N_u = (n - m) / (m * (n - 1)) * (np.sum(spread ** 2, -1) @ p.alpha) + var[0].sum(1) / (m * n)
        return N_u, (m / n) * (var[1] @ p.alpha)

    def step(self, U, V, idx, mask, lr_u, lr_v):
        """One SGD step of each (seed, client) on its minibatch: ``U, V [S, m, d]``, ``idx, mask [S, m, b]``."""
        p = self.p
        mask = mask.astype(np.float64)  # minibatch_stream's masks are float32
        a, b, y = p.A[idx], p.B[idx], p.y[idx]
        s = p._dloss(np.einsum("smbd,smd->smb", a, U) + np.einsum("smbd,smd->smb", b, V), y) * mask
        count = mask.sum(-1, keepdims=True)
        real = np.minimum(count, 1.0)  # a padding step changes nothing, ridge included
        per = np.maximum(count, 1.0)
        g_u = (np.einsum("smb,smbd->smd", s, a) + np.einsum("smb,smbd->smd", mask, p.noise_u[idx])) / per
        g_v = (np.einsum("smb,smbd->smd", s, b) + np.einsum("smb,smbd->smd", mask, p.noise_v[idx])) / per
        new_U = U - lr_u * (g_u + real * p.ridge_u * U) if lr_u else U
        new_V = V - lr_v * (g_v + real * p.ridge_v * V) if lr_v else V
        return new_U, new_V


def simulate(problem: PersonalizedProblem, algorithm: str, n_rounds: int, *, lr_shared: float, lr_personal: float,
             clients_per_round: Optional[int] = None, local_steps: Union[int, Tuple[int, int]] = 1,
             batch_size: Optional[int] = None, n_seeds: int = 1, draws: str = "fast", init=None,
             random_state: Union[None, int, Sequence[int]] = None, noise: bool = False) -> Ensemble:
    """Run FedAlt or FedSim on ``problem`` for ``n_seeds`` seeds at once, in NumPy, measuring every round.

    Parameters
    ----------
    problem, algorithm, n_rounds, lr_shared, lr_personal, clients_per_round, local_steps, batch_size, init
        As in :func:`pfedest.theory.driver.run`.
    n_seeds : int, default=1
        Independent runs. With ``draws="keyed"`` and a sequence ``random_state``, its length.
    draws : {"fast", "keyed"}, default="fast"
        ``"fast"``: one generator seeded by ``random_state`` draws every seed's clients and
        minibatches. ``"keyed"``: seed ``s`` draws what ``run(..., random_state=r_s)`` draws, with
        ``r_s = random_state[s]`` (a sequence) or ``random_state + s`` (an int).
    random_state : int, sequence of int or None, default=None
    noise : bool, default=False
        Also record each round's update noise ``N_u``, ``N_v`` (as the driver does; a third more
        time per round).

    Returns
    -------
    Ensemble

    Examples
    --------
    >>> from pfedest.theory import make_least_squares, run, theory_step_sizes
    >>> p = make_least_squares(n_clients=4, n_samples_per_client=12, random_state=0)
    >>> lr_u, lr_v = theory_step_sizes(p, eta=0.5)
    >>> kw = dict(lr_shared=lr_u, lr_personal=lr_v, batch_size=3, clients_per_round=2)
    >>> twin = simulate(p, "fedalt", 20, draws="keyed", random_state=[7], **kw)
    >>> engine = run(p, "fedalt", 20, random_state=7, **kw)
    >>> bool(np.allclose(twin.objective_gap[0], engine.objective_gap, rtol=1e-10, atol=1e-13))
    True
    """
    personal_steps, shared_steps = local_step_counts(local_steps, algorithm)
    if draws not in ("fast", "keyed"):
        raise ValueError(f"draws must be 'fast' or 'keyed', got {draws!r}.")
    if not isinstance(n_rounds, (int, np.integer)) or n_rounds < 1:
        raise ValueError(f"n_rounds must be a positive integer, got {n_rounds!r}.")
    n = problem.n_clients
    m = n if clients_per_round is None else int(clients_per_round)
    if not 1 <= m <= n:
        raise ValueError(f"clients_per_round must be in [1, {n}], got {clients_per_round!r}.")
    b = int(problem.counts.max()) if batch_size is None else int(batch_size)
    if draws == "keyed":
        states = list(random_state) if isinstance(random_state, Sequence) else [
            (random_state or 0) + s for s in range(n_seeds)]
        keys = [draw_seed(r) for r in states]
        n_seeds = len(keys)
    else:
        rng = np.random.default_rng(draw_seed(random_state))
    alg = ALGORITHMS[algorithm]
    steps = alg.steps(personal_steps, shared_steps)
    batched = _Batched(problem)

    def draw(t):
        """``sampled [S, m]`` and each stream's ``(idx, mask) [S, m, steps, b]`` as global row indices."""
        if draws == "keyed":
            sampled = np.stack([sample_clients(np.random.default_rng([key, t + 1]), np.arange(n), m) for key in keys])
            per_seed = [draw_batches(alg, RoundKeys(key, t + 1), problem.counts[s], b, steps, keys=s)
                        for key, s in zip(keys, sampled)]
            batches = {name: tuple(np.stack([d[name][i] for d in per_seed]) for i in (0, 1)) for name in steps}
        else:
            sampled = np.sort(np.argsort(rng.random((n_seeds, n)), axis=1)[:, :m], axis=1)
            counts = problem.counts[sampled].ravel()
            batches = {}
            for name, count in steps.items():
                idx, mask = minibatch_stream(rng, counts, b, count)
                batches[name] = (idx.reshape(n_seeds, m, *idx.shape[1:]), mask.reshape(n_seeds, m, *mask.shape[1:]))
        offsets = problem.offsets[sampled][..., None, None]
        return sampled, {name: (idx + offsets, mask) for name, (idx, mask) in batches.items()}

    if init is None:
        u0, V0 = np.zeros(problem.dim_shared), np.zeros((n, problem.dim_personal))
    else:
        u0, V0 = problem.check_point(*init)
    U = np.tile(u0, (n_seeds, 1))
    V = np.tile(V0, (n_seeds, 1, 1))
    seeds = np.arange(n_seeds)[:, None]
    F_star = problem.optimum[2]
    participation = m / n
    gap, stat, stat_u, measured, noise_u, noise_v = [], [], [], [], [], []
    here = batched.terms(U, V)

    def record(U, V, here):
        gap.append(batched.objective(U, V) - F_star)
        stat.append(here[0] + participation * here[1])
        stat_u.append(here[0])

    record(U, V, here)
    for t in range(n_rounds):
        sampled, batches = draw(t)
        U_c = np.repeat(U[:, None], m, axis=1)
        V_c = V[seeds, sampled]
        weights = problem.counts[sampled].astype(float)
        if algorithm == "fedalt":
            for name, lr_u, lr_v in (("personal", 0.0, lr_personal), ("shared", lr_shared, 0.0)):
                idx, mask = batches[name]
                for j in range(idx.shape[2]):
                    U_c, V_c = batched.step(U_c, V_c, idx[:, :, j], mask[:, :, j], lr_u, lr_v)
        else:
            idx, mask = batches["joint"]
            for j in range(idx.shape[2]):
                U_c, V_c = batched.step(U_c, V_c, idx[:, :, j], mask[:, :, j], lr_shared, lr_personal)
        V_new = V.copy()
        V_new[seeds, sampled] = V_c
        U_new = np.einsum("sm,smd->sd", weights, U_c) / weights.sum(1, keepdims=True)
        start = batched.terms(U, V_new)[0] if algorithm == "fedalt" else here[0]
        measured.append(start + participation * here[1])
        if noise:
            noise_u.append(batched.noise(U, V_new if algorithm == "fedalt" else V, b, m)[0])
            noise_v.append(batched.noise(U, V, b, m)[1])
        U, V = U_new, V_new
        here = batched.terms(U, V)
        record(U, V, here)

    stack = lambda rows: np.stack(rows, axis=1)  # noqa: E731
    return Ensemble(algorithm=algorithm, lr_shared=float(lr_shared), lr_personal=float(lr_personal),
                    local_steps=(personal_steps, shared_steps), batch_size=b, clients_per_round=m,
                    participation=participation, objective_gap=stack(gap), stationarity=stack(stat),
                    stationarity_shared=stack(stat_u), measured=stack(measured), shared=U, personal=V,
                    noise_shared=stack(noise_u) if noise else None, noise_personal=stack(noise_v) if noise else None)
