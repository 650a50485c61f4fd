"""The server's side of a round: a weighted mean of the shared parameters clients send back.

Nothing here is given personal parameters; the engine hands over only what a client would send.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from sklearn.base import BaseEstimator, clone

from .types import Params


#: The server optimizers by name.
SERVER_OPTIMIZERS = ("sgd", "adam")


class WeightedAverage:
    """Streams ``sum_i w_i u_i / sum_i w_i`` over chunks of clients, then takes a server step.

    Parameters
    ----------
    None
        It takes no parameters; clients are added with :meth:`add`.

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

    def mean(self) -> Optional[Params]:
        """The weighted mean of what the clients sent, or ``None`` if no client was added."""
        if self._sum is None:
            return None
        return {k: v / self._weight for k, v in self._sum.items()}

    def step(self, shared: Params, server_lr: float) -> Params:
        """``u + server_lr * (mean - u)``: plain averaging at ``server_lr=1``."""
        return ServerOptimizer("sgd", lr=server_lr).step(shared, self.mean())


class ServerOptimizer(BaseEstimator):
    """The server's update from the averaged pseudo-gradient ``g = u - mean(u_i)``.

    ``"sgd"`` with ``lr=1`` and no momentum is plain averaging (FedAvg); ``momentum`` gives server
    momentum (FedAvgM); ``"adam"`` is Adam on the pseudo-gradient (FedAdam), with bias correction as
    in ``torch.optim.Adam``. An estimator's ``server_optimizer`` takes one (its settings are then
    searchable as ``server_optimizer__lr``); each fit trains a fresh clone, whose momentum or
    moments the fit's checkpoints keep.

    Parameters
    ----------
    kind : {"sgd", "adam"}, default="sgd"
    lr : float, default=1.0
    momentum : float, default=0.0
        Heavy-ball momentum of ``"sgd"``: ``b = momentum * b + g; u = u - lr * b``.
    betas : (float, float), default=(0.9, 0.999)
        Adam's decay rates of the first and second moments.
    eps : float, default=1e-8
        Adam's denominator term.

    Examples
    --------
    >>> import torch
    >>> opt = ServerOptimizer("adam", lr=0.1)
    >>> opt.step({"w": torch.tensor([1.0])}, {"w": torch.tensor([0.0])})  # first Adam step: lr * sign(-g)
    {'w': tensor([0.9000])}
    """

    def __init__(self, kind: str = "sgd", lr: float = 1.0, momentum: float = 0.0,
                 betas: tuple = (0.9, 0.999), eps: float = 1e-8):
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"Unknown server optimizer {kind!r}; expected 'sgd' or 'adam'.")
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, lr, momentum, betas, eps
        self.state: Dict[str, torch.Tensor] = {}
        self.t = 0

    def step(self, shared: Params, mean: Optional[Params]) -> Params:
        """The new shared parameters (``shared`` itself when no client answered)."""
        if mean is None:
            return dict(shared)
        self.t += 1
        new = {}
        for k, u in shared.items():
            g = u - mean[k]
            if self.kind == "sgd":
                if self.momentum:
                    g = self.state[k] = self.momentum * self.state[k] + g if k in self.state else g.clone()
                new[k] = u - self.lr * g
            else:
                b1, b2 = self.betas
                m = self.state[f"{k}.m"] = b1 * self.state.get(f"{k}.m", torch.zeros_like(u)) + (1 - b1) * g
                v = self.state[f"{k}.v"] = b2 * self.state.get(f"{k}.v", torch.zeros_like(u)) + (1 - b2) * g * g
                m_hat = m / (1 - b1 ** self.t)
                v_hat = v / (1 - b2 ** self.t)
                new[k] = u - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return new

    def state_dict(self) -> dict:
        """Tensors and numbers only: loadable with ``torch.load(..., weights_only=True)``."""
        return {"t": self.t, "state": dict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.t = int(state["t"])
        self.state = dict(state["state"])


def make_server_optimizer(spec, lr: float = 1.0, momentum: float = 0.0) -> ServerOptimizer:
    """A fresh server optimizer from an estimator's ``server_optimizer``: a name (with ``lr`` and,
    for ``"sgd"``, ``momentum``) or a :class:`ServerOptimizer` (cloned: its own settings, no state).

    Examples
    --------
    >>> make_server_optimizer("adam", lr=0.01)
    ServerOptimizer(kind='adam', lr=0.01)
    >>> make_server_optimizer(ServerOptimizer("sgd", momentum=0.9))
    ServerOptimizer(momentum=0.9)
    """
    if isinstance(spec, str):
        return ServerOptimizer(spec, lr=lr, momentum=momentum)
    if not isinstance(spec, ServerOptimizer):
        raise TypeError(f"server_optimizer must be 'sgd', 'adam' or a ServerOptimizer, got {spec!r}.")
    return clone(spec)
