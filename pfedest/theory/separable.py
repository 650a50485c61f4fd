"""A convex personalized problem without a minimizer, where the stationarity measure decays sublinearly.

Built by :func:`pfedest.theory.generators.make_separable_logistic`.

On the least-squares and ridge-logistic problems of :mod:`pfedest.theory.generators` every run
with a fixed step converges linearly, so the average of the measure over ``T`` rounds is
``S / T`` for any algorithm that converges at all: its slope -1 tests nothing. Here each client's
rows are separated by one shared ``u`` and its own ``v_i``, there is no ridge, and so

- ``F`` is convex and smooth (the constants of :class:`~pfedest.theory.problems.PersonalizedLogistic`
  hold), but not strongly convex: ``inf F = 0`` is approached along a direction and never attained;
- FedAlt and FedSim with full gradients drive ``F`` to 0 like ``1/T`` and the measure to 0 like a
  power of ``T``, not geometrically (``docs/theory.md`` has the measured exponents).

The descent bound of :mod:`pfedest.theory.rates` then holds with ``F* = 0`` exactly, and the
sandwich of :func:`pfedest.theory.rates.round_bounds` (``F_t - F_{t+1}`` bounds the measure from
both sides) applies as on any convex problem.
"""

from __future__ import annotations

from functools import cached_property
from typing import Tuple

import numpy as np

from .problems import PersonalizedLogistic

__all__ = ["SeparableLogistic"]


class SeparableLogistic(PersonalizedLogistic):
    """Logistic regression, no ridge, on rows that a shared ``u`` and per-client ``v_i`` separate.

    Parameters
    ----------
    A, B, counts, noise_u, noise_v
        As in :class:`~pfedest.theory.problems.PersonalizedProblem`.
    y : ndarray of shape (n_rows,)
        Labels ``+1`` or ``-1``.
    separator : (ndarray, ndarray)
        A point ``(u, V)`` with every margin ``y_j (a_j.u + b_j.v_i)`` positive: the proof that
        ``inf F = 0``. Checked.

    Attributes
    ----------
    optimum : (ndarray, ndarray, float)
        ``(nan, nan, 0.0)``: there is no minimizer, the infimum is 0.

    Examples
    --------
    >>> from pfedest.theory.generators import make_separable_logistic
    >>> p = make_separable_logistic(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> u, V, F_star = p.optimum
    >>> F_star, bool(np.isnan(u).all())
    (0.0, True)
    >>> u, V = p.separator
    >>> [round(p.objective(k * u, k * V), 4) for k in (0, 1, 10, 100)]  # falls towards 0, never reaches it
    [0.6931, 0.2075, 0.0508, 0.0007]
    """

    def __init__(self, A, B, y, counts, separator: Tuple[np.ndarray, np.ndarray], noise_u=None, noise_v=None):
        super().__init__(A, B, y, counts, noise_u, noise_v, ridge_u=0.0, ridge_v=0.0)
        u, V = self.check_point(*separator)
        margins = self.y * self._margins(u, V)
        if not np.all(margins > 0):
            raise ValueError(f"separator does not separate the rows: smallest margin {margins.min():.3g}.")
        self.separator = (u, V)

    @cached_property
    def optimum(self) -> Tuple[np.ndarray, np.ndarray, float]:
        """``(nan, nan, 0.0)``: no minimizer; ``F`` tends to its infimum 0 along the separating directions."""
        return np.full(self.dim_shared, np.nan), np.full((self.n_clients, self.dim_personal), np.nan), 0.0

