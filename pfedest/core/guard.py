"""The guard's decision: does a client's personal model beat the fallback on the client's own held-out rows?

Each client scores its held-out rows twice, under its personal model and under the fallback (a
model that is not personalized), with a per-row loss (lower is better: a 0/1 error, a
cross-entropy, a squared error). The client keeps its personal model only when the mean paired
difference ``fallback - personal`` exceeds ``margin`` standard errors of that mean, and is
positive: the burden of proof is on personalization, so a client with few rows, or a personal
model no better than the fallback, gets the fallback. Pure numpy; the estimator and a Flower node
compute the losses and call :func:`decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GuardEvidence", "decide", "holdout_mask", "EVIDENCE_FIELDS"]

#: The per-client arrays of :class:`GuardEvidence`, in order.
EVIDENCE_FIELDS = ("n_valid", "personal_loss", "fallback_loss", "gain", "gain_se")


@dataclass
class GuardEvidence:
    """What each client's held-out rows say, one entry per client.

    Parameters
    ----------
    n_valid : ndarray of int
        Held-out rows of the client.
    personal_loss, fallback_loss : ndarray of float
        Mean per-row loss of the personal model and of the fallback on them (NaN without rows).
    gain : ndarray of float
        ``fallback_loss - personal_loss``: what personalization gains on them (NaN without rows).
    gain_se : ndarray of float
        Standard error of ``gain`` from the paired per-row differences (``inf`` below two rows).
    """

    n_valid: np.ndarray
    personal_loss: np.ndarray
    fallback_loss: np.ndarray
    gain: np.ndarray
    gain_se: np.ndarray

    def as_dict(self) -> dict:
        """The fields as a dict of arrays (:data:`EVIDENCE_FIELDS`)."""
        return {name: getattr(self, name) for name in EVIDENCE_FIELDS}


def decide(personal_loss, fallback_loss, clients, n_clients: int, margin: float = 1.0):
    """Per client, the weight of its personal model (1: keep it, 0: use the fallback) and the evidence.

    A client keeps its personal model when ``gain > 0`` and ``gain > margin * gain_se``, where
    ``gain`` is the mean over its held-out rows of ``fallback_loss - personal_loss`` and
    ``gain_se`` the standard error of that mean (sample standard deviation over ``sqrt(n)``).
    A client with fewer than two held-out rows has no standard error and gets the fallback.

    Parameters
    ----------
    personal_loss, fallback_loss : array-like of shape (n_rows,)
        Per-row losses of the two models on the held-out rows.
    clients : array-like of int, shape (n_rows,)
        The client (``0 .. n_clients - 1``) of each row.
    n_clients : int
        Clients to decide for (those without rows get the fallback).
    margin : float, default=1.0
        Standard errors by which the personal model must beat the fallback (0: any positive gain).

    Returns
    -------
    weights : ndarray of shape (n_clients,)
        1.0 where the client keeps its personal model, 0.0 where it gets the fallback.
    evidence : GuardEvidence

    Examples
    --------
    Client 0's personal model is right where the fallback is wrong on 3 of 4 rows; client 1's is
    wrong once more than the fallback:

    >>> weights, evidence = decide([0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], 2)
    >>> weights.tolist(), evidence.gain.tolist(), evidence.n_valid.tolist()
    ([1.0, 0.0], [0.75, -0.5], [4, 2])
    """
    personal_loss = np.asarray(personal_loss, dtype=float)
    fallback_loss = np.asarray(fallback_loss, dtype=float)
    clients = np.asarray(clients, dtype=np.int64)
    if not (personal_loss.shape == fallback_loss.shape == clients.shape) or personal_loss.ndim != 1:
        raise ValueError(f"personal_loss, fallback_loss and clients must be 1-D of one length; got shapes "
                         f"{personal_loss.shape}, {fallback_loss.shape} and {clients.shape}.")
    if len(clients) and (clients.min() < 0 or clients.max() >= n_clients):
        raise ValueError(f"clients must lie in [0, {n_clients}); got values from {clients.min()} to {clients.max()}.")
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
    diff = fallback_loss - personal_loss
    n = np.bincount(clients, minlength=n_clients)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(clients, weights=diff, minlength=n_clients) / n
        personal = np.bincount(clients, weights=personal_loss, minlength=n_clients) / n
        fallback = np.bincount(clients, weights=fallback_loss, minlength=n_clients) / n
        # the sum of squared deviations from each client's own mean: no cancellation of large sums
        squares = np.bincount(clients, weights=(diff - mean[clients]) ** 2, minlength=n_clients)
        se = np.where(n >= 2, np.sqrt(squares / np.maximum(n - 1, 1) / np.maximum(n, 1)), np.inf)
        threshold = np.where(np.isfinite(se), margin * np.where(np.isfinite(se), se, 0.0), np.inf)
    keep = (n >= 2) & (mean > 0) & (mean > threshold)
    evidence = GuardEvidence(n_valid=n, personal_loss=personal, fallback_loss=fallback, gain=mean, gain_se=se)
    return keep.astype(float), evidence


def holdout_mask(labels, fraction: float, seed: int, key: int) -> np.ndarray:
    """Which of one client's rows the guard holds out: ``fraction`` of them, spread over its labels.

    The rows are ordered by label (ties at random, keyed by ``(seed, key)``: ``key`` is the
    client's index, a Flower node's ``partition-id``) and every ``1/fraction``-th is held out, as
    :meth:`pfedest.fit_state.ClientData.holdout` does, but keyed per client, so that a node holds
    out the rows the simulator holds out of that client without seeing anyone else's. A client
    with fewer than ``1/fraction`` rows holds none out.

    Examples
    --------
    >>> holdout_mask([0, 0, 1, 1, 1, 0, 1, 0, 1, 0], 0.2, seed=0, key=3).sum()
    np.int64(2)
    >>> holdout_mask([0, 1, 0], 0.2, seed=0, key=3).any()
    np.False_
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0, int(key)])
    order = np.lexsort((rng.random(len(labels)), labels))
    position = np.arange(len(labels))
    held = np.zeros(len(labels), dtype=bool)
    held[order] = np.floor((position + 1) * fraction) > np.floor(position * fraction)
    return held
