"""Estimates with intervals over seeds, so that a measured rate can reject a prediction.

A slope fitted to one run per horizon has no error bar, and a tolerance chosen without one can
let a wrong prediction through (a fixed ``+-0.15`` around ``-1/2`` passes ``-0.6`` as well). Here
every fit is repeated on seeds drawn with replacement (a percentile bootstrap over independent
runs), and a prediction is *rejected* when it falls outside the interval.

- :func:`bootstrap_fit`: exponents of a power law ``y ~ c prod_k x_k^(e_k)`` fitted to the mean
  over seeds of ``y`` (optionally minus a noise-free control), with an interval for each;
- :func:`bootstrap_slope`: the one-variable case, a log-log slope;
- :class:`Estimate`: a value, its interval and the number of seeds; :meth:`Estimate.rejects`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["Estimate", "bootstrap_fit", "bootstrap_slope"]


@dataclass(frozen=True)
class Estimate:
    """A fitted number with a bootstrap interval over seeds.

    Parameters
    ----------
    value : float
        The fit to the mean over all seeds.
    low, high : float
        The percentile interval of the fits to resampled seeds.
    level : float
        Its coverage (0.95: the 2.5 % and 97.5 % quantiles).
    n_seeds : int
        Independent runs per setting.

    Examples
    --------
    >>> e = Estimate(value=-0.52, low=-0.55, high=-0.49, level=0.95, n_seeds=8)
    >>> e.rejects(-0.5), e.rejects(-0.6), e.rejects(-0.46), e.rejects(-0.46, allowance=0.05)
    (False, True, True, False)
    >>> str(e)
    '-0.520 [-0.550, -0.490]'
    """

    value: float
    low: float
    high: float
    level: float
    n_seeds: int

    def rejects(self, predicted: float, allowance: float = 0.0) -> bool:
        """Whether ``predicted`` lies outside the interval widened by ``allowance`` on each side.

        ``allowance`` is for an asymptotic prediction checked at finite horizons: the distance
        it may be off there, stated (and measured) separately from the statistical interval.
        """
        return not self.low - allowance <= predicted <= self.high + allowance

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _log_fit(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(design, np.log(y), rcond=None)[0][1:]


def bootstrap_fit(features, values, *, control=None, n_boot: int = 2000, level: float = 0.95,
                  random_state=0) -> list:
    """Exponents of ``mean_seeds(values) - control ~ c prod_k features_k^(e_k)``, each with a bootstrap interval.

    Parameters
    ----------
    features : array-like of shape (n_settings,) or (n_settings, n_features)
        Positive values of the variables at each setting (a horizon ``T``; a step ``eta`` and a
        noise ``sigma^2``).
    values : array-like of shape (n_seeds, n_settings)
        The measured quantity, one row per independent seed.
    control : array-like of shape (n_settings,), optional
        Subtracted from the mean over seeds before the fit: a noise-free run at the same
        settings, so that the fit is that of what the noise adds.
    n_boot : int, default=2000
        Resamples of the seeds.
    level : float, default=0.95
    random_state : int, RandomState instance or None, default=0

    Returns
    -------
    list of Estimate
        One per feature, in order.

    Raises
    ------
    ValueError
        When the fitted quantity is not positive at some setting for the full set of seeds.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> eta, s2 = np.meshgrid([0.1, 0.2, 0.4], [1.0, 4.0])
    >>> X = np.column_stack([eta.ravel(), s2.ravel()])
    >>> Y = X[:, 0] * X[:, 1] * np.exp(0.05 * rng.standard_normal((10, 6)))
    >>> e_eta, e_s2 = bootstrap_fit(X, Y)
    >>> e_eta.rejects(1.0), e_eta.rejects(1.3), e_s2.rejects(1.0)
    (False, True, False)
    """
    X = np.asarray(features, dtype=float)
    X = X[:, None] if X.ndim == 1 else X
    Y = np.asarray(values, dtype=float)
    if Y.ndim != 2 or Y.shape[1] != len(X) or len(X) < X.shape[1] + 1 or np.any(X <= 0):
        raise ValueError(f"need positive features of shape (n_settings, n_features) with more settings than "
                         f"features and values of shape (n_seeds, n_settings); got {X.shape} and {Y.shape}.")
    base = np.zeros(len(X)) if control is None else np.asarray(control, dtype=float)
    design = np.column_stack([np.ones(len(X)), np.log(X)])
    target = Y.mean(0) - base
    if np.any(target <= 0):
        raise ValueError(f"the mean over seeds{' minus the control' if control is not None else ''} must be "
                         f"positive at every setting, got {target}.")
    point = _log_fit(design, target)
    rng = check_random_state(random_state)
    samples = Y[rng.randint(len(Y), size=(n_boot, len(Y)))].mean(1) - base  # [n_boot, n_settings]
    valid = np.all(samples > 0, axis=1)
    if valid.sum() < 0.99 * n_boot:
        raise ValueError(f"{n_boot - valid.sum()} of {n_boot} resamples had a non-positive mean: the noise is "
                         "too large for a log-log fit; run more seeds.")
    draws = np.linalg.lstsq(design, np.log(samples[valid]).T, rcond=None)[0][1:].T  # [n_valid, n_features]
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return [Estimate(float(p), float(lo), float(hi), level, len(Y)) for p, lo, hi in zip(point, low, high)]


def bootstrap_slope(x: Sequence[float], values, *, control: Optional[Sequence[float]] = None, n_boot: int = 2000,
                    level: float = 0.95, random_state=0) -> Estimate:
    """Log-log slope of the mean over seeds against ``x``, with a bootstrap interval over seeds.

    :func:`bootstrap_fit` with one feature.

    Parameters
    ----------
    x : array-like of shape (n_settings,)
        Positive settings, e.g. horizons ``T``.
    values : array-like of shape (n_seeds, n_settings)
    control, n_boot, level, random_state
        As in :func:`bootstrap_fit`.

    Returns
    -------
    Estimate

    Examples
    --------
    >>> T = np.array([50, 100, 200, 400])
    >>> runs = T ** -0.5 * np.exp(0.02 * np.random.default_rng(0).standard_normal((8, 4)))
    >>> slope = bootstrap_slope(T, runs)
    >>> slope.rejects(-0.5), slope.rejects(-0.6)
    (False, True)
    """
    (estimate,) = bootstrap_fit(np.asarray(x, dtype=float), values, control=control, n_boot=n_boot, level=level,
                                random_state=random_state)
    return estimate
