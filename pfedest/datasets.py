"""Federated data sets that need no download."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state


def make_shifted_clients(n_clients: int = 20, n_samples_per_client=(20, 80), n_features: int = 20,
                         n_classes: int = 5, class_sep: float = 1.0, label_shift: float = 0.5,
                         feature_shift: float = 1.0, random_state=None):
    """Gaussian classes shared by all clients, with a per-client shift that personalization can fix.

    Every class has one mean shared by all clients. Each client then (a) adds its own offset to the
    features, of scale ``feature_shift``, and (b) with probability ``label_shift`` relabels the
    classes with its own random permutation. A shared model cannot serve clients that disagree
    on labels; a personal output layer can, while the features are learned from everyone's rows.

    Parameters
    ----------
    n_clients : int, default=20
    n_samples_per_client : int or (int, int), default=(20, 80)
        Rows per client, or the range ``[low, high]`` they are drawn from uniformly.
    n_features : int, default=20
    n_classes : int, default=5
    class_sep : float, default=1.0
        Scale of the class means; the within-class noise is standard normal.
    label_shift : float in [0, 1], default=0.5
        Probability that a client permutes the labels.
    feature_shift : float, default=1.0
        Scale of each client's feature offset.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,), int
    client_ids : ndarray of shape (n_samples,), int

    Examples
    --------
    >>> X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> X.shape, sorted(set(c.tolist()))
    ((30, 20), [0, 1, 2])
    """
    if n_clients < 1 or n_classes < 2 or n_features < 1:
        raise ValueError("need n_clients >= 1, n_classes >= 2 and n_features >= 1.")
    if not 0 <= label_shift <= 1:
        raise ValueError(f"label_shift must be in [0, 1], got {label_shift!r}.")
    rng = check_random_state(random_state)
    low, high = (n_samples_per_client, n_samples_per_client) if np.isscalar(n_samples_per_client) \
        else n_samples_per_client
    if not 1 <= low <= high:
        raise ValueError(f"n_samples_per_client must be positive with low <= high, got {n_samples_per_client!r}.")
    means = rng.standard_normal((n_classes, n_features)) * class_sep
    Xs, ys, cs = [], [], []
    for client in range(n_clients):
        n = int(rng.randint(low, high + 1))
        latent = rng.randint(n_classes, size=n)
        offset = rng.standard_normal(n_features) * feature_shift
        labels = rng.permutation(n_classes) if rng.rand() < label_shift else np.arange(n_classes)
        Xs.append(means[latent] + rng.standard_normal((n, n_features)) + offset)
        ys.append(labels[latent])
        cs.append(np.full(n, client))
    return np.concatenate(Xs).astype(np.float32), np.concatenate(ys), np.concatenate(cs)
