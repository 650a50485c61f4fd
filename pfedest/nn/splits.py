"""Which parameters are personal: the split of a model into a shared part and a personal part.

A split has two jobs: ``prepare(module)`` may change the network (adapters insert modules), and
``personal_names(module)`` names the personal parameters of the prepared network. Split objects
are scikit-learn estimators as far as parameters go, so ``GridSearchCV`` can tune
``split__fraction``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Iterable, Sequence

from sklearn.base import BaseEstimator
from torch import nn

from .modules import AdaptedLayer, adapter_parameter_count, insert_adapters


class Split(BaseEstimator):
    """Base class of splits: nothing personal unless a subclass says otherwise.

    Subclasses override :meth:`personal_names` and, if they change the network, :meth:`prepare`.

    Parameters
    ----------
    None
        The base class takes no parameters; subclasses add their own.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> class BiasSplit(Split):
    ...     def personal_names(self, module):
    ...         return [n for n, _ in module.named_parameters() if n.endswith("bias")]
    >>> module, personal = BiasSplit().resolve(MLP(4, 3, (8,)))
    >>> personal
    ['net.0.bias', 'net.2.bias']
    """

    #: Whether selecting no parameter (or every parameter) is what this split means.
    allows_empty = False
    allows_all = False
    #: Whether FedAvg pre-training trains the personal part too (adapters: no, they start as the identity).
    pretrain_personal = True

    def prepare(self, module: nn.Module) -> nn.Module:
        """Return the network to train (``module`` itself unless the split inserts modules)."""
        return module

    def personal_names(self, module: nn.Module) -> list[str]:
        """Names of the personal parameters of ``module`` (as in ``named_parameters``)."""
        raise NotImplementedError

    def resolve(self, module: nn.Module) -> tuple[nn.Module, list[str]]:
        """Prepare ``module`` and name its personal parameters, refusing splits that make no sense.

        Returns
        -------
        module : torch.nn.Module
            The prepared network.
        personal : list of str
            Personal parameter names, in ``named_parameters`` order.
        """
        module = self.prepare(module)
        names = [n for n, _ in module.named_parameters()]
        chosen = set(self.personal_names(module))
        unknown = chosen - set(names)
        if unknown:
            raise ValueError(f"{self!r} named parameters the module does not have: {sorted(unknown)}")
        personal = [n for n in names if n in chosen]
        if not personal and not self.allows_empty:
            raise ValueError(
                f"{self!r} selects no parameter of the module as personal (parameters: {names}); "
                "use split='none' if you want FedAvg."
            )
        if len(personal) == len(names) and not self.allows_all:
            raise ValueError(
                f"{self!r} selects every parameter of the module as personal; "
                "use split='full' if you want purely local training."
            )
        return module, personal


def _layers_with_parameters(module: nn.Module) -> list[tuple[str, list[str], int]]:
    """(module name, its own parameter names, their size) for each module that owns parameters."""
    layers = []
    for mod_name, mod in module.named_modules():
        own = list(mod.named_parameters(recurse=False))
        if own:
            prefix = f"{mod_name}." if mod_name else ""
            layers.append((mod_name, [prefix + n for n, _ in own], sum(p.numel() for _, p in own)))
    return layers


def _leading_layers(layers, fraction: float | None, total: int) -> list[str]:
    """Names of the fewest leading layers whose share of ``total`` reaches ``fraction`` (at least one)."""
    chosen: list[str] = []
    size = 0
    for _, names, count in layers[:-1] if len(layers) > 1 else layers:
        chosen += names
        size += count
        if fraction is None or size / total >= fraction:
            break
    return chosen


class _LayerSplit(Split):
    def __init__(self, fraction: float | None = None):
        self.fraction = fraction

    def _ordered_layers(self, module):
        raise NotImplementedError

    def personal_names(self, module):
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        total = sum(p.numel() for p in module.parameters())
        return _leading_layers(self._ordered_layers(module), self.fraction, total)


class HeadSplit(_LayerSplit):
    """The output layer is personal (FedPer/FedRep style).

    Parameters
    ----------
    fraction : float in (0, 1], default=None
        If given, the fewest trailing layers whose share of all parameters reaches ``fraction``
        are personal (at least the output layer, never every layer).

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> HeadSplit().personal_names(MLP(4, 3, (8,)))
    ['net.2.weight', 'net.2.bias']
    """

    def _ordered_layers(self, module):
        return _layers_with_parameters(module)[::-1]


class InputSplit(_LayerSplit):
    """The input layer is personal (LG-FedAvg style).

    Parameters
    ----------
    fraction : float in (0, 1], default=None
        As :class:`HeadSplit`'s, counting layers from the input (at least the input layer).

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> deeper = MLP(4, 3, (8, 8))  # layers of 40, 72 and 27 parameters
    >>> InputSplit().personal_names(deeper), InputSplit(fraction=0.5).personal_names(deeper)[2:]
    (['net.0.weight', 'net.0.bias'], ['net.2.weight', 'net.2.bias'])
    """

    def _ordered_layers(self, module):
        return _layers_with_parameters(module)


class AdapterSplit(Split):
    """Small residual adapters after every hidden layer are personal; the network is shared.

    Parameters
    ----------
    fraction : float in (0, 1), default=0.1
        Target share of personal parameters; sets the adapter width (at least 1) whose share is
        closest to it. Ignored when ``width`` is given.
    width : int, default=None
        Bottleneck width of every adapter.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> split = AdapterSplit(width=2)
    >>> module, personal = split.resolve(MLP(4, 3, (8,)))
    >>> personal
    ['net.0.adapter.down.weight', 'net.0.adapter.down.bias', 'net.0.adapter.up.weight', 'net.0.adapter.up.bias']
    """

    pretrain_personal = False

    def __init__(self, fraction: float = 0.1, width: int | None = None):
        self.fraction = fraction
        self.width = width

    def adapter_width(self, module: nn.Module) -> int:
        """The bottleneck width this split gives adapters in ``module``."""
        if self.width is not None:
            if self.width < 1:
                raise ValueError(f"width must be a positive integer, got {self.width!r}")
            return int(self.width)
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction!r}")
        base = sum(p.numel() for p in module.parameters())
        per_width = adapter_parameter_count(module, 1) - adapter_parameter_count(module, 0)
        fixed = adapter_parameter_count(module, 0)
        if per_width == 0:
            return 1  # insert_adapters will explain that this module has nowhere to put one
        # share(w) = (fixed + w per_width) / (base + fixed + w per_width) = fraction, solved for w
        exact = (self.fraction * (base + fixed) - fixed) / (per_width * (1 - self.fraction))
        share = lambda w: (fixed + w * per_width) / (base + fixed + w * per_width)
        candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
        return min(candidates, key=lambda w: (abs(share(w) - self.fraction), w))

    def prepare(self, module):
        return insert_adapters(module, self.adapter_width(module))

    def personal_names(self, module):
        return [
            f"{name}.adapter.{p}" for name, mod in module.named_modules() if isinstance(mod, AdaptedLayer)
            for p, _ in mod.adapter.named_parameters()
        ]


class FullSplit(Split):
    """Every parameter is personal: each client trains alone (local training).

    Parameters
    ----------
    None
        It takes no parameters.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> FullSplit().resolve(MLP(4, 3, (8,)))[1]
    ['net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias']
    """

    allows_all = True

    def personal_names(self, module):
        return [n for n, _ in module.named_parameters()]


class NoSplit(Split):
    """Nothing is personal: FedAvg.

    Parameters
    ----------
    None
        It takes no parameters.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> NoSplit().resolve(MLP(4, 3, (8,)))[1]
    []
    """

    allows_empty = True

    def personal_names(self, module):
        return []


class NameSplit(Split):
    """Parameters whose names match any of the glob patterns (``fnmatch``) are personal.

    Parameters
    ----------
    patterns : sequence of str
        Patterns such as ``"net.4.*"`` or exact names such as ``"classifier.weight"``.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> NameSplit(["*.bias"]).personal_names(MLP(4, 3, (8,)))
    ['net.0.bias', 'net.2.bias']
    """

    def __init__(self, patterns: Sequence[str] = ()):
        self.patterns = patterns

    def personal_names(self, module):
        if isinstance(self.patterns, str):
            raise TypeError(f"patterns must be a list of strings, got the string {self.patterns!r}")
        return [n for n, _ in module.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in self.patterns)]


class FunctionSplit(Split):
    """Parameters for which ``func(name, parameter)`` is true are personal.

    Parameters
    ----------
    func : callable
        ``(name: str, parameter: torch.nn.Parameter) -> bool``.

    Examples
    --------
    >>> from pfedest.nn.modules import MLP
    >>> FunctionSplit(lambda name, p: p.dim() == 1).personal_names(MLP(4, 3, (8,)))
    ['net.0.bias', 'net.2.bias']
    """

    def __init__(self, func: Callable[[str, nn.Parameter], bool] | None = None):
        self.func = func

    def personal_names(self, module):
        return [n for n, p in module.named_parameters() if self.func(n, p)]


NAMED_SPLITS: dict[str, type[Split]] = {
    "head": HeadSplit,
    "input": InputSplit,
    "adapters": AdapterSplit,
    "full": FullSplit,
    "none": NoSplit,
}


def make_split(spec: str | Iterable[str] | Callable | Split) -> Split:
    """Turn any accepted ``split=`` value into a :class:`Split` object.

    Parameters
    ----------
    spec : str, list of str, callable or Split
        A name in ``"head"``, ``"input"``, ``"adapters"``, ``"full"``, ``"none"``; a list of
        parameter-name patterns; a callable ``(name, param) -> bool``; or a split object.

    Returns
    -------
    Split

    Examples
    --------
    >>> make_split("head")
    HeadSplit()
    >>> make_split(["net.0.*"])
    NameSplit(patterns=['net.0.*'])
    """
    if isinstance(spec, Split):
        return spec
    if isinstance(spec, str):
        if spec not in NAMED_SPLITS:
            raise ValueError(f"Unknown split {spec!r}; expected one of {sorted(NAMED_SPLITS)}, a list of "
                             "parameter-name patterns, a callable (name, param) -> bool, or a Split object.")
        return NAMED_SPLITS[spec]()
    if callable(spec):
        return FunctionSplit(spec)
    if isinstance(spec, (list, tuple)) and all(isinstance(p, str) for p in spec):
        return NameSplit(list(spec))
    raise TypeError(f"split must be a name, a list of patterns, a callable or a Split object, got {spec!r}")
