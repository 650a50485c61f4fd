"""Callbacks: code that runs at the start and end of training and of every round.

- :mod:`~pfedest.callbacks.base`: the :class:`Callback` interface.
- :mod:`~pfedest.callbacks.scoring`: :class:`EvaluateClients`, every client scored on held-out rows.
- :mod:`~pfedest.callbacks.training`: :class:`EarlyStopping` and :class:`Checkpoint`.
"""

from .base import Callback, keeps_state, named_callbacks
from .scoring import EvaluateClients
from .training import Checkpoint, EarlyStopping

__all__ = ["Callback", "EvaluateClients", "EarlyStopping", "Checkpoint", "keeps_state", "named_callbacks"]
