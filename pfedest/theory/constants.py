"""The constants the convergence theory is written in, and the matrix norms that compute them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Constants", "lambda_max", "spectral_norm"]


@dataclass(frozen=True)
class Constants:
    """The constants of a problem that the convergence theory is written in.

    Usually read from :attr:`PersonalizedProblem.constants` rather than built by hand.

    Parameters
    ----------
    L_u : float
        Smoothness of every ``F_i`` in ``u``: ``max_i sup lambda_max(d^2 F_i / du^2)``.
    L_v : float
        Smoothness of every ``F_i`` in ``v_i``.
    L_uv : float
        Cross-Lipschitz constant ``max_i sup ||d^2 F_i / du dv||_2`` (``L_vu`` is the same number:
        the Hessian is symmetric). Exact for least squares, an upper bound for logistic regression.
    chi : float
        Coupling ``L_uv / sqrt(L_u L_v)``; 0 when every ``F_i`` is a sum ``f_i(u) + g_i(v_i)``;
        at most 1 for convex problems.
    mu : float
        Strong convexity of every ``F_i`` jointly in ``(u, v_i)`` (a lower bound for logistic
        regression: its ridge).

    Examples
    --------
    >>> k = Constants(L_u=4.0, L_v=1.0, L_uv=1.0, chi=0.5, mu=0.1)
    >>> k.L_vu
    1.0
    >>> from pfedest.theory.generators import make_least_squares
    >>> p = make_least_squares(n_clients=2, n_samples_per_client=10, random_state=0)
    >>> bool(0.0 <= p.constants.chi <= 1.0 and p.constants.mu > 0)
    True
    """

    L_u: float
    L_v: float
    L_uv: float
    chi: float
    mu: float

    @property
    def L_vu(self) -> float:
        return self.L_uv


def lambda_max(M: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of each symmetric matrix of a stack ``[..., d, d]``."""
    return np.linalg.eigvalsh(M)[..., -1]


def spectral_norm(M: np.ndarray) -> np.ndarray:
    """Largest singular value of each matrix of a stack ``[..., p, q]`` (zero for empty matrices)."""
    return np.linalg.norm(M, ord=2, axis=(-2, -1)) if M.size else np.zeros(M.shape[:-2])
