"""Callbacks that score the model during training."""

from __future__ import annotations

import math

from ..evaluation.report import client_scores, summary_statistics
from .base import Callback


class EvaluateClients(Callback):
    """Every ``every`` rounds, score every client on its own held-out rows (accuracy, or a regressor's :math:`R^2`).

    Adds ``{name}_mean``, ``{name}_weighted_mean``, ``{name}_p10`` (10th percentile over clients)
    and ``{name}_worst`` to the round's record (NaN in rounds without an evaluation).

    Parameters
    ----------
    X, y, client_ids : array-like
        Held-out rows; every client in them must be known to the estimator.
    every : int, default=1
    name : str, default="valid"

    Examples
    --------
    Any fitted classifier can be scored; in training the estimator calls the hook itself:

    >>> from sklearn.dummy import DummyClassifier
    >>> X, y, c = [[0], [1], [2], [3]], [0, 0, 0, 1], [0, 0, 1, 1]
    >>> record = {"round": 2}
    >>> EvaluateClients(X, y, c, every=2).on_round_end(DummyClassifier().fit(X, y), record)
    >>> record["valid_mean"], record["valid_worst"]
    (0.75, 0.5)
    """

    def __init__(self, X=None, y=None, client_ids=None, every: int = 1, name: str = "valid"):
        self.X = X
        self.y = y
        self.client_ids = client_ids
        self.every = every
        self.name = name

    def on_round_end(self, estimator, record):
        keys = [f"{self.name}_{k}" for k in ("mean", "weighted_mean", "p10", "worst")]
        if record["round"] % self.every:
            record.update(dict.fromkeys(keys, math.nan))
            return
        _, counts, scores, _ = client_scores(estimator, self.X, self.y, self.client_ids)
        summary = summary_statistics(scores, counts)
        record.update({k: summary[s] for k, s in zip(keys, ("mean", "weighted_mean", "10%", "worst"))})
