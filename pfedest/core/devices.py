"""Where training runs: resolve ``device="auto"`` and move state between devices."""

from __future__ import annotations

import warnings
from typing import Any

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device``; ``"auto"`` picks CUDA, then Apple ``mps``, then the CPU.

    A device that is not available here (a model trained on a GPU, loaded on a laptop) falls back
    to the CPU with a warning.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` or a device such as ``"cpu"`` or ``"cuda:0"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If ``device`` is not a device name.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto' or a torch device string such as 'cpu' or 'cuda:0', "
                         f"got {device!r}") from exc
    available = {
        "cuda": torch.cuda.is_available,
        "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }.get(resolved.type, lambda: True)()
    if not available:
        warnings.warn(f"device {str(resolved)!r} is not available on this machine; using the CPU.",
                      UserWarning, stacklevel=3)
        return torch.device("cpu")
    return resolved


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``.

    Parameters
    ----------
    obj : object
        A tensor, or dicts, lists and tuples (namedtuples too) holding tensors; anything else is
        returned as it is.
    device : torch.device
        Where to move the tensors.

    Returns
    -------
    object
        The same structure with moved tensors.

    Examples
    --------
    >>> moved = to_device({"w": torch.zeros(2), "steps": [torch.ones(1), 3]}, torch.device("cpu"))
    >>> moved["w"].device, moved["steps"][1]
    (device(type='cpu'), 3)
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple takes its fields as arguments
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
