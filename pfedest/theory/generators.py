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

:func:`make_coupled_least_squares` isolates the coupling: every client's Hessian is one matrix
fixed by ``L_u``, ``L_v``, ``mu`` and ``chi``, so across a family that changes only ``chi`` the
smoothness, the strong convexity, the optimum's objective and the gradient noise at the optimum
stay exactly the same. :func:`make_separable_logistic` draws a convex problem without a minimizer
(:class:`~pfedest.theory.separable.SeparableLogistic`), where the measure decays sublinearly.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .problems import PersonalizedLeastSquares, PersonalizedLogistic
from .separable import SeparableLogistic

__all__ = ["make_least_squares", "make_logistic", "make_coupled_least_squares", "make_separable_logistic"]


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


def _spectrum(top: float, bottom: float, dim: int) -> np.ndarray:
    """``dim`` eigenvalues from ``top`` down to ``bottom``, evenly spaced (``[top]`` when ``dim == 1``)."""
    return np.linspace(top, bottom, dim) if dim > 1 else np.array([top])


def make_coupled_least_squares(n_clients: int = 8, n_samples_per_client: int = 40, dim_shared: int = 5,
                               dim_personal: int = 3, *, chi: float = 0.5, L_u: float = 1.0, L_v: float = 1.0,
                               mu: float = 0.25, shared_noise: float = 0.0, personal_noise: float = 0.0,
                               label_noise: float = 0.0, random_state=None) -> PersonalizedLeastSquares:
    """Least squares whose coupling is ``chi`` while ``L_u``, ``L_v``, ``mu`` and the noise stay fixed.

    Every client's features are ``[A_i, B_i] = sqrt(m) Q_i G^(1/2)``, ``Q_i`` with orthonormal
    columns, so that every client's Hessian is the same matrix

        G = [[S_u, C], [C^T, S_v]],   C = chi sqrt(L_u L_v) e_1 f_1^T,

    ``S_u`` and ``S_v`` diagonal with eigenvalues evenly spaced from ``L_u`` (``L_v``) down to
    ``mu``. The coupling joins only the top directions of the two blocks, so ``L_u``, ``L_v`` and
    the joint strong convexity ``mu`` do not depend on ``chi`` (as long as ``chi <=
    sqrt((L_u - mu) (L_v - mu) / (L_u L_v))``, where the coupled pair's smaller eigenvalue
    reaches ``mu``). Every client shares the true ``u``; with ``label_noise=0`` the targets are
    fitted exactly, so the minibatch gradient noise at the optimum is that of the noise tables
    alone. The same ``random_state`` draws the same ``Q_i``, true models and noise tables for
    every ``chi``: a family ``chi -> problem`` in which only the coupling moves.

    Parameters
    ----------
    n_clients, n_samples_per_client, dim_shared, dim_personal : int
        ``n``, ``m_i``, ``d_u``, ``d_v``; ``n_samples_per_client >= dim_shared + dim_personal``
        and ``dim_shared + dim_personal >= 3`` (one direction outside the coupled pair holds ``mu``).
    chi : float, default=0.5
        The coupling ``L_uv / sqrt(L_u L_v)``, exactly.
    L_u, L_v : float, default=1.0
        Smoothness in ``u`` and in ``v``, exactly.
    mu : float, default=0.25
        Strong convexity of every ``F_i``, exactly; ``0 < mu <= min(L_u, L_v)``.
    shared_noise, personal_noise : float, default=0.0
        Scale of the per-row noise vectors (see :func:`make_least_squares`).
    label_noise : float, default=0.0
        Noise added to the targets, orthogonal to every client's features (the optimum, ``F*``
        and the residuals are then the same for every ``chi``; the residuals add gradient noise
        whose size depends on the features, so on ``chi``).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    PersonalizedLeastSquares

    Examples
    --------
    >>> family = [make_coupled_least_squares(4, 12, 2, 2, chi=c, random_state=0) for c in (0.0, 0.6)]
    >>> [round(p.constants.chi, 12) for p in family]
    [0.0, 0.6]
    >>> {(round(p.constants.L_u, 12), round(p.constants.L_v, 12), round(p.constants.mu, 12)) for p in family}
    {(1.0, 1.0, 0.25)}
    """
    _check_common(n_clients, n_samples_per_client, dim_shared, dim_personal, 0.0, chi=chi, mu=mu,
                  shared_noise=shared_noise, personal_noise=personal_noise, label_noise=label_noise)
    d_u, d_v, m = dim_shared, dim_personal, n_samples_per_client
    if d_u + d_v < 3 or m < d_u + d_v:
        raise ValueError(f"need dim_shared + dim_personal >= 3 and n_samples_per_client >= dim_shared + "
                         f"dim_personal, got {d_u}, {d_v} and {m}.")
    if not 0 < mu <= min(L_u, L_v):
        raise ValueError(f"need 0 < mu <= min(L_u, L_v), got mu={mu!r}, L_u={L_u!r}, L_v={L_v!r}.")
    chi_max = float(np.sqrt((L_u - mu) * (L_v - mu) / (L_u * L_v)))
    if chi > chi_max + 1e-12:
        raise ValueError(f"chi={chi!r} would push the joint strong convexity below mu={mu!r}: the largest chi "
                         f"with L_u={L_u!r}, L_v={L_v!r} and this mu is {chi_max:.6g}.")
    G = np.zeros((d_u + d_v, d_u + d_v))
    G[:d_u, :d_u] = np.diag(_spectrum(L_u, mu, d_u))
    G[d_u:, d_u:] = np.diag(_spectrum(L_v, mu, d_v))
    G[0, d_u] = G[d_u, 0] = chi * np.sqrt(L_u * L_v)
    w, P = np.linalg.eigh(G)
    root = (P * np.sqrt(np.clip(w, 0.0, None))) @ P.T
    rng = check_random_state(random_state)
    u_true = rng.standard_normal(d_u)
    X, y = [], []
    for _ in range(n_clients):
        Q, _ = np.linalg.qr(rng.standard_normal((m, d_u + d_v)))
        X_i = np.sqrt(m) * Q @ root
        theta = np.concatenate([u_true, rng.standard_normal(d_v)])
        noise = rng.standard_normal(m)
        noise -= Q @ (Q.T @ noise)  # orthogonal to the client's features: never fitted
        X.append(X_i)
        y.append(X_i @ theta + label_noise * noise)
    X = np.concatenate(X)
    return PersonalizedLeastSquares(X[:, :d_u], X[:, d_u:], np.concatenate(y), np.full(n_clients, m),
                                    *_noise_tables(rng, n_clients * m, d_u, d_v, shared_noise, personal_noise))


