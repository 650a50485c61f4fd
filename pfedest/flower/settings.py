"""A Flower run's training settings: the app's run config, checked, and how it maps to the estimator's.

The run config (``[tool.flwr.app.config]`` in the app's ``pyproject.toml``, changed with
``flwr run --run-config``) is read on both sides into a :class:`RunSettings`. Which estimator
parameters become run-config keys is the registry's (:func:`pfedest.settings.by_role`
``("flower:run_config")``): each is the field of the same name (``n_rounds`` is ``num_rounds``), written
``num-rounds`` in the run config; where TOML cannot hold the estimator's ``None``, a number stands for
it (:data:`NONE_IN_RUN_CONFIG`). :meth:`RunSettings.from_estimator_params` and
:meth:`RunSettings.estimator_params` convert one way and the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Collection, Mapping, Optional, Union

import numpy as np

from ..core.algorithms import ALGORITHMS, StepSizes
from ..core.sampling import n_sampled
from ..core.schedules import SCHEDULES
from ..core.server import ServerOptimizer
from ..core.types import Params
from ..settings import by_role, setting

__all__ = ["RunSettings", "schedule_fields", "server_optimizer_fields", "NONE_IN_RUN_CONFIG", "FIELD_NAMES"]

#: Estimator parameters whose :class:`RunSettings` field has another name.
FIELD_NAMES = {"n_rounds": "num_rounds"}
#: TOML has no ``None``: the run-config value that stands for an estimator parameter's ``None``.
NONE_IN_RUN_CONFIG = {"personal_lr": 0.0, "personal_steps": -1, "shared_steps": -1, "clip_grad_norm": 0.0,
                      "guard": ""}


@dataclass(frozen=True)
class RunSettings:
    """A run's training settings: the app's run config (``[tool.flwr.app.config]``).

    Each field is read from the run-config key of the same name with ``-`` for ``_``
    (``num-rounds``, ``personal-lr``, ...). TOML has no ``None``: ``personal-lr = 0`` means "the
    same as ``lr``", ``personal-steps = -1`` / ``shared-steps = -1`` mean one epoch and
    ``clip-grad-norm = 0`` means no clipping. The settings shared with
    :class:`~pfedest.PartialPersonalizedClassifier` act as in its ``fit``.

    Parameters
    ----------
    num_rounds : int
    algorithm : {"fedalt", "fedsim"}
    lr, personal_lr : float
        Client learning rates of the shared and the personal part.
    batch_size : int
    personal_steps, shared_steps : int
        Local steps (``-1``: one epoch over the node's rows).
    server_lr : float
        Server step on the averaged shared parameters (1.0: plain averaging).
    server_optimizer : {"sgd", "adam"}
        How the server applies the averaged pseudo-gradient (:class:`pfedest.core.server.ServerOptimizer`;
        its state lives in the ServerApp for the run).
    server_momentum : float in [0, 1)
        Server momentum of ``"sgd"``.
    clip_grad_norm : float
        Clip each local step's gradient to this norm (0: no clipping).
    personal_l2 : float
        L2 penalty ``personal_l2 / 2 * ||v - target||^2`` on the personal part.
    personal_l2_target : {"zero", "init"}
        The penalty's target: zero, or the personal part at the start of training (``model.json``'s).
    lr_schedule : {"constant", "linear", "step"}
        Factor of ``lr`` and ``personal_lr`` in each round (:mod:`pfedest.core.schedules`), over
        ``num_rounds`` rounds.
    lr_warmup_rounds, lr_final : int, float
        ``warmup_rounds`` and ``final`` of the ``"linear"`` schedule (:class:`~pfedest.core.schedules.LinearLR`).
    lr_step_rounds, lr_gamma : int, float
        ``step_rounds`` and ``gamma`` of the ``"step"`` schedule (:class:`~pfedest.core.schedules.StepLR`).
    weighting : {"samples", "uniform"}
        Weigh each reply by its ``num-examples`` or equally, as the estimator's ``weighting``.
    clients_per_round : int or float
        Nodes sampled each round: a count, or a fraction in (0, 1] of the connected nodes.
    guard : {"", "validation"}
        ``"validation"``: the estimator's guard (:mod:`pfedest.flower.guard`): the fallback travels
        with the shared parameters, each node holds out ``validation_fraction`` of its rows and
        decides on them; ``""``: none.
    guard_margin : float
        Standard errors by which a node's personal model must beat the fallback to be kept.
    validation_fraction : float in (0, 1)
        The share of a node's rows held out for the guard.
    min_nodes : int
        Nodes that must be connected before a round starts.
    node_wait : float
        Seconds to wait for ``min_nodes`` before the server gives up.
    round_timeout : float
        Seconds the server waits for replies; the round goes on with those that came.
    straggler_wait : float
        Once a round's first reply has come, wait at most this many more seconds for the others
        (0: up to ``round_timeout``). A node that dies mid-round is reported by Flower only when its
        heartbeat expires (about a minute); this bounds what it costs the round.
    evaluate_every : int
        Ask every connected node for its personal accuracy every this many rounds and after the
        last (0: after the last only, -1: never).
    poll_interval : float
        Seconds between the server's checks for replies (0: Flower's own, 3 s).
    seed : int
        Keys node sampling and the nodes' minibatches by ``(seed, round, partition-id)``; the
        estimator's ``random_state`` (an int) gives the same draws.
    keep_rounds : bool
        Also keep the shared parameters of every round (``shared-round-<r>.npz``).
    result_dir : str
        Where the server writes ``shared.npz``, ``rounds.json`` and ``model.json`` (relative paths
        are taken from the SuperLink's working directory).

    Examples
    --------
    >>> s = RunSettings.from_config({"num-rounds": 5, "algorithm": "fedsim", "personal-lr": 0.0})
    >>> s.num_rounds, s.step_sizes(), s.steps()
    (5, StepSizes(shared=0.1, personal=0.1), {'joint': None})
    >>> s = RunSettings.from_config({"num-rounds": 4, "lr-schedule": "step", "lr-step-rounds": 2})
    >>> s.schedule(), [s.step_sizes(server_round=r).shared for r in (1, 3)]
    (StepLR(step_rounds=2), [0.1, 0.05])
    """

    num_rounds: int = 3
    algorithm: str = "fedalt"
    lr: float = 0.1
    personal_lr: float = 0.0
    batch_size: int = 32
    personal_steps: int = -1
    shared_steps: int = -1
    server_lr: float = 1.0
    server_optimizer: str = "sgd"
    server_momentum: float = 0.0
    clip_grad_norm: float = 0.0
    personal_l2: float = 0.0
    personal_l2_target: str = "zero"
    lr_schedule: str = "constant"
    lr_warmup_rounds: int = 0
    lr_final: float = 0.0
    lr_step_rounds: int = 10
    lr_gamma: float = 0.5
    weighting: str = "samples"
    clients_per_round: Union[int, float] = 1.0
    guard: str = ""
    guard_margin: float = 0.5
    validation_fraction: float = 0.1
    min_nodes: int = 2
    node_wait: float = 300.0
    round_timeout: float = 600.0
    straggler_wait: float = 0.0
    evaluate_every: int = 0
    poll_interval: float = 0.0
    seed: int = 0
    keep_rounds: bool = False
    result_dir: str = "pfedest-result"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Read and check the settings from a run config (unknown keys are left alone)."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                values[f.name] = config[key]
        settings = cls(**values)
        settings._check()
        return settings

    @classmethod
    def from_estimator_params(cls, params: Mapping[str, Any]) -> "RunSettings":
        """The settings that train as an estimator with ``params`` (``get_params(deep=False)``) does.

        The registry's ``"flower:run_config"`` parameters are read (a ``lr_schedule`` that is not one
        of :data:`pfedest.core.schedules.SCHEDULES` gives ``"constant"``: see :func:`schedule_fields`;
        a :class:`~pfedest.core.server.ServerOptimizer` gives its kind, ``lr`` and ``momentum``: see
        :func:`server_optimizer_fields`), and an int ``random_state`` is the ``seed``; the other
        fields keep their defaults. Not checked: :meth:`from_config` of :meth:`to_config` checks.

        Examples
        --------
        >>> s = RunSettings.from_estimator_params({"n_rounds": 7, "personal_steps": None, "lr": 1,
        ...                                        "random_state": 3})
        >>> s.num_rounds, s.personal_steps, s.lr, s.seed
        (7, -1, 1.0, 3)
        """
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for name in by_role("flower:run_config"):
            if name not in params:
                continue
            value = params[name]
            if value is None:
                value = NONE_IN_RUN_CONFIG[name]
            values[FIELD_NAMES.get(name, name)] = value
        # Parameters that stand for several fields.
        if "lr_schedule" in values:
            values.update(schedule_fields(values["lr_schedule"]) or {"lr_schedule": "constant"})
        if "server_optimizer" in values:
            values.update(server_optimizer_fields(values["server_optimizer"], values.get("server_lr", 1.0),
                                                  values.get("server_momentum", 0.0)))
        seed = params.get("random_state")
        values["seed"] = int(seed) if isinstance(seed, (int, np.integer)) else 0
        for name, value in values.items():
            if isinstance(value, np.generic):
                value = value.item()
            if types[name] in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        return cls(**values)

    def to_config(self) -> dict:
        """The run config: every field, under its key (``-`` for ``_``).

        Examples
        --------
        >>> RunSettings(num_rounds=4).to_config()["num-rounds"]
        4
        """
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def estimator_params(self, present: Optional[Collection[str]] = None) -> dict:
        """The estimator parameters of the registry's ``"flower:run_config"`` kind that train as these
        settings do: the inverse of :meth:`from_estimator_params`.

        A schedule with its default parameters is given by name, other ones as the schedule object;
        server momentum as a :class:`~pfedest.core.server.ServerOptimizer`, the server optimizer by
        name with ``server_lr`` otherwise.
        With ``present`` (field names), only the parameters whose field is among them: the settings
        that a ``rounds.json`` written by an older release holds.

        Examples
        --------
        >>> p = RunSettings(personal_lr=0.0, shared_steps=2, lr_schedule="step", lr_gamma=0.2).estimator_params()
        >>> p["personal_lr"], p["shared_steps"], p["lr_schedule"]
        (None, 2, StepLR(gamma=0.2))
        """
        params = {}
        for name in by_role("flower:run_config"):
            if present is not None and FIELD_NAMES.get(name, name) not in present:
                continue
            if name == "lr_schedule":
                schedule = self.schedule()
                default = schedule.get_params() == type(schedule)().get_params()
                params[name] = self.lr_schedule if default else schedule
                continue
            value = getattr(self, FIELD_NAMES.get(name, name))
            params[name] = None if name in NONE_IN_RUN_CONFIG and value == NONE_IN_RUN_CONFIG[name] else value
        if params.get("server_momentum"):  # the estimator takes server momentum as a ServerOptimizer
            params.update(server_optimizer=ServerOptimizer(params.get("server_optimizer", "sgd"),
                                                           lr=params.get("server_lr", 1.0),
                                                           momentum=params["server_momentum"]),
                          server_lr=1.0, server_momentum=0.0)
        return params

    def _check(self):
        def bad(name, rule):
            key = name.replace("_", "-")
            raise ValueError(f"Run config {key}={getattr(self, name)!r} is invalid: {rule}.")

        def integer(value):  # a bool is an int to Python, but a typo in a run config
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name, low, rule in (
                ("num_rounds", 1, "expected a positive integer"), ("batch_size", 1, "expected a positive integer"),
                ("min_nodes", 1, "expected a positive integer"), ("seed", 0, "expected an integer >= 0"),
                ("personal_steps", -1, "expected an integer >= 0, or -1 for one epoch"),
                ("shared_steps", -1, "expected an integer >= 0, or -1 for one epoch"),
                ("lr_warmup_rounds", 0, "expected an integer >= 0"), ("lr_step_rounds", 1, "expected an integer >= 1"),
                ("evaluate_every", -1, "expected an integer >= 0, or -1 for never")):
            if not integer(getattr(self, name)) or getattr(self, name) < low:
                bad(name, rule)
        for name in ("algorithm", "weighting", "server_optimizer", "personal_l2_target", "lr_schedule"):
            choices = _choices(name)
            if getattr(self, name) not in choices:
                bad(name, f"expected one of {choices}")
        for name in ("lr", "server_lr", "round_timeout", "node_wait", "lr_gamma"):
            if not number(getattr(self, name)) or getattr(self, name) <= 0:
                bad(name, "expected a positive number")
        for name in ("personal_lr", "poll_interval", "straggler_wait", "clip_grad_norm", "personal_l2", "lr_final"):
            if not number(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "expected a number >= 0")
        if not number(self.server_momentum) or not 0 <= self.server_momentum < 1:
            bad("server_momentum", "expected a number in [0, 1)")
        m = self.clients_per_round
        if not number(m) or m <= 0 or (isinstance(m, float) and m > 1):
            bad("clients_per_round", "expected a count >= 1 or a fraction in (0, 1]")
        if self.guard not in ("", "validation"):
            bad("guard", "expected '' (none) or 'validation'")
        if not number(self.guard_margin) or self.guard_margin < 0:
            bad("guard_margin", "expected a number >= 0")
        if not number(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            bad("validation_fraction", "expected a number in (0, 1)")
        if not isinstance(self.keep_rounds, bool):
            bad("keep_rounds", "expected true or false")
        if not isinstance(self.result_dir, str) or not self.result_dir:
            bad("result_dir", "expected a path")
        self.steps()  # raises when the algorithm would take no local step

    def step_sizes(self, server_round: Optional[int] = None) -> StepSizes:
        """The client learning rates: in round ``server_round`` (from 1) scaled by the schedule, as
        the estimator's ``fit`` scales them in that round; the base rates without it."""
        factor = 1.0 if server_round is None else float(self.schedule()(server_round - 1, self.num_rounds))
        return StepSizes(shared=float(self.lr) * factor, personal=float(self.personal_lr or self.lr) * factor)

    def schedule(self):
        """The learning-rate schedule (a :mod:`pfedest.core.schedules` object) with its run-config parameters."""
        cls = SCHEDULES[self.lr_schedule]
        return cls(**{p: getattr(self, f"lr_{p}") for p in cls().get_params()})

    def step_options(self, anchor: Optional[Params] = None) -> dict:
        """The options of every local step (:func:`~pfedest.core.engine.make_engine`'s ``step_options``):
        gradient clipping and the personal L2 penalty, pulling towards ``anchor`` with target ``"init"``."""
        if self.personal_l2_target == "init" and anchor is None:
            raise ValueError("personal-l2-target='init' needs the personal part at the start of training (anchor).")
        return dict(clip=float(self.clip_grad_norm) or None, personal_l2=float(self.personal_l2),
                    personal_anchor=anchor if self.personal_l2_target == "init" else None)

    def make_server_optimizer(self) -> ServerOptimizer:
        """A fresh server optimizer; the strategy keeps one for the whole run."""
        return ServerOptimizer(self.server_optimizer, lr=float(self.server_lr), momentum=float(self.server_momentum))

    def steps(self) -> dict:
        """Step count of each of the algorithm's streams (``None``: one epoch), as the estimator has them."""
        def block(steps):
            return None if steps == -1 else steps

        return ALGORITHMS[self.algorithm].steps(block(self.personal_steps), block(self.shared_steps))

    def n_sampled(self, n_nodes: int) -> int:
        """Nodes to sample out of ``n_nodes`` connected ones."""
        return n_sampled(self.clients_per_round, n_nodes)


