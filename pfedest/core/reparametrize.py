"""Calling a network with other tensors in place of its parameters, at a small cost per call.

:func:`torch.func.functional_call` is the general tool: it resolves every name, unties weights and
swaps each tensor through ``delattr``/``setattr`` on every call. A local SGD step of a small model
calls it once per step, and on a CPU that bookkeeping was a fifth of the step (0.5 ms of which
0.1 ms, for a 9k-parameter MLP and a batch of 16). :class:`ModuleCall` resolves where each tensor
lives once, and then only swaps dictionary entries around the call, with the same result.

Both put the tensors on the module itself for the length of the call, so two threads calling one
module at once (two predictions served from one fitted estimator) would see each other's tensors:
every :class:`ModuleCall` of a module holds that module's lock for the call.

It takes the short path only where that is known to be equivalent: every module that owns a
tensor keeps :class:`torch.nn.Module`'s own ``__setattr__``/``__getattr__`` (a recurrent layer
overrides ``__setattr__`` to refresh the flat copy of its weights it computes with, which a direct
swap would leave stale), and no ``torch.compile`` is tracing the call. Otherwise it calls
:func:`~torch.func.functional_call`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["ModuleCall", "module_lock"]


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def module_lock(module: nn.Module) -> threading.RLock:
    """The lock every :class:`ModuleCall` of ``module`` holds while its tensors sit on the module.

    Examples
    --------
    >>> net = torch.nn.Linear(1, 1)
    >>> module_lock(net) is module_lock(net)
    True
    """
    with _LOCKS_LOCK:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


def _plain(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__setattr__ is nn.Module.__setattr__ and kind.__getattr__ is nn.Module.__getattr__


class ModuleCall:
    """``module`` as a function of its tensors: ``ModuleCall(module)(tensors, *args)`` is
    ``functional_call(module, tensors, args)``.

    ``tensors`` maps names of ``module.named_parameters()`` / ``named_buffers()`` to tensors; a name
    left out keeps the module's own. Tied weights follow the name given for them. The module is
    restored after each call, also when the call raises. Like ``functional_call`` it swaps the
    tensors on the module itself, so calls on one module from several threads take turns
    (:func:`module_lock`); a forward pass traced by ``torch.compile`` takes no lock.

    Parameters
    ----------
    module : torch.nn.Module

    Examples
    --------
    >>> net = torch.nn.Linear(2, 1)
    >>> call = ModuleCall(net)
    >>> call({"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, torch.ones(1, 2)).item()
    2.0
    >>> isinstance(net.weight, torch.nn.Parameter)  # restored
    True
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._lock = module_lock(module)
        self._slots: dict[str, list] = {}  # name -> every (owner's dict, key) holding that tensor
        self._fast = True
        tied: dict[int, list] = {}  # one list per tensor, shared by all its names
        for kind, named in (("_parameters", module.named_parameters(remove_duplicate=False)),
                            ("_buffers", module.named_buffers(remove_duplicate=False))):
            for name, tensor in named:
                prefix, _, key = name.rpartition(".")
                owner = module.get_submodule(prefix)
                self._fast = self._fast and _plain(owner)
                self._slots[name] = tied.setdefault(id(tensor), [])
                self._slots[name].append((getattr(owner, kind), key))

    def __call__(self, tensors: Mapping[str, torch.Tensor], *args):
        if torch.compiler.is_compiling():
            return functional_call(self.module, dict(tensors), args)
        with self._lock:
            if not self._fast:
                return functional_call(self.module, dict(tensors), args)
            return self._swapped(tensors, args)

    def _swapped(self, tensors, args):
        unknown = [name for name in tensors if name not in self._slots]
        if unknown:
            raise KeyError(f"{type(self.module).__name__} has no parameter or buffer named {unknown}.")
        saved = []
        try:
            for name, tensor in tensors.items():
                for where, key in self._slots[name]:
                    saved.append((where, key, where[key]))
                    where[key] = tensor
            return self.module(*args)
        finally:
            for where, key, old in reversed(saved):
                where[key] = old
