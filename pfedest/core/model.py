"""A network as a pure function of parameter dicts: the training loss and per-client predictions.

The loss is a :class:`Criterion` the estimator hands over (cross-entropy for the classifier, squared
error or Huber for the regressor): the core knows no estimator."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from .reparametrize import ModuleCall
from .types import Params


def squared_error(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Half the squared error of each row, averaged over its outputs (scikit-learn's MLP convention).

    Called as :func:`torch.nn.functional.cross_entropy` is: ``reduction="none"`` gives one loss a row,
    ``"mean"`` their mean. The half makes the gradient the residual.

    Examples
    --------
    >>> squared_error(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), reduction="none")
    tensor([1.2500])
    """
    rows = 0.5 * (outputs - targets).square().reshape(len(outputs), -1).mean(1)
    return rows if reduction == "none" else rows.mean()


def huber(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", delta: float = 1.0) -> torch.Tensor:
    """Huber loss of each row, averaged over its outputs: half the squared error within ``delta`` of the
    target, linear beyond (outliers pull with a bounded gradient).

    Examples
    --------
    >>> huber(torch.tensor([[0.5, 3.0]]), torch.tensor([[0.0, 0.0]]), reduction="none", delta=1.0)
    tensor([1.3125])
    """
    rows = F.huber_loss(outputs, targets, reduction="none", delta=delta).reshape(len(outputs), -1).mean(1)
    return rows if reduction == "none" else rows.mean()


@dataclass(frozen=True)
class Criterion:
    """What a network is trained to minimize: a loss of outputs and targets, and the loss of a blind guess.

    Parameters
    ----------
    function : callable
        ``function(outputs, targets, reduction="mean"|"none")``, as :func:`torch.nn.functional.cross_entropy`.
    guess : float
        The loss of an uninformed model (uniform class probabilities, the mean of standardized
        targets): the scale against which a training loss is judged to have diverged.

    Examples
    --------
    >>> criterion = Criterion(squared_error, guess=0.5)
    >>> criterion.function(torch.zeros(2, 1), torch.ones(2, 1)).item()
    0.5
    """

    function: Callable
    guess: float


def cross_entropy(n_classes: int) -> Criterion:
    """The classifier's :class:`Criterion`: cross-entropy of logits and class indices.

    Examples
    --------
    >>> round(cross_entropy(4).guess, 4)
    1.3863
    """
    return Criterion(F.cross_entropy, guess=math.log(max(n_classes, 2)))


#: Layers whose forward pass ignores ``training`` (matched by exact type: a subclass may not).
MODE_FREE = (nn.Linear, nn.Bilinear, nn.Identity, nn.Flatten, nn.Unflatten, nn.Sequential, nn.ModuleList,
             nn.ModuleDict, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Embedding, nn.LayerNorm, nn.ReLU, nn.LeakyReLU,
             nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softmax, nn.LogSoftmax)


def needs_training_mode(module: nn.Module) -> bool:
    """Whether switching ``module`` between training and evaluation mode can change what it computes:
    false only when every layer is one of :data:`MODE_FREE` or a class that says ``mode_free = True``
    in its own body (pfedest's networks do; a subclass must say it again). The switch walks every
    layer (70 us for a three-layer MLP), a cost a round of one client feels.

    Examples
    --------
    >>> needs_training_mode(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    False
    >>> needs_training_mode(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()))
    True
    """
    return not all(type(m) in MODE_FREE or vars(type(m)).get("mode_free") is True for m in module.modules())


@contextmanager
def training(module: nn.Module, seed: Optional[int] = None, device=None):
    """``module`` in training mode for the block, then in the mode it was in; with ``seed``, its random
    layers (dropout) draw from ``device``'s generator seeded with it, restored afterwards.

    A fit's network is kept in evaluation mode (dropout off, batch norm on its running statistics) for
    every prediction and loss it reports; only the clients' local steps run in training mode, each
    round seeded from the fit's seed so that ``random_state`` fixes the dropout masks too.

    Examples
    --------
    >>> net = torch.nn.Dropout().eval()
    >>> with training(net, seed=0):
    ...     first = net(torch.ones(8))
    >>> with training(net, seed=0):
    ...     torch.equal(net(torch.ones(8)), first), net.training
    (True, True)
    >>> net.training
    False
    """
    was = module.training
    module.train()
    generator = None if seed is None else _generator(torch.device(device if device is not None else "cpu"))
    state = None if generator is None else generator.get_state()
    try:
        if generator is not None:
            generator.manual_seed(seed % 2**64)
        yield module
    finally:
        module.train(was)
        if generator is not None:
            generator.set_state(state)


def _generator(device: torch.device) -> Optional[torch.Generator]:
    """The device's default generator itself (torch.manual_seed would seed every backend: 0.2 ms a
    call); ``None`` on other devices (mps), whose dropout masks are then not seeded."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    if device.type == "cpu":
        return torch.random.default_generator
    return None


def make_loss(module: nn.Module, buffers: Params, X: torch.Tensor, y: torch.Tensor, criterion: Criterion = None):
    """The loss of ``module`` on rows ``X[idx]`` (cross-entropy unless ``criterion``), weighted by a 0/1 ``mask``.

    Returns ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``, the form the local
    updates in :mod:`pfedest.core.algorithms` take. ``X`` and ``y`` are all clients' rows; the loss
    reads only the rows it is given indices of. ``mask=None`` counts every row: its attribute
    ``mask_optional`` tells :class:`~pfedest.core.engine.LoopEngine` it may pass that.

    Parameters
    ----------
    module : torch.nn.Module
        The network; its parameters are replaced by the dicts the loss is called with.
    buffers : dict of str to Tensor
        The module's buffers.
    X : Tensor of shape (n_rows, ...)
        All clients' rows.
    y : Tensor of shape (n_rows, ...)
        Targets: class indices (int64) for cross-entropy, values for a regression criterion.
    criterion : Criterion or None, default=None
        The loss; ``None`` is cross-entropy.

    Returns
    -------
    callable
        ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> loss = make_loss(net, {}, torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> shared = {"weight": torch.zeros(2, 3)}
    >>> personal = {"bias": torch.zeros(2)}
    >>> mean, (total, count) = loss(shared, personal, torch.arange(4), torch.tensor([1., 1., 1., 0.]))
    >>> round(mean.item(), 4), count.item()  # log(2) on each of the 3 real rows
    (0.6931, 3.0)
    """

    function = criterion.function if criterion is not None else F.cross_entropy
    call = ModuleCall(module)  # functional_call's result at a fraction of its cost per step

    def loss(shared: Params, personal: Params, idx: torch.Tensor, mask: Optional[torch.Tensor]):
        logits = call({**buffers, **shared, **personal}, X[idx])
        if mask is None:  # every row real: the plain mean skips the masked reduction's five operations
            mean = function(logits, y[idx])
            count = torch.tensor(float(len(idx)), dtype=mean.dtype, device=mean.device)
            return mean, (mean.detach() * count, count)
        rows = function(logits, y[idx], reduction="none")
        total = (rows * mask).sum()
        count = mask.sum()
        return total / count.clamp_min(1.0), (total.detach(), count)

    loss.mask_optional = True  # the loop engine may pass mask=None for a minibatch without padding
    return loss


def personalized_logits(module: nn.Module, buffers: Params, shared: Params, personal: Params,
                        X: torch.Tensor, rows_personal: torch.Tensor, max_elements: int = 2**24) -> torch.Tensor:
    """Logits of each row of ``X`` under its own client's personal parameters.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    buffers : dict of str to Tensor
        Its buffers.
    shared : dict of str to Tensor
        The shared parameters.
    personal : dict of str to Tensor
        Personal parameters stacked on a leading axis.
    X : Tensor of shape (n_rows, ...)
        The rows.
    rows_personal : Tensor of int64, shape (n_rows,)
        For each row, the index into that axis.
    max_elements : int
        Rows are processed in chunks whose gathered personal parameters hold at most this many
        numbers (at least one row per chunk).

    Returns
    -------
    Tensor of shape (n_rows, n_classes)

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> shared = {"weight": torch.zeros(2, 3)}
    >>> personal = {"bias": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}  # two clients
    >>> personalized_logits(net, {}, shared, personal, torch.zeros(2, 3), torch.tensor([1, 0]))
    tensor([[0., 1.],
            [1., 0.]])
    """
    call = ModuleCall(module)  # also takes the module's lock: predictions from several threads take turns
    if not personal:
        return call({**buffers, **shared}, X)

    def one_row(v: Params, x: torch.Tensor) -> torch.Tensor:
        return call({**buffers, **shared, **v}, x[None])[0]

    per_row = sum(p[0].numel() for p in personal.values())
    chunk = max(1, max_elements // max(per_row, 1))
    out = []
    for start in range(0, len(X), chunk):
        rows = rows_personal[start:start + chunk]
        v = {k: p[rows] for k, p in personal.items()}
        out.append(vmap(one_row)(v, X[start:start + chunk]))
    return torch.cat(out)


def mean_loss(module: nn.Module, buffers: Params, shared: Params, personal: Params, X: torch.Tensor,
              y: torch.Tensor, rows_personal: torch.Tensor, criterion: Criterion = None, *,
              call: Optional[ModuleCall] = None) -> float:
    """Mean loss (cross-entropy unless ``criterion``) of each row of ``X`` under its own client's model
    (as :func:`personalized_logits`). Rows that come in runs of at most :data:`FEW_CLIENTS`
    clients are scored one run at a time with that client's parameters (through ``call``, a
    :class:`~pfedest.core.reparametrize.ModuleCall` of ``module``, made here if not given): cheaper
    than the per-row pass.

    Examples
    --------
    >>> net = torch.nn.Linear(1, 2)
    >>> shared, personal = {"weight": torch.zeros(2, 1)}, {"bias": torch.zeros(1, 2)}
    >>> round(mean_loss(net, {}, shared, personal, torch.zeros(3, 1), torch.tensor([0, 1, 1]),
    ...                 torch.zeros(3, dtype=torch.int64)), 4)  # log 2: both classes equally likely
    0.6931
    """
    if len(X) == 0:
        return float("nan")
    function = criterion.function if criterion is not None else F.cross_entropy
    with torch.no_grad():
        clients, lengths = torch.unique_consecutive(rows_personal, return_counts=True)
        if not personal or len(clients) > FEW_CLIENTS:
            return float(function(personalized_logits(module, buffers, shared, personal, X, rows_personal), y))
        call, total, start = call or ModuleCall(module), 0.0, 0
        for client, n in zip(clients.tolist(), lengths.tolist()):
            end = start + n
            outputs = call({**buffers, **shared, **{k: p[client] for k, p in personal.items()}}, X[start:end])
            total = total + function(outputs, y[start:end], reduction="none").sum()
            start = end
        return float(total / len(X))


#: :func:`mean_loss` runs one forward pass per client for rows of at most this many clients (in
#: runs): cheaper than the per-row batched pass for a round of one or two clients.
FEW_CLIENTS = 4


def linear_loss(X: torch.Tensor, y: torch.Tensor):
    """The squared error of the smallest personalized model, ``x @ u["w"] + v["b"]``, on rows ``X[idx]``.

    A shared weight and a personal bias, in the functional form every algorithm and engine takes:
    ``loss(shared, personal, idx, mask) -> (mean, (sum, count))``. The examples of the core use it,
    so that their numbers can be checked by hand.

    Parameters
    ----------
    X : Tensor of shape (n_rows, n_features)
    y : Tensor of shape (n_rows,)

    Returns
    -------
    callable

    Examples
    --------
    >>> loss = linear_loss(torch.ones(2, 1), torch.full((2,), 2.0))
    >>> mean, (total, count) = loss({"w": torch.zeros(1)}, {"b": torch.zeros(())}, torch.arange(2), torch.ones(2))
    >>> mean.item(), total.item(), count.item()
    (4.0, 8.0, 2.0)
    """
    def loss(shared, personal, idx, mask):
        err = (X[idx] @ shared["w"] + personal["b"] - y[idx]) ** 2 * mask
        return err.sum() / mask.sum().clamp(min=1), (err.sum().detach(), mask.sum())

    return loss
