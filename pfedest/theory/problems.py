"""Convex personalized problems with known constants: the objective, its gradients, noise and optimum.

A problem has shared parameters ``u`` (dimension ``d_u``) and one personal vector ``v_i`` (dimension
``d_v``) per client. Client ``i`` holds rows ``j = 1..m_i`` with features ``a_j`` (for ``u``) and
``b_j`` (for ``v_i``), a target ``y_j`` and two gradient-noise vectors ``xi_j^u, xi_j^v`` that sum to
zero over the client's rows. Its loss is

    F_i(u, v_i) = (1/m_i) sum_j [ l(a_j.u + b_j.v_i, y_j) + xi_j^u.u + xi_j^v.v_i ]
                  + (ridge_u/2) ||u||^2 + (ridge_v/2) ||v_i||^2

with ``l`` the squared loss (:class:`PersonalizedLeastSquares`) or the logistic loss
(:class:`PersonalizedLogistic`), and the federated objective is ``F = sum_i alpha_i F_i`` with
``alpha_i = m_i / sum_k m_k``. The generators of :mod:`pfedest.theory.generators` give every
client the same number of rows, so ``alpha_i = 1/n`` (the weighting of the analysis) *and* the
engine's sample-count weighting agree.

The noise vectors change no full gradient (they sum to zero on each client) but enter every
minibatch gradient: they set the gradient noise of the shared and of the personal block separately,
the knobs ``shared_noise`` and ``personal_noise``.

FedAlt and FedSim run on these problems through the same code as the estimator: :meth:`torch_loss`
is a ``loss(shared, personal, idx, mask)`` over the stacked rows (shared ``{"u": [d_u]}``,
personal ``{"v": [n_clients, d_v]}``), which :func:`pfedest.theory.driver.run` trains.

Everything the theory needs is computed from the data (see :class:`Constants`): smoothness in
``u`` and ``v``, the cross term and the coupling ``chi``, the strong convexity, the heterogeneity
``delta^2`` and the minibatch noise ``sigma^2`` at any point, and the optimum (closed form for least
squares, L-BFGS then Newton to machine precision for logistic regression).
"""

from __future__ import annotations

from functools import cached_property
from typing import Optional, Tuple

import numpy as np
import torch

from .constants import Constants, lambda_max, spectral_norm

__all__ = ["PersonalizedProblem", "PersonalizedLeastSquares", "PersonalizedLogistic"]


