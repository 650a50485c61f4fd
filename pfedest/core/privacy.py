"""The server's side of a differentially private round (DP-FedAvg): clipped deltas, Gaussian noise.

Each sampled client's *shared* update ``delta_i = u_i - u`` is scaled to norm at most ``clip``
(over all shared tensors together: one norm per client), the server sums the clipped deltas, adds
Gaussian noise of standard deviation ``noise_std`` to each coordinate of the sum and divides by a
fixed ``denominator`` (the expected number of clients under Poisson sampling, the sample size
under fixed-size sampling), not by the number that answered: the sensitivity of the result to one
client is then ``clip / denominator`` whoever took part (McMahan et al., ICLR 2018). Every client
counts equally: weights by row counts would make one client's influence depend on its data.

:class:`PrivateSum` has the interface of :class:`~pfedest.core.server.WeightedAverage` (``add`` a
chunk of clients stacked on a leading axis, then ``mean``), so :func:`~pfedest.core.rounds.client_updates`
runs it in place of the plain average: the clipping is one batched computation per chunk, the same
for the loop and the vmap engines. The noise comes from a ``torch.Generator`` the caller seeds
(keyed by the run's seed and the round), drawn on the CPU, so a run is reproducible and does not
depend on the engine, the chunking or the device.

For adaptive clipping (Andrew et al., NeurIPS 2021) each client also reports whether its delta
was within ``clip``; :meth:`PrivateSum.clipped_fraction` is the noisy fraction, and
:func:`next_clip` the geometric update of ``clip`` towards a target quantile.

Personal parameters never reach this module.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .types import Params

__all__ = ["clip_deltas", "PrivateSum", "next_clip", "update_noise_multiplier"]


def clip_deltas(deltas: Params, clip: float) -> tuple[Params, torch.Tensor]:
    """Scale each client's delta (stacked on a leading client axis) to norm at most ``clip``.

    The norm of client ``i`` is taken over all its tensors together, so what a client sends is
    bounded as a whole: ``||delta_i|| <= clip`` after clipping.

    Parameters
    ----------
    deltas : dict of str to Tensor
        Each tensor of shape ``(n_clients, *param.shape)``.
    clip : float
        The largest norm a client's delta keeps (``inf``: no clipping).

    Returns
    -------
    clipped : dict of str to Tensor
        The deltas, each client's scaled by ``min(1, clip / norm_i)``.
    norms : Tensor of shape (n_clients,)
        Each client's norm before clipping.

    Examples
    --------
    >>> clipped, norms = clip_deltas({"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}, clip=1.0)
    >>> clipped["w"].round(decimals=4).tolist(), norms.round(decimals=4).tolist()
    ([[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]], [5.0, 0.5])
    """
    squares = sum(v.reshape(v.shape[0], -1).double().pow(2).sum(1) for v in deltas.values())
    norms = squares.sqrt()
    # min(1, clip / norm) without dividing by a zero norm; computed in float64, applied in the
    # tensors' dtype (rounding can leave a clipped norm a few ulps above clip)
    factor = torch.where(norms > clip, clip / norms.clamp_min(1e-300), torch.ones_like(norms))
    clipped = {k: v * factor.to(v.dtype).reshape(-1, *([1] * (v.dim() - 1))) for k, v in deltas.items()}
    return clipped, norms


class PrivateSum:
    """Clipped deltas summed over chunks of clients; :meth:`mean` adds the noise and divides.

    Parameters
    ----------
    shared : dict of str to Tensor
        The server's shared parameters ``u`` of the round (the deltas are taken from them).
    clip : float
        Each client's delta is clipped to this norm.
    noise_std : float
        Standard deviation of the Gaussian noise added to each coordinate of the sum of clipped
        deltas (``noise_multiplier * clip``).
    denominator : float
        What the noisy sum is divided by: the expected number of clients (Poisson sampling) or
        the sample size (fixed-size sampling).
    generator : torch.Generator
        A CPU generator; the noise of the deltas is drawn from it first (tensors in sorted name
        order), then the noise of the clipped count.
    count_std : float, default=0.0
        Standard deviation of the noise on the count of clients within ``clip`` (adaptive clipping).

    Examples
    --------
    Without noise, two clients whose deltas are clipped from norms 5 and 0.5 to 1 and 0.5, divided
    by the expected two clients:

    >>> u = {"w": torch.zeros(2)}
    >>> total = PrivateSum(u, clip=1.0, noise_std=0.0, denominator=2.0, generator=torch.Generator())
    >>> total.add({"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}, torch.ones(2))
    >>> [round(x, 4) for x in total.mean()["w"].tolist()], total.clipped_fraction()
    ([0.45, 0.6], 0.5)
    """

    def __init__(self, shared: Params, clip: float, noise_std: float, denominator: float,
                 generator: torch.Generator, count_std: float = 0.0):
        if not denominator > 0:
            raise ValueError(f"denominator must be positive, got {denominator!r}.")
        self.shared = shared
        self.clip = float(clip)
        self.noise_std = float(noise_std)
        self.denominator = float(denominator)
        self.count_std = float(count_std)
        self.generator = generator
        self._sum: Params = {k: torch.zeros_like(v) for k, v in shared.items()}
        self._within = 0.0
        self.norms: list = []  # each chunk's norms before clipping, for diagnostics
        self._noisy_count: Optional[float] = None

    def add(self, client_shared: Params, weights: torch.Tensor) -> None:
        """Add a chunk of clients' returned shared parameters; ``weights`` is ignored (every client counts once)."""
        deltas = {k: v - self.shared[k] for k, v in client_shared.items()}
        clipped, norms = clip_deltas(deltas, self.clip)
        for k, v in clipped.items():
            self._sum[k] = self._sum[k] + v.sum(0)
        self._within += float((norms <= self.clip).sum())
        self.norms.append(norms.detach().cpu())

    def _noise(self, like: torch.Tensor, std: float) -> torch.Tensor:
        draw = torch.randn(like.shape, generator=self.generator, dtype=torch.float64)
        return (std * draw).to(dtype=like.dtype, device=like.device)

    def mean(self) -> Params:
        """``u`` plus the noisy sum of clipped deltas over ``denominator``: what the server optimizer
        steps towards (as it steps towards the plain mean of the clients' parameters). Even a round
        that sampled no client returns noise: releasing ``u`` unchanged would tell that nobody took part."""
        out = {}
        for k in sorted(self._sum):  # a fixed order of draws, whatever the dict's order
            total = self._sum[k]
            if self.noise_std > 0:
                total = total + self._noise(total, self.noise_std)
            out[k] = self.shared[k] + total / self.denominator
        return {k: out[k] for k in self._sum}

    def clipped_fraction(self) -> float:
        """The fraction of clients whose delta was within ``clip``, with its noise (drawn once, after
        :meth:`mean`'s)."""
        if self._noisy_count is None:
            noise = float(torch.randn((), generator=self.generator, dtype=torch.float64)) if self.count_std > 0 else 0.0
            self._noisy_count = self._within + self.count_std * noise
        return self._noisy_count / self.denominator


def next_clip(clip: float, fraction_within: float, quantile: float, clip_lr: float) -> float:
    """The geometric update of adaptive clipping: ``clip * exp(-clip_lr * (fraction_within - quantile))``.

    If more than ``quantile`` of the clients were within ``clip``, it shrinks; if fewer, it grows
    (Andrew, Thakkar, McMahan and Ramaswamy, "Differentially private learning with adaptive
    clipping", NeurIPS 2021, eq. 3).

    Examples
    --------
    >>> round(next_clip(1.0, fraction_within=1.0, quantile=0.5, clip_lr=0.2), 4)
    0.9048
    """
    return float(clip * math.exp(-clip_lr * (fraction_within - quantile)))


def update_noise_multiplier(noise_multiplier: float, count_multiplier: Optional[float]) -> float:
    """The noise multiplier left for the deltas when the clipped count takes a share of the budget.

    Two Gaussian releases of the same clients with multipliers ``z_d`` and ``z_b`` are as private
    as one with ``(z_d**-2 + z_b**-2) ** -0.5``; so for a total ``noise_multiplier`` ``z`` the deltas
    get ``(z**-2 - z_b**-2) ** -0.5`` (Andrew et al. 2021, Theorem 1). ``None``: no count is released.

    Examples
    --------
    >>> update_noise_multiplier(1.0, None), round(update_noise_multiplier(1.0, 5.0), 4)
    (1.0, 1.0206)
    """
    if count_multiplier is None or noise_multiplier == 0:
        return float(noise_multiplier)
    if count_multiplier <= noise_multiplier:
        raise ValueError(f"The clipped count's noise multiplier ({count_multiplier:g}) must exceed the total "
                         f"noise multiplier ({noise_multiplier:g}): raise clipped_count_stddev or lower the noise.")
    return float((noise_multiplier ** -2 - count_multiplier ** -2) ** -0.5)