def _choices(name: str) -> list:
    """The names the registry accepts for the estimator parameter ``name`` (its ``StrOptions``)."""
    return sorted(next(c.options for c in setting(name).constraints if hasattr(c, "options")))


def schedule_fields(schedule) -> Optional[dict]:
    """The :class:`RunSettings` fields of an estimator's ``lr_schedule``, or ``None`` if it cannot travel.

    Parameters
    ----------
    schedule : str or schedule object or callable
        A name in :data:`pfedest.core.schedules.SCHEDULES`, or an instance of one of those classes
        (its parameters become ``lr_<parameter>`` fields); anything else (a user's callable, a
        subclass) cannot be rebuilt on the nodes.

    Returns
    -------
    dict or None

    Examples
    --------
    >>> from pfedest.core.schedules import StepLR
    >>> schedule_fields(StepLR(step_rounds=3)), schedule_fields("linear"), schedule_fields(print)
    ({'lr_schedule': 'step', 'lr_gamma': 0.5, 'lr_step_rounds': 3}, {'lr_schedule': 'linear'}, None)
    """
    if isinstance(schedule, str):
        return {"lr_schedule": schedule} if schedule in SCHEDULES else None
    name = next((n for n, cls in SCHEDULES.items() if type(schedule) is cls), None)
    if name is None:
        return None
    return {"lr_schedule": name, **{f"lr_{p}": v for p, v in schedule.get_params().items()}}


