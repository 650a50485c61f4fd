"""When a monitored value has stopped improving: the one rule behind the estimator's ``tol`` /
``n_iter_no_change`` and the :class:`~pfedest.callbacks.EarlyStopping` callback."""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["Plateau"]


class Plateau:
    """Counts the evaluations since ``value`` last improved by more than ``min_delta``.

    The rule of scikit-learn's iterative estimators (``tol`` and ``n_iter_no_change``): an
    evaluation improves when it beats the best so far by more than ``min_delta``; after
    ``patience`` evaluations in a row that do not, the value has reached its plateau.

    Parameters
    ----------
    mode : {"min", "max"}, default="min"
        Whether lower or higher values are better.
    patience : int, default=10
        Evaluations without improvement that make a plateau.
    min_delta : float, default=0.0
        How much an evaluation must beat the best to count as an improvement.

    Examples
    --------
    >>> rule = Plateau(mode="min", patience=2, min_delta=0.1)
    >>> [rule.update(v, round_number=r) for r, v in enumerate([1.0, 0.5, 0.45, 0.44], start=1)]
    [True, True, False, False]
    >>> rule.reached, rule.best, rule.best_round
    (True, 0.5, 2)
    """

    def __init__(self, mode: str = "min", patience: int = 10, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_round: Optional[int] = None
        self.waited = 0

    def update(self, value: float, round_number: int) -> bool:
        """Take one evaluation; return whether it improved (NaN never does, nor counts as a wait)."""
        if value is None or math.isnan(value):
            return False
        improved = (value < self.best - self.min_delta) if self.mode == "min" else (value > self.best + self.min_delta)
        if improved:
            self.best, self.best_round, self.waited = float(value), round_number, 0
        else:
            self.waited += 1
        return improved

    @property
    def reached(self) -> bool:
        """``patience`` evaluations in a row without improvement."""
        return self.waited >= self.patience

    def state_dict(self) -> dict:
        """JSON-able: the best value, its round and the evaluations waited since."""
        return {"best": float(self.best), "best_round": self.best_round, "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.best, self.best_round, self.waited = float(state["best"]), state["best_round"], int(state["waited"])
