"""Data generators for the problems of :mod:`pfedest.theory.problems`, with a knob for each quantity of the theory.

:func:`make_least_squares` and :func:`make_logistic` draw clients with Gaussian features for the
shared and the personal block, a true model per client, and optional per-row noise vectors; they
give every client the same number of rows, so ``alpha_i = 1/n`` (the weighting of the analysis)
and the engine's sample-count weighting agree. The knobs:

- ``coupling`` sets the coupling ``chi`` (exactly 0 at ``coupling=0``);
- ``heterogeneity`` sets the gradient diversity ``delta^2`` at the optimum;
- ``label_noise`` (least squares) or ``scale`` (logistic) set the residual at the optimum;
- ``shared_noise`` and ``personal_noise`` set the minibatch noise of each block alone;
- ``ridge`` sets ``ridge_u = ridge_v``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .problems import PersonalizedLeastSquares, PersonalizedLogistic

__all__ = ["make_least_squares", "make_logistic"]


def _check_common(n_clients, n_samples_per_client, dim_shared, dim_personal, coupling, **nonneg):
    for name, value in (("n_clients", n_clients), ("n_samples_per_client", n_samples_per_client),
                        ("dim_shared", dim_shared), ("dim_personal", dim_personal)):
        if not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in nonneg.items():
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}.")
    if not 0 <= coupling < 1:
        raise ValueError(f"coupling must be in [0, 1), got {coupling!r} (1 makes B a function of A: "
                         "no unique optimum).")


def _features(rng, n_clients, m, d_u, d_v, coupling):
    """Per client ``A_i`` and ``B_i = coupling A_i W + sqrt(1 - coupling^2) Z_i``, ``Z_i`` orthogonal to ``A_i``.

    Orthogonality makes ``A_i^T B_i = coupling A_i^T A_i W``: exactly zero cross term at ``coupling=0``.
    """
    W = rng.standard_normal((d_u, d_v)) / np.sqrt(d_u)
    As, Bs = [], []
    for _ in range(n_clients):
        A = rng.standard_normal((m, d_u))
        Z = rng.standard_normal((m, d_v))
        Z = Z - A @ np.linalg.lstsq(A, Z, rcond=None)[0]
        Z *= np.sqrt(m / max(m - d_u, 1))  # restore unit variance per column
        As.append(A)
        Bs.append(coupling * A @ W + np.sqrt(1.0 - coupling ** 2) * Z)
    return np.concatenate(As), np.concatenate(Bs)


def _clients(rng, n, m, d_u, d_v, coupling, heterogeneity, scale=1.0):
    """Features and each row's margin under its client's true model: ``(A, B, a_j.u_i + b_j.v_i)``.

    Client ``i``'s true shared vector is ``scale (u_true + heterogeneity e_i)`` and its personal
    vector ``scale v_i``, with ``u_true``, ``e_i`` and ``v_i`` standard normal.
    """
    A, B = _features(rng, n, m, d_u, d_v, coupling)
    u_true = rng.standard_normal(d_u)
    U = scale * (u_true + heterogeneity * rng.standard_normal((n, d_u)))
    V = scale * rng.standard_normal((n, d_v))
    c = np.repeat(np.arange(n), m)
    return A, B, np.einsum("rd,rd->r", A, U[c]) + np.einsum("rd,rd->r", B, V[c])


def _noise_tables(rng, n_rows, d_u, d_v, shared_noise, personal_noise):
    """The per-row noise vectors of the shared and the personal block (``None`` at scale 0)."""
    return tuple(scale * rng.standard_normal((n_rows, dim)) if scale > 0 else None
                 for dim, scale in ((d_u, shared_noise), (d_v, personal_noise)))


def make_least_squares(n_clients: int = 8, n_samples_per_client: int = 40, dim_shared: int = 5,
                       dim_personal: int = 3, *, coupling: float = 0.5, heterogeneity: float = 1.0,
                       label_noise: float = 0.5, shared_noise: float = 0.0, personal_noise: float = 0.0,
                       ridge: float = 0.0, random_state=None) -> PersonalizedLeastSquares:
    """A personalized least-squares problem with knobs for each quantity the theory uses.

    Client ``i`` has Gaussian features ``A_i`` and ``B_i`` (see ``coupling``), a true shared vector
    ``u_true + heterogeneity * e_i`` and personal vector ``v_i``, and targets
    ``A_i u_i + B_i v_i + label_noise * noise``. Every client has ``n_samples_per_client`` rows.

    Parameters
    ----------
    n_clients, n_samples_per_client, dim_shared, dim_personal : int
        ``n``, ``m_i``, ``d_u``, ``d_v``. Take ``n_samples_per_client > dim_shared + dim_personal``
        for a unique optimum without ridge.
    coupling : float in [0, 1), default=0.5
        Correlation of the personal features with the shared ones; 0 gives ``chi = 0`` exactly
        (``F_i = f_i(u) + g_i(v_i)``), larger values a larger ``chi`` (computed, see ``.constants``).
    heterogeneity : float, default=1.0
        Spread of the clients' true shared vectors: sets ``delta^2`` at the optimum (0 with
        ``label_noise=0`` gives ``delta^2 = 0``).
    label_noise : float, default=0.5
        Residual at the optimum: minibatch gradient noise that does not vanish there.
    shared_noise, personal_noise : float, default=0.0
        Scale of the per-row noise vectors: extra minibatch noise in ``grad_u`` and ``grad_v`` alone,
        with no change to ``F`` or its full gradients.
    ridge : float, default=0.0
        ``ridge_u = ridge_v``.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    PersonalizedLeastSquares

    Examples
    --------
    >>> p = make_least_squares(n_clients=4, n_samples_per_client=20, coupling=0.0, random_state=0)
    >>> p.constants.chi < 1e-12
    True
    >>> u, V, F_star = p.optimum
    >>> g_u, g_v = p.gradients(u, V)
    >>> bool(np.abs(g_u).max() < 1e-12 and np.abs(g_v).max() < 1e-12)
    True
    """
    _check_common(n_clients, n_samples_per_client, dim_shared, dim_personal, coupling, heterogeneity=heterogeneity,
                  label_noise=label_noise, shared_noise=shared_noise, personal_noise=personal_noise, ridge=ridge)
    rng = check_random_state(random_state)
    n, m = n_clients, n_samples_per_client
    A, B, z = _clients(rng, n, m, dim_shared, dim_personal, coupling, heterogeneity)
    y = z + label_noise * rng.standard_normal(n * m)
    return PersonalizedLeastSquares(A, B, y, np.full(n, m),
                                    *_noise_tables(rng, n * m, dim_shared, dim_personal, shared_noise, personal_noise),
                                    ridge, ridge)


def make_logistic(n_clients: int = 8, n_samples_per_client: int = 40, dim_shared: int = 5, dim_personal: int = 3,
                  *, coupling: float = 0.5, heterogeneity: float = 1.0, scale: float = 1.0, shared_noise: float = 0.0,
                  personal_noise: float = 0.0, ridge: float = 1e-2, random_state=None) -> PersonalizedLogistic:
    """A personalized logistic regression: labels ``+-1`` drawn from each client's own true model.

    Features are drawn as in :func:`make_least_squares`; client ``i``'s labels are ``+1`` with
    probability ``sigmoid(a_j.u_i + b_j.v_i)``.

    Parameters
    ----------
    n_clients, n_samples_per_client, dim_shared, dim_personal : int
        ``n``, ``m_i``, ``d_u``, ``d_v``.
    coupling : float in [0, 1), default=0.5
        Correlation of the personal features with the shared ones (see :func:`make_least_squares`).
    heterogeneity : float, default=1.0
        Spread of the clients' true shared vectors.
    scale : float, default=1.0
        Multiplies the true parameters (larger: cleaner labels, nearly separable data).
    shared_noise, personal_noise : float, default=0.0
        Scale of the per-row noise vectors (see :func:`make_least_squares`).
    ridge : float, default=1e-2
        ``ridge_u = ridge_v``; ``ridge > 0`` keeps the optimum finite and unique.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    PersonalizedLogistic

    Examples
    --------
    >>> p = make_logistic(n_clients=3, n_samples_per_client=20, random_state=0)
    >>> u, V, F_star = p.optimum
    >>> g_u, g_v = p.gradients(u, V)
    >>> bool(max(np.abs(g_u).max(), np.abs(g_v).max()) < 1e-12)
    True
    """
    _check_common(n_clients, n_samples_per_client, dim_shared, dim_personal, coupling, heterogeneity=heterogeneity,
                  scale=scale, shared_noise=shared_noise, personal_noise=personal_noise, ridge=ridge)
    rng = check_random_state(random_state)
    n, m = n_clients, n_samples_per_client
    A, B, z = _clients(rng, n, m, dim_shared, dim_personal, coupling, heterogeneity, scale)
    probability = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z), as the problem computes it
    y = np.where(rng.random_sample(n * m) < probability, 1.0, -1.0)
    return PersonalizedLogistic(A, B, y, np.full(n, m),
                                *_noise_tables(rng, n * m, dim_shared, dim_personal, shared_noise, personal_noise),
                                ridge, ridge)