def server_optimizer_fields(server_optimizer, lr: float = 1.0, momentum: float = 0.0) -> dict:
    """The :class:`RunSettings` fields of an estimator's server optimizer.

    Parameters
    ----------
    server_optimizer : str or ServerOptimizer
        A name (with the estimator's ``server_lr`` and ``server_momentum``), or a
        :class:`~pfedest.core.server.ServerOptimizer` whose kind, ``lr`` and ``momentum`` are taken (its
        ``betas`` and ``eps`` have no run-config key: :func:`~pfedest.flower.model_file.write_model`
        warns when they are not the defaults).
    lr, momentum : float
        The estimator's ``server_lr`` and ``server_momentum``.

    Returns
    -------
    dict
        ``server_optimizer``, ``server_lr`` and ``server_momentum``.

    Examples
    --------
    >>> server_optimizer_fields(ServerOptimizer("sgd", lr=0.5, momentum=0.9))
    {'server_optimizer': 'sgd', 'server_lr': 0.5, 'server_momentum': 0.9}
    >>> server_optimizer_fields("adam", lr=0.01)
    {'server_optimizer': 'adam', 'server_lr': 0.01, 'server_momentum': 0.0}
    """
    if isinstance(server_optimizer, ServerOptimizer):
        return {"server_optimizer": server_optimizer.kind, "server_lr": server_optimizer.lr,
                "server_momentum": server_optimizer.momentum}
    return {"server_optimizer": server_optimizer, "server_lr": lr, "server_momentum": momentum}
