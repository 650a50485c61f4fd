"""Mixed precision of the local steps: the loss computed under ``torch.autocast``.

Each client step of a small network on a minibatch of 16 rows reads and writes every weight for
little arithmetic, so large rounds on a GPU are bound by memory traffic (shared/PERFORMANCE.md):
bfloat16 matrix products move half the bytes. The parameters, their updates and the averaging
stay float32; only the forward and backward arithmetic of the loss runs in bfloat16.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["PRECISIONS", "autocast_loss"]

#: The values of the estimator's ``precision``.
PRECISIONS = ("fp32", "bf16")


def autocast_loss(loss, device: torch.device, precision: str = "fp32"):
    """``loss`` computed under ``torch.autocast`` to bfloat16 for ``precision="bf16"``; ``loss`` itself for ``"fp32"``.

    Parameters
    ----------
    loss : callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.
    device : torch.device
        Where it runs (autocast is per device type; the CPU supports bfloat16 too).
    precision : {"fp32", "bf16"}
        The arithmetic of the forward and backward passes.

    Returns
    -------
    callable
        The same signature; its outputs are float32.

    Examples
    --------
    >>> from pfedest.core.model import linear_loss
    >>> base = linear_loss(torch.ones(4, 2), torch.zeros(4))
    >>> args = ({"w": torch.full((2,), 0.1)}, {"b": torch.zeros(())}, torch.arange(4), torch.ones(4))
    >>> autocast_loss(base, torch.device("cpu"), "fp32") is base
    True
    >>> mean, (total, count) = autocast_loss(base, torch.device("cpu"), "bf16")(*args)
    >>> mean.dtype, round(float(mean), 2)
    (torch.float32, 0.04)
    """
    if precision == "fp32":
        return loss
    if precision != "bf16":
        raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}.")
    device_type = torch.device(device).type

    @functools.wraps(loss)  # keeps what the loss declares (mask_optional)
    def mixed(shared, personal, idx, mask):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            mean, (total, count) = loss(shared, personal, idx, mask)
        return mean.float(), (total.float(), count.float())

    return mixed
