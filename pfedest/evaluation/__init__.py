"""Judging a fitted model client by client, and choosing what to personalize.

- :mod:`~pfedest.evaluation.report`: every client's accuracy (a regressor's R^2), against a baseline.
- :mod:`~pfedest.evaluation.model_selection`: cross-validation that keeps each client in every fold.
- :mod:`~pfedest.evaluation.plotting`: pictures of both (matplotlib, imported only when drawing).
"""

from .model_selection import ClientKFold, personal_fractions, train_test_split
from .plotting import plot_client_change, plot_client_scatter, plot_grid_search
from .report import ClientReport, client_accuracies, client_report, client_scores, summarize, summary_statistics

__all__ = ["client_report", "ClientReport", "client_accuracies", "client_scores", "summarize", "summary_statistics", "ClientKFold", "train_test_split",
           "personal_fractions", "plot_grid_search", "plot_client_change", "plot_client_scatter"]