def make_separable_logistic(n_clients: int = 8, n_samples_per_client: int = 40, dim_shared: int = 5,
                            dim_personal: int = 3, *, coupling: float = 0.5, random_state=None) -> SeparableLogistic:
    """Separable personalized logistic regression: labels are the signs of a true model's margins.

    Features are drawn as in :func:`pfedest.theory.generators.make_least_squares`; all clients
    share the true ``u``, each has its own true ``v_i``, and ``y_j`` is the sign of the row's
    margin under its client's true model, so that model separates every client's rows.

    Parameters
    ----------
    n_clients, n_samples_per_client, dim_shared, dim_personal : int
        ``n``, ``m_i``, ``d_u``, ``d_v``.
    coupling : float in [0, 1), default=0.5
        As in :func:`pfedest.theory.generators.make_least_squares` (the logistic ``L_uv`` is a
        bound, see :class:`~pfedest.theory.problems.PersonalizedLogistic`).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    SeparableLogistic

    Examples
    --------
    >>> p = make_separable_logistic(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> u, V = p.separator
    >>> bool(np.all(p.y * (p.A @ u + np.einsum("rd,rd->r", p.B, V[p.client_of_row])) > 0)), p.constants.mu
    (True, 0.0)
    """
    _check_common(n_clients, n_samples_per_client, dim_shared, dim_personal, coupling)
    rng = check_random_state(random_state)
    n, m = n_clients, n_samples_per_client
    A, B = _features(rng, n, m, dim_shared, dim_personal, coupling)
    u = rng.standard_normal(dim_shared)
    V = rng.standard_normal((n, dim_personal))
    c = np.repeat(np.arange(n), m)
    z = A @ u + np.einsum("rd,rd->r", B, V[c])
    return SeparableLogistic(A, B, np.where(z > 0, 1.0, -1.0), np.full(n, m), separator=(u, V))
