"""The server's side of a round: a weighted mean of the shared parameters clients send back.

Nothing here is given personal parameters; the engine hands over only what a client would send.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

Params = Dict[str, torch.Tensor]


class WeightedAverage:
    """Streams ``sum_i w_i u_i / sum_i w_i`` over chunks of clients, then takes a server step.

    Examples
    --------
    >>> import torch
    >>> avg = WeightedAverage()
    >>> avg.add({"w": torch.tensor([[1.0], [3.0]])}, torch.tensor([1.0, 3.0]))
    >>> avg.step({"w": torch.tensor([0.0])}, server_lr=1.0)
    {'w': tensor([2.5000])}
    """

    def __init__(self):
        self._sum: Optional[Params] = None
        self._weight = 0.0

    def add(self, client_shared: Params, weights: torch.Tensor) -> None:
        """Add a chunk of clients' returned shared parameters, stacked on a leading client axis."""
        chunk = {k: torch.tensordot(weights.to(v.dtype), v, dims=1) for k, v in client_shared.items()}
        if self._sum is None:
            self._sum = chunk
        else:
            self._sum = {k: self._sum[k] + chunk[k] for k in chunk}
        self._weight = self._weight + weights.sum()

    def step(self, shared: Params, server_lr: float) -> Params:
        """``u + server_lr * (mean - u)``: plain averaging at ``server_lr=1``."""
        if self._sum is None:
            return dict(shared)
        return {k: u + server_lr * (self._sum[k] / self._weight - u) for k, u in shared.items()}
