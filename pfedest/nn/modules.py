"""Default networks and the adapter modules that the ``"adapters"`` split makes personal."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """A plain ReLU multilayer perceptron for flat features.

    Parameters
    ----------
    n_features : int
        Width of the input.
    n_classes : int
        Number of outputs (logits).
    hidden_layer_sizes : sequence of int, default=(64, 64)
        Widths of the hidden layers.

    Examples
    --------
    >>> net = MLP(4, 3, (8,))
    >>> net(torch.zeros(5, 4)).shape, [n for n, _ in net.named_parameters()]
    (torch.Size([5, 3]), ['net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias'])
    """

    mode_free = True  # its forward ignores self.training (pfedest.core.model.needs_training_mode)

    def __init__(self, n_features: int, n_classes: int, hidden_layer_sizes: Sequence[int] = (64, 64)):
        super().__init__()
        widths = [n_features, *hidden_layer_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two convolutions, global average pooling and two linear layers, for ``(C, H, W)`` images.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    n_classes : int
        Number of outputs (logits).
    channels : tuple of int, default=(16, 32)
        Output channels of the two 3x3 convolutions.
    hidden : int, default=64
        Width of the hidden linear layer.

    Examples
    --------
    >>> SmallCNN(1, 10, channels=(4, 8), hidden=16)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    mode_free = True  # its forward ignores self.training (pfedest.core.model.needs_training_mode)

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32), hidden: int = 64):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def default_module(input_shape: tuple[int, ...], n_classes: int, hidden_layer_sizes: Sequence[int]) -> nn.Module:
    """The network pfedest builds when ``module=None``: an MLP for flat rows, a small CNN for images.

    ``input_shape`` is the shape of one row: ``(n_features,)``, ``(H, W)`` or ``(C, H, W)``.

    Parameters
    ----------
    input_shape : tuple of int
        The shape of one row.
    n_classes : int
        Number of outputs (logits).
    hidden_layer_sizes : sequence of int
        Hidden widths of the MLP (unused for images).

    Returns
    -------
    torch.nn.Module
        An :class:`MLP` or a :class:`SmallCNN` (with a channel axis added for ``(H, W)`` rows).

    Examples
    --------
    >>> type(default_module((20,), 5, (8,))).__name__
    'MLP'
    >>> default_module((8, 8), 5, (8,))(torch.zeros(2, 8, 8)).shape
    torch.Size([2, 5])
    """
    if len(input_shape) == 3:
        return SmallCNN(input_shape[0], n_classes)
    if len(input_shape) == 2:
        return nn.Sequential(_AddChannel(), SmallCNN(1, n_classes))
    n_features = int(torch.Size(input_shape).numel())
    return MLP(n_features, n_classes, hidden_layer_sizes)


def build_module(module, input_shape: tuple, n_classes: int, hidden_layer_sizes: Sequence[int]) -> nn.Module:
    """The network an estimator's ``module`` parameter asks for, for rows of ``input_shape``.

    ``None`` builds :func:`default_module`; a module instance is copied (its weights are the start);
    a callable (a module class or a factory) is called as ``module(n_features, n_classes)``, where
    ``n_features`` is an int for flat rows and the shape of one row otherwise.

    Examples
    --------
    >>> build_module(None, (5,), 3, (4,))(torch.zeros(2, 5)).shape
    torch.Size([2, 3])
    >>> build_module(lambda n_features, n_classes: nn.Linear(n_features, n_classes), (5,), 3, ()).out_features
    3
    """
    n_features = input_shape[0] if len(input_shape) == 1 else input_shape
    if module is None:
        return default_module(input_shape, n_classes, hidden_layer_sizes)
    if isinstance(module, nn.Module):
        return copy.deepcopy(module)
    built = module(n_features, n_classes)
    if not isinstance(built, nn.Module):
        raise TypeError(f"module({n_features}, {n_classes}) returned {type(built).__name__}, not a torch.nn.Module.")
    return built


class _AddChannel(nn.Module):
    mode_free = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


class Adapter(nn.Module):
    """A residual bottleneck ``x + up(relu(down(x)))`` over the feature (or channel) axis.

    ``up`` starts at zero, so an inserted adapter is the identity until it is trained.

    Parameters
    ----------
    dim : int
        Features (or channels, with ``conv=True``) of the wrapped layer's output.
    width : int
        Bottleneck width.
    conv : bool, default=False
        Use 1x1 convolutions, for ``(N, C, H, W)`` activations.

    Examples
    --------
    >>> x = torch.randn(2, 6)
    >>> bool(torch.equal(Adapter(6, 2)(x), x))  # the identity before training
    True
    """

    mode_free = True  # its forward ignores self.training (pfedest.core.model.needs_training_mode)

    def __init__(self, dim: int, width: int, conv: bool = False):
        super().__init__()
        make = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.down = make(dim, width)
        self.up = make(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class AdaptedLayer(nn.Module):
    """A layer followed by its adapter; replaces the layer in place so ``forward`` code is unchanged.

    Parameters
    ----------
    layer : torch.nn.Module
        The wrapped layer.
    adapter : Adapter
        Applied to the layer's output.

    Examples
    --------
    >>> layer = torch.nn.Linear(3, 4)
    >>> x = torch.randn(2, 3)
    >>> bool(torch.equal(AdaptedLayer(layer, Adapter(4, 2))(x), layer(x)))
    True
    """

    mode_free = True  # its forward ignores self.training (pfedest.core.model.needs_training_mode)

    def __init__(self, layer: nn.Module, adapter: Adapter):
        super().__init__()
        self.layer = layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.layer(x))


def adaptable_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``Linear`` and ``Conv2d`` layers that get an adapter: all but the last layer with parameters.

    The output layer gets none: an adapter there would be a second, personal output layer.

    Parameters
    ----------
    module : torch.nn.Module
        The network.

    Returns
    -------
    list of (str, torch.nn.Module)
        Names and layers, in ``named_modules`` order.

    Examples
    --------
    >>> [name for name, _ in adaptable_layers(MLP(4, 3, (8, 8)))]
    ['net.0', 'net.2']
    """
    with_params = [(n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    candidates = with_params[:-1]
    return [(n, m) for n, m in candidates if isinstance(m, (nn.Linear, nn.Conv2d))]


def adapter_parameter_count(module: nn.Module, width: int) -> int:
    """Number of parameters the adapters of ``insert_adapters(module, width)`` would add.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    width : int
        Bottleneck width.

    Returns
    -------
    int

    Examples
    --------
    >>> adapter_parameter_count(MLP(4, 3, (8,)), 2)  # 8 -> 2 -> 8: 2*8*2 + 2 + 8
    42
    """
    total = 0
    for _, layer in adaptable_layers(module):
        dim = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        total += 2 * dim * width + width + dim
    return total


def insert_adapters(module: nn.Module, width: int) -> nn.Module:
    """Return a copy of ``module`` with an :class:`Adapter` after every adaptable layer.

    Parameters
    ----------
    module : torch.nn.Module
        The network; it is not modified.
    width : int
        Bottleneck width of every adapter.

    Returns
    -------
    torch.nn.Module
        The copy, whose adapter parameters have ``.adapter.`` in their names.

    Examples
    --------
    >>> net = MLP(4, 3, (8,))
    >>> adapted = insert_adapters(net, 2)
    >>> sum(p.numel() for p in adapted.parameters()) - sum(p.numel() for p in net.parameters())
    42
    """
    module = copy.deepcopy(module)
    targets = adaptable_layers(module)
    if not targets:
        raise ValueError(
            f"{type(module).__name__} has no Linear or Conv2d layer before its output layer to put an "
            "adapter after; use split='head' or 'input' for this module."
        )
    for name, layer in targets:
        conv = isinstance(layer, nn.Conv2d)
        dim = layer.out_channels if conv else layer.out_features
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, AdaptedLayer(layer, Adapter(dim, width, conv=conv)))
    return module
