"""Per-client evaluation: every client scored on its own rows, and the summaries that matter."""

from __future__ import annotations

import numpy as np


def client_accuracies(estimator, X, y, client_ids):
    """Accuracy of ``estimator`` on each client's own rows.

    Parameters
    ----------
    estimator : fitted PartialPersonalizedClassifier
    X, y, client_ids : array-like
        Rows to evaluate; every client present is evaluated.

    Returns
    -------
    clients : ndarray of shape (n_clients,)
        The client ids, sorted.
    counts : ndarray of shape (n_clients,)
        Rows per client.
    accuracy : ndarray of shape (n_clients,)
    """
    y = np.asarray(y)
    client_ids = np.asarray(client_ids)
    correct = estimator.predict(X, client_ids=client_ids) == y
    clients, inverse, counts = np.unique(client_ids, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=correct, minlength=len(clients))
    return clients, counts, hits / counts


def summarize(counts, accuracy) -> dict:
    """Mean, sample-weighted mean and worst client of per-client accuracies.

    Examples
    --------
    >>> summarize([10, 30], [0.5, 1.0])
    {'mean': 0.75, 'weighted_mean': 0.875, 'worst': 0.5}
    """
    counts = np.asarray(counts, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    return {
        "mean": float(accuracy.mean()),
        "weighted_mean": float(np.average(accuracy, weights=counts)),
        "worst": float(accuracy.min()),
    }