class PersonalizedProblem:
    """Rows of all clients stacked by client, a convex row loss, and the exact quantities of ``F``.

    Subclasses define the row loss ``l(z, y)`` (:meth:`_loss`, :meth:`_dloss`, :meth:`_d2loss`,
    :meth:`_torch_loss`) and ``_curvature``, an upper bound on ``l''``.

    Parameters
    ----------
    A : ndarray of shape (n_rows, d_u)
        Features multiplying the shared ``u``, rows sorted by client.
    B : ndarray of shape (n_rows, d_v)
        Features multiplying the client's personal ``v_i``.
    y : ndarray of shape (n_rows,)
        Targets.
    counts : ndarray of int, shape (n_clients,)
        Rows per client (client ``c`` owns ``offsets[c] .. offsets[c] + counts[c] - 1``).
    noise_u, noise_v : ndarray of shape (n_rows, d_u) and (n_rows, d_v), default=None
        Per-row linear terms that set the minibatch gradient noise; re-centred to sum to zero on
        each client. ``None``: zeros.
    ridge_u, ridge_v : float, default=0.0
        Ridge penalties ``(ridge/2) ||.||^2`` in every ``F_i``.

    Examples
    --------
    A subclass built from arrays (two clients of three rows each):

    >>> rng = np.random.default_rng(0)
    >>> A, B, y = rng.standard_normal((6, 2)), rng.standard_normal((6, 1)), rng.standard_normal(6)
    >>> p = PersonalizedLeastSquares(A, B, y, counts=[3, 3])
    >>> p.n_clients, p.dim_shared, p.dim_personal
    (2, 2, 1)
    >>> p.offsets.tolist(), p.alpha.tolist()
    ([0, 3], [0.5, 0.5])
    """

    _curvature = 1.0

    def __init__(self, A, B, y, counts, noise_u=None, noise_v=None, ridge_u: float = 0.0, ridge_v: float = 0.0):
        A = np.asarray(A, dtype=np.float64)
        B = np.asarray(B, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        counts = np.asarray(counts)
        if A.ndim != 2 or B.ndim != 2 or y.ndim != 1 or not (len(A) == len(B) == len(y)):
            raise ValueError(f"A, B and y must be (n_rows, d_u), (n_rows, d_v) and (n_rows,) with the same number "
                             f"of rows; got shapes {A.shape}, {B.shape} and {y.shape}.")
        if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 1):
            raise ValueError(f"counts must be a 1-D array of positive integers, got {counts!r}.")
        if counts.sum() != len(A):
            raise ValueError(f"counts sum to {counts.sum()} rows but A has {len(A)} rows.")
        if ridge_u < 0 or ridge_v < 0:
            raise ValueError(f"ridge_u and ridge_v must be non-negative, got {ridge_u!r} and {ridge_v!r}.")
        self.A, self.B, self.y = A, B, y
        self.counts = counts.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.client_of_row = np.repeat(np.arange(len(counts)), counts)
        self.alpha = self.counts / self.counts.sum()
        self.noise_u = self._centred(noise_u, A.shape[1])
        self.noise_v = self._centred(noise_v, B.shape[1])
        self.ridge_u = float(ridge_u)
        self.ridge_v = float(ridge_v)

    # ------------------------------------------------------------------ shapes
    @property
    def n_clients(self) -> int:
        return len(self.counts)

    @property
    def dim_shared(self) -> int:
        return self.A.shape[1]

    @property
    def dim_personal(self) -> int:
        return self.B.shape[1]

    def _centred(self, noise, dim):
        if noise is None:
            return np.zeros((len(self.A), dim))
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (len(self.A), dim):
            raise ValueError(f"noise must have shape {(len(self.A), dim)}, got {noise.shape}.")
        return noise - self._client_mean(noise)[self.client_of_row]

    def _client_sum(self, rows: np.ndarray) -> np.ndarray:
        """Sum of per-row values over each client's rows: ``[n_rows, ...] -> [n_clients, ...]``."""
        return np.add.reduceat(rows, self.offsets, axis=0)

    def _client_mean(self, rows: np.ndarray) -> np.ndarray:
        return self._client_sum(rows) / self.counts.reshape(-1, *([1] * (rows.ndim - 1)))

    def check_point(self, u, V) -> Tuple[np.ndarray, np.ndarray]:
        """``(u, V)`` as float64 arrays, refused unless shaped ``(d_u,)`` and ``(n_clients, d_v)``."""
        u = np.asarray(u, dtype=np.float64)
        V = np.asarray(V, dtype=np.float64)
        if u.shape != (self.dim_shared,) or V.shape != (self.n_clients, self.dim_personal):
            raise ValueError(f"expected u of shape {(self.dim_shared,)} and V of shape "
                             f"{(self.n_clients, self.dim_personal)}, got {u.shape} and {V.shape}.")
        return u, V

    def _margins(self, U, V):
        """``a_j.u_c + b_j.v_c`` for every row, ``U`` either one ``u`` or one per client."""
        U = np.broadcast_to(U, (self.n_clients, self.dim_shared))
        c = self.client_of_row
        return np.einsum("rd,rd->r", self.A, U[c]) + np.einsum("rd,rd->r", self.B, V[c])

    # ------------------------------------------------------------- row losses
    def _loss(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _dloss(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _d2loss(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _torch_loss(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    # -------------------------------------------------------- exact quantities
    def client_objectives(self, u, V) -> np.ndarray:
        """``F_i(u, v_i)`` for every client, shape ``(n_clients,)``."""
        u, V = self.check_point(u, V)
        c = self.client_of_row
        rows = (self._loss(self._margins(u, V), self.y) + self.noise_u @ u
                + np.einsum("rd,rd->r", self.noise_v, V[c]))
        return (self._client_mean(rows) + 0.5 * self.ridge_u * u @ u
                + 0.5 * self.ridge_v * np.einsum("cd,cd->c", V, V))

    def objective(self, u, V) -> float:
        """``F(u, V) = sum_i alpha_i F_i(u, v_i)``.

        Examples
        --------
        >>> from pfedest.theory.generators import make_least_squares
        >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
        >>> u, V, F_star = p.optimum
        >>> bool(abs(p.objective(u, V) - F_star) < 1e-12)
        True
        """
        return float(self.alpha @ self.client_objectives(u, V))

    def row_gradients(self, u, V, *, per_client_shared=None) -> Tuple[np.ndarray, np.ndarray]:
        """Gradients of every row's loss (without the ridge) in ``u`` and in its client's ``v``.

        Parameters
        ----------
        u : ndarray of shape (d_u,)
        V : ndarray of shape (n_clients, d_v)
        per_client_shared : ndarray of shape (n_clients, d_u), optional
            Evaluate client ``i``'s rows at its own ``u_i`` instead of ``u`` (local steps).

        Returns
        -------
        grad_u : ndarray of shape (n_rows, d_u)
        grad_v : ndarray of shape (n_rows, d_v)
        """
        U = u if per_client_shared is None else per_client_shared
        s = self._dloss(self._margins(U, V), self.y)[:, None]
        return s * self.A + self.noise_u, s * self.B + self.noise_v

    def client_gradients(self, u, V, *, per_client_shared=None) -> Tuple[np.ndarray, np.ndarray]:
        """``grad_u F_i`` and ``grad_v F_i`` of every client: shapes ``(n, d_u)`` and ``(n, d_v)``."""
        if per_client_shared is None:
            u, V = self.check_point(u, V)
        U = np.broadcast_to(u if per_client_shared is None else per_client_shared, (self.n_clients, self.dim_shared))
        g_u, g_v = self.row_gradients(u, V, per_client_shared=U)
        return (self._client_mean(g_u) + self.ridge_u * U,
                self._client_mean(g_v) + self.ridge_v * np.asarray(V, dtype=np.float64))

    def gradients(self, u, V) -> Tuple[np.ndarray, np.ndarray]:
        """``grad_u F`` (shape ``(d_u,)``) and each client's ``grad_v F_i`` (shape ``(n, d_v)``).

        The personal gradients are the clients' own, ``grad_v F_i``, not ``grad_{v_i} F =
        alpha_i grad_v F_i``: the theory measures them per client.
        """
        g_u, g_v = self.client_gradients(u, V)
        return self.alpha @ g_u, g_v

    def stationarity(self, u, V, participation: float = 1.0) -> float:
        """The measure the theorems bound, at one point.

        ``(1/L_u) ||grad_u F||^2 + (m/n) (1/L_v) sum_i alpha_i ||grad_v F_i||^2`` with ``m/n =
        participation``: a personal vector moves only in the rounds its client is sampled.
        """
        shared, personal = self.stationarity_terms(u, V)
        return shared + participation * personal

    def stationarity_terms(self, u, V) -> Tuple[float, float]:
        """The two parts of :meth:`stationarity`, the personal one not yet weighted by the participation.

        Returns
        -------
        shared : float
            ``(1/L_u) ||grad_u F||^2``.
        personal : float
            ``(1/L_v) sum_i alpha_i ||grad_v F_i||^2``.

        Examples
        --------
        >>> from pfedest.theory.generators import make_least_squares
        >>> p = make_least_squares(n_clients=3, n_samples_per_client=10, random_state=0)
        >>> shared, personal = p.stationarity_terms(np.zeros(5), np.zeros((3, 3)))
        >>> bool(np.isclose(shared + 0.5 * personal, p.stationarity(np.zeros(5), np.zeros((3, 3)), 0.5)))
        True
        """
        g_u, g_v = self.gradients(u, V)
        k = self.constants
        return float(g_u @ g_u / k.L_u), float(self.alpha @ np.sum(g_v ** 2, axis=1) / k.L_v)

    def gradient_variance(self, u, V, batch_size: int, *, per_client_shared=None) -> Tuple[np.ndarray, np.ndarray]:
        """Variance of one client's minibatch gradient, per client, for ``u`` and for ``v``.

        A minibatch is ``b = min(batch_size, m_i)`` distinct rows drawn uniformly (as
        :func:`pfedest.core.sampling.minibatch_stream` draws them), so the variance of its mean gradient
        is ``(m_i - b) / (b (m_i - 1))`` times the variance of the row gradients: zero for full batches.

        Returns
        -------
        var_u, var_v : ndarray of shape (n_clients,)
            ``E ||g - grad F_i||^2`` for the shared and the personal block.
        """
        g_u, g_v = self.row_gradients(u, V, per_client_shared=per_client_shared)
        b = np.minimum(int(batch_size), self.counts)
        factor = np.where(self.counts > 1, (self.counts - b) / (b * np.maximum(self.counts - 1, 1)), 0.0)
        out = []
        for g in (g_u, g_v):
            mean = self._client_mean(g)
            spread = self._client_mean(np.sum((g - mean[self.client_of_row]) ** 2, axis=1))
            out.append(factor * spread)
        return out[0], out[1]

    def update_noise(self, u, V, batch_size: Optional[int] = None,
                     clients_per_round: Optional[int] = None) -> Tuple[float, float]:
        """The noise of a round's updates from ``(u, V)``: ``N_u`` and ``N_v`` of the descent bound.

        ``N_u = E ||g_u - grad_u F||^2`` for the server's average ``g_u`` of the sampled clients'
        first shared minibatch gradients: ``sum_i alpha_i^2 Var(g_u,i)`` with all clients; with
        ``m`` of ``n`` clients drawn uniformly without replacement (equal weights ``alpha_i = 1/n``)
        ``(n - m) / (m (n - 1)) delta^2 + (1/(m n)) sum_i Var(g_u,i)``, ``delta^2`` the
        :meth:`heterogeneity`. ``N_v = (m/n) sum_i alpha_i Var(g_v,i)``: the personal minibatch
        noise of the clients that move.

        Parameters
        ----------
        u : ndarray of shape (d_u,)
        V : ndarray of shape (n_clients, d_v)
        batch_size : int, default=None
            Rows per minibatch (:meth:`gradient_variance`); ``None``: full gradients.
        clients_per_round : int, default=None
            ``m``; ``None`` is all clients.

        Returns
        -------
        noise_shared, noise_personal : float

        Examples
        --------
        >>> from pfedest.theory.generators import make_least_squares
        >>> p = make_least_squares(n_clients=4, n_samples_per_client=10, random_state=0)
        >>> u, V, _ = p.optimum
        >>> p.update_noise(u, V)  # full gradients, all clients: no noise
        (0.0, 0.0)
        >>> N_u, N_v = p.update_noise(u, V, clients_per_round=2)
        >>> bool(np.isclose(N_u, (4 - 2) / (2 * 3) * p.heterogeneity(u, V))), N_v
        (True, 0.0)
        """
        n = self.n_clients
        m = n if clients_per_round is None else int(clients_per_round)
        if batch_size is None or batch_size >= self.counts.max():
            var_u = var_v = np.zeros(n)
        else:
            var_u, var_v = self.gradient_variance(u, V, batch_size)
        if m == n:
            noise_shared = float(self.alpha ** 2 @ var_u)
        else:
            noise_shared = (n - m) / (m * (n - 1)) * self.heterogeneity(u, V) + float(var_u.sum()) / (m * n)
        return noise_shared, (m / n) * float(self.alpha @ var_v)

    def heterogeneity(self, u, V) -> float:
        """Gradient diversity of the shared block: ``sum_i alpha_i ||grad_u F_i - grad_u F||^2``."""
        g_u, _ = self.client_gradients(u, V)
        mean = self.alpha @ g_u
        return float(self.alpha @ np.sum((g_u - mean) ** 2, axis=1))

    def client_hessians(self, u, V) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blocks of each ``F_i``'s Hessian in ``(u, v_i)``: ``H_uu [n,du,du], H_uv [n,du,dv], H_vv [n,dv,dv]``."""
        u, V = self.check_point(u, V)
        w = self._d2loss(self._margins(u, V), self.y)
        return self._weighted_blocks(w)

    def _weighted_blocks(self, w):
        A, B = self.A, self.B
        m = self.counts[:, None, None]
        H_uu = self._client_sum(np.einsum("r,ri,rj->rij", w, A, A)) / m + self.ridge_u * np.eye(self.dim_shared)
        H_uv = self._client_sum(np.einsum("r,ri,rj->rij", w, A, B)) / m
        H_vv = self._client_sum(np.einsum("r,ri,rj->rij", w, B, B)) / m + self.ridge_v * np.eye(self.dim_personal)
        return H_uu, H_uv, H_vv

    # ------------------------------------------------------------- constants
    @cached_property
    def constants(self) -> Constants:
        """:class:`Constants` computed from the data (see the class docstring for exactness)."""
        w = np.full(len(self.A), self._curvature)
        H_uu, H_uv, H_vv = self._weighted_blocks(w)
        L_u = float(lambda_max(H_uu).max())
        L_v = float(lambda_max(H_vv).max())
        L_uv = float(self._cross_bound(H_uv).max())
        mu = self._strong_convexity(H_uu, H_uv, H_vv)
        return Constants(L_u=L_u, L_v=L_v, L_uv=L_uv, chi=float(L_uv / np.sqrt(L_u * L_v)), mu=float(mu))

    def constants_at(self, u, V) -> Constants:
        """The smoothness constants of the Hessian at one point: values attained there.

        ``L_u``, ``L_v`` and ``L_uv`` of the returned :class:`Constants` are the largest block
        norms of the clients' Hessians at ``(u, V)`` (``chi`` from them; ``mu`` the smallest joint
        eigenvalue there), so ``constants_at(x).L_b <= constants.L_b`` at every ``x``. For least
        squares the Hessian is constant: equal everywhere. For logistic regression ``l''`` is
        largest (1/4) at margin 0, so at the origin ``L_u`` and ``L_v`` are attained; ``L_uv`` there
        is a lower bound on the cross term, which :attr:`constants` bounds from above
        (``docs/theory.md`` reports the gap).

        Examples
        --------
        >>> from pfedest.theory.generators import make_logistic
        >>> p = make_logistic(n_clients=3, n_samples_per_client=10, random_state=0)
        >>> here = p.constants_at(np.zeros(5), np.zeros((3, 3)))
        >>> bool(np.isclose(here.L_u, p.constants.L_u)), bool(here.L_uv <= p.constants.L_uv)
        (True, True)
        """
        H_uu, H_uv, H_vv = self.client_hessians(u, V)
        L_u, L_v = float(lambda_max(H_uu).max()), float(lambda_max(H_vv).max())
        L_uv = float(spectral_norm(H_uv).max())
        joint = np.block([[H_uu, H_uv], [np.swapaxes(H_uv, 1, 2), H_vv]])
        return Constants(L_u=L_u, L_v=L_v, L_uv=L_uv, chi=float(L_uv / np.sqrt(L_u * L_v)),
                         mu=float(np.linalg.eigvalsh(joint)[:, 0].min()))

    def _cross_bound(self, H_uv):
        return spectral_norm(H_uv)

    def _strong_convexity(self, H_uu, H_uv, H_vv):
        joint = np.block([[H_uu, H_uv], [np.swapaxes(H_uv, 1, 2), H_vv]])
        return float(np.linalg.eigvalsh(joint)[:, 0].min())

    # --------------------------------------------------------------- optimum
    def _newton(self, u, V):
        """One Newton step on ``F`` jointly in ``(u, V)``, eliminating each ``v_i`` (Schur complement)."""
        g_u, g_v = self.client_gradients(u, V)
        H_uu, H_uv, H_vv = self.client_hessians(u, V)
        a = self.alpha
        # F's Hessian: H_uu = sum a_i H_uu_i, off-diagonal a_i H_uv_i, diagonal a_i H_vv_i; the
        # factors a_i cancel in the elimination of each v_i.
        Hvv_inv_Hvu = np.linalg.solve(H_vv, np.swapaxes(H_uv, 1, 2))
        Hvv_inv_gv = np.linalg.solve(H_vv, g_v[..., None])[..., 0]
        S = np.einsum("c,cij->ij", a, H_uu - H_uv @ Hvv_inv_Hvu)
        r = a @ g_u - np.einsum("c,cij,cj->i", a, H_uv, Hvv_inv_gv)
        du = np.linalg.solve(S, r)
        dV = Hvv_inv_gv - np.einsum("cij,j->ci", Hvv_inv_Hvu, du)
        return u - du, V - dV

    def _solve(self):
        u = np.zeros(self.dim_shared)
        V = np.zeros((self.n_clients, self.dim_personal))
        for _ in range(3):  # exact for a quadratic after one step; two more refine rounding
            u, V = self._newton(u, V)
        return u, V

    @cached_property
    def optimum(self) -> Tuple[np.ndarray, np.ndarray, float]:
        """``(u*, V*, F*)``: the minimizer and the minimum of ``F``."""
        u, V = self._solve()
        return u, V, self.objective(u, V)

    def summary(self, batch_size: Optional[int] = None) -> dict:
        """The constants, with ``delta^2`` and (for ``batch_size``) ``sigma_u^2, sigma_v^2`` at the optimum.

        ``sigma^2`` is ``sum_i alpha_i Var_i``, the client-averaged minibatch variance.
        """
        u, V, F_star = self.optimum
        k = self.constants
        out = {"n_clients": self.n_clients, "d_u": self.dim_shared, "d_v": self.dim_personal,
               "L_u": k.L_u, "L_v": k.L_v, "L_uv": k.L_uv, "chi": k.chi, "mu": k.mu, "F_star": F_star,
               "delta2_at_optimum": self.heterogeneity(u, V)}
        if batch_size is not None:
            var_u, var_v = self.gradient_variance(u, V, batch_size)
            out["sigma2_u_at_optimum"] = float(self.alpha @ var_u)
            out["sigma2_v_at_optimum"] = float(self.alpha @ var_v)
        return out

    # ----------------------------------------------------------- torch side
    def torch_loss(self, dtype: torch.dtype = torch.float64, device="cpu"):
        """``loss(shared, personal, idx, mask) -> (mean, (sum, count))`` for :mod:`pfedest.core.engine`.

        ``shared = {"u": [d_u]}``, ``personal = {"v": [d_v]}`` (one client's), ``idx`` global row
        indices of one client. The mean includes the ridge terms, which a fully masked (padding)
        step leaves out so that it stays a no-op; ``sum`` is the data loss only, for reporting.
        """
        A = torch.as_tensor(self.A, dtype=dtype, device=device)
        B = torch.as_tensor(self.B, dtype=dtype, device=device)
        y = torch.as_tensor(self.y, dtype=dtype, device=device)
        Xu = torch.as_tensor(self.noise_u, dtype=dtype, device=device)
        Xv = torch.as_tensor(self.noise_v, dtype=dtype, device=device)
        ridge_u, ridge_v = self.ridge_u, self.ridge_v
        row_loss = self._torch_loss

        def loss(shared, personal, idx, mask):
            u, v = shared["u"], personal["v"]
            data = row_loss(A[idx] @ u + B[idx] @ v, y[idx])
            rows = data + Xu[idx] @ u + Xv[idx] @ v
            count = mask.sum()
            real = count.clamp(max=1.0)  # 0 for a padding step: no ridge gradient either
            mean = ((rows * mask).sum() / count.clamp_min(1.0)
                    + real * (0.5 * ridge_u * (u * u).sum() + 0.5 * ridge_v * (v * v).sum()))
            return mean, ((data * mask).sum().detach(), count)

        return loss


class PersonalizedLeastSquares(PersonalizedProblem):
    """``F_i(u, v_i) = 1/(2 m_i) ||A_i u + B_i v_i - y_i||^2`` (+ noise terms and ridges).

    All constants are exact; the optimum solves the joint normal equations (each ``v_i``
    eliminated by its Schur complement). Build one with :func:`pfedest.theory.generators.make_least_squares`.

    Parameters
    ----------
    A, B, counts, noise_u, noise_v, ridge_u, ridge_v
        As in :class:`PersonalizedProblem`.
    y : ndarray of shape (n_rows,)
        Real targets.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A, B, y = rng.standard_normal((6, 2)), rng.standard_normal((6, 1)), rng.standard_normal(6)
    >>> p = PersonalizedLeastSquares(A, B, y, counts=[3, 3])
    >>> u, V, F_star = p.optimum
    >>> g_u, g_v = p.gradients(u, V)
    >>> bool(np.abs(g_u).max() < 1e-12 and np.abs(g_v).max() < 1e-12)
    True
    """

    _curvature = 1.0

    def _loss(self, z, y):
        return 0.5 * (z - y) ** 2

    def _dloss(self, z, y):
        return z - y

    def _d2loss(self, z, y):
        return np.ones_like(z)

    def _torch_loss(self, z, y):
        return 0.5 * (z - y) ** 2


class PersonalizedLogistic(PersonalizedProblem):
    """``F_i(u, v_i) = (1/m_i) sum_j log(1 + exp(-y_j (a_j.u + b_j.v_i)))`` (+ noise terms, ridges), ``y = +-1``.

    Smoothness uses ``l'' <= 1/4``; the cross term is bounded by ``max_i ||A_i|| ||B_i|| / (4 m_i)``,
    so ``chi`` is an upper bound (often near 1). :attr:`chi_at_optimum` is the local coupling. The
    optimum comes from L-BFGS (scipy) polished by Newton steps to a gradient norm near 1e-15.
    Build one with :func:`pfedest.theory.generators.make_logistic`.

    Parameters
    ----------
    A, B, counts, noise_u, noise_v
        As in :class:`PersonalizedProblem`.
    y : ndarray of shape (n_rows,)
        Labels ``+1`` or ``-1``.
    ridge_u, ridge_v : float, default=0.0
        As in :class:`PersonalizedProblem`; give them positive values when the data may be
        separable, or the optimum may be at infinity.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((6, 2)), rng.standard_normal((6, 1))
    >>> y = np.array([1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    >>> p = PersonalizedLogistic(A, B, y, counts=[3, 3], ridge_u=0.1, ridge_v=0.1)
    >>> p.constants.mu
    0.1
    >>> u, V, F_star = p.optimum
    >>> g_u, g_v = p.gradients(u, V)
    >>> bool(max(np.abs(g_u).max(), np.abs(g_v).max()) < 1e-12)
    True
    """

    _curvature = 0.25

    def _loss(self, z, y):
        return np.logaddexp(0.0, -y * z)

    def _dloss(self, z, y):
        return -y * _sigmoid(-y * z)

    def _d2loss(self, z, y):
        s = _sigmoid(z)
        return s * (1.0 - s)

    def _torch_loss(self, z, y):
        return torch.nn.functional.softplus(-y * z)

    def _cross_bound(self, H_uv):
        # sup over 0 <= l'' <= 1/4 of ||A^T D B|| / m is at most ||A|| ||B|| / (4 m).
        norms_a = np.sqrt(lambda_max(self._client_sum(np.einsum("ri,rj->rij", self.A, self.A))))
        norms_b = np.sqrt(lambda_max(self._client_sum(np.einsum("ri,rj->rij", self.B, self.B))))
        return self._curvature * norms_a * norms_b / self.counts

    def _strong_convexity(self, H_uu, H_uv, H_vv):
        return min(self.ridge_u, self.ridge_v)

    @cached_property
    def chi_at_optimum(self) -> float:
        """Coupling of the Hessian at the optimum: ``max_i ||H_uv_i|| / sqrt(max_i L_u,i * max_i L_v,i)``."""
        u, V, _ = self.optimum
        H_uu, H_uv, H_vv = self.client_hessians(u, V)
        return float(spectral_norm(H_uv).max() / np.sqrt(lambda_max(H_uu).max() * lambda_max(H_vv).max()))

    def _solve(self):
        from scipy.optimize import minimize

        d_u, n, d_v = self.dim_shared, self.n_clients, self.dim_personal

        def unpack(x):
            return x[:d_u], x[d_u:].reshape(n, d_v)

        def fun(x):
            u, V = unpack(x)
            g_u, g_v = self.gradients(u, V)
            return self.objective(u, V), np.concatenate([g_u, (self.alpha[:, None] * g_v).ravel()])

        res = minimize(fun, np.zeros(d_u + n * d_v), jac=True, method="L-BFGS-B",
                       options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10})
        u, V = unpack(res.x)
        for _ in range(4):  # Newton converges quadratically from L-BFGS's point
            u, V = self._newton(u, V)
        return u, V


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))
