"""The estimator's parameters, written once: name, default, accepted values, and what each one changes.

Every part of pfedest that needs to know the parameters reads this registry: the estimator (its
``_parameter_constraints``; a test holds its ``__init__`` to the same names and defaults), the
checkpoint checks (a resumed fit must have the same :data:`RESUME_CHECKED` settings) and the Flower
app (which settings become run-config keys, which it ignores by design). :data:`SETTINGS` are every
estimator's; :data:`HEAD_SETTINGS` those of one head only (the regressor's ``loss``), which follow
the shared ones in that head's ``__init__`` and which the other head does not accept.

A setting's ``role`` says what it changes:

- ``"model"``: the network (``module``, ``split``, ``hidden_layer_sizes``);
- ``"training"``: what a round computes (learning rates, steps, sampling, the seed, ...);
- ``"plan"``: how many rounds each stage runs;
- ``"execution"``: how rounds run, computing the same result to float tolerance (engine, device);
- ``"session"``: nothing the parameters depend on (progress bar, callbacks, warm starts, predict).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from torch import nn

from .core.engine import ENGINES
from .core.precision import PRECISIONS
from .core.schedules import SCHEDULES
from .core.server import SERVER_OPTIMIZERS, ServerOptimizer
from .nn.splits import NAMED_SPLITS
from .privacy import DifferentialPrivacy

__all__ = ["Setting", "SETTINGS", "HEAD_SETTINGS", "RESUME_CHECKED", "names", "defaults", "parameter_constraints",
           "by_role", "head_resume_checked"]

ROLES = ("model", "training", "plan", "execution", "session")


@dataclass(frozen=True)
class Setting:
    """One estimator parameter.

    Parameters
    ----------
    name : str
        The ``__init__`` argument.
    default : object
        Its default value.
    constraints : list
        What scikit-learn's parameter validation accepts (``_parameter_constraints``).
    role : {"model", "training", "plan", "execution", "session"}
        What it changes (see the module's docstring).
    flower : {"model", "run_config", "ignored", "unsupported"}
        How the Flower app treats it: part of ``model.json``, a run-config key, ignored by design (it
        does not change what is computed), or not available (exporting a non-default value warns).
    """

    name: str
    default: Any
    constraints: list
    role: str
    flower: str


def _positive_int(low=1):
    return Interval(Integral, low, None, closed="left")


_POSITIVE = Interval(Real, 0, None, closed="neither")

#: In ``__init__`` order (the first, ``module``, positional; the rest keyword-only).
SETTINGS: tuple[Setting, ...] = (
    Setting("module", None, [None, nn.Module, callable], "model", "model"),
    Setting("split", "head", [StrOptions(set(NAMED_SPLITS)), list, tuple, callable, HasMethods(["resolve"])],
            "model", "model"),
    Setting("algorithm", "fedalt", [StrOptions({"fedalt", "fedsim"})], "training", "run_config"),
    # calibrated on benchmarks/calibrate_defaults.py's suite (docs/guide/defaults.rst): the stopping
    # rule ends most fits long before the budget
    Setting("n_rounds", 300, [_positive_int()], "plan", "run_config"),
    # the stopping rule decides how many of the n_rounds run: a resumed fit must keep it
    Setting("tol", 1e-4, [None, Interval(Real, 0, None, closed="left")], "training", "unsupported"),
    Setting("n_iter_no_change", 10, [_positive_int()], "training", "unsupported"),
    Setting("early_stopping", False, ["boolean"], "training", "unsupported"),
    # a Flower node holds out this share of its rows for the guard
    Setting("validation_fraction", 0.1, [Interval(Real, 0, 1, closed="neither")], "training", "run_config"),
    # the guard holds out validation rows and decides after training: a resumed fit must keep it
    Setting("guard", None, [None, StrOptions({"validation"})], "training", "run_config"),
    Setting("guard_margin", 0.5, [Interval(Real, 0, None, closed="left")], "training", "run_config"),
    # train again on every row once the guard has decided (as scikit-learn refits after a search):
    # measured better than no refit and than a personal-only pass (docs/guide/guard.rst); a Flower
    # node does not refit
    Setting("guard_refit", True, ["boolean"], "training", "unsupported"),
    Setting("clients_per_round", 10, [_positive_int(), Interval(Real, 0, 1, closed="right")], "training",
            "run_config"),
    Setting("personal_steps", None, [None, _positive_int(0)], "training", "run_config"),
    Setting("shared_steps", None, [None, _positive_int(0)], "training", "run_config"),
    Setting("lr", 0.3, [_POSITIVE], "training", "run_config"),
    Setting("personal_lr", None, [None, _POSITIVE], "training", "run_config"),
    Setting("batch_size", 32, [_positive_int()], "training", "run_config"),
    Setting("server_lr", 1.0, [_POSITIVE], "training", "run_config"),
    Setting("hidden_layer_sizes", (64, 64), [tuple, list], "model", "model"),
    Setting("engine", "auto", [StrOptions(set(ENGINES))], "execution", "ignored"),
    Setting("max_clients_per_batch", None, [None, _positive_int()], "execution", "ignored"),
    # "auto": compile on CUDA when the fit is long enough to pay (pfedest.core.compiling.choose_compile)
    Setting("compile", "auto", [StrOptions({"auto"}), "boolean"], "execution", "ignored"),
    Setting("device", "auto", [str, torch.device], "execution", "ignored"),
    # bf16 changes the results beyond float32 rounding (a training setting); the Flower node trains in fp32
    Setting("precision", "fp32", [StrOptions(set(PRECISIONS))], "training", "unsupported"),
    Setting("unseen_clients", "error", [StrOptions({"error", "average"})], "session", "ignored"),
    Setting("pretrain_rounds", 0, [_positive_int(0)], "plan", "unsupported"),
    Setting("finetune_epochs", 0, [_positive_int(0)], "plan", "unsupported"),
    Setting("server_optimizer", "sgd", [StrOptions(set(SERVER_OPTIMIZERS)), ServerOptimizer], "training",
            "run_config"),
    Setting("server_momentum", 0.0, [Interval(Real, 0, 1, closed="left")], "training", "run_config"),
    Setting("weighting", "samples", [StrOptions({"samples", "uniform"})], "training", "run_config"),
    Setting("lr_schedule", "constant", [StrOptions(set(SCHEDULES)), callable], "training", "run_config"),
    Setting("clip_grad_norm", None, [None, _POSITIVE], "training", "run_config"),
    Setting("personal_l2", 0.0, [Interval(Real, 0, None, closed="left")], "training", "run_config"),
    Setting("personal_l2_target", "zero", [StrOptions({"zero", "init"})], "training", "run_config"),
    # user-level DP on the shared part (pfedest.privacy); model.json carries it to the Flower app's
    # nodes (which clip) and strategy (which adds the noise and counts epsilon: pfedest.flower.privacy)
    Setting("privacy", None, [None, DifferentialPrivacy], "training", "model"),
    # the Flower app runs no callbacks: an EarlyStopping or a Checkpoint that silently does nothing
    # there deserves a warning
    Setting("callbacks", None, [None, list, tuple], "session", "unsupported"),
    Setting("warm_start", False, ["boolean"], "session", "ignored"),
    Setting("verbose", 0, ["verbose"], "session", "ignored"),
    # also the run config's seed (an int random_state keys the draws as the app's seed does)
    Setting("random_state", None, ["random_state"], "training", "model"),
)

#: Parameters of one head only, after the shared ones in its ``__init__``: a classifier has no loss to
#: choose (cross-entropy), so it neither shows nor accepts these. Keyed by the head's name.
HEAD_SETTINGS: dict[str, tuple[Setting, ...]] = {
    "classifier": (),
    "regressor": (
        Setting("loss", "squared_error", [StrOptions({"squared_error", "huber"})], "training", "unsupported"),
        # in standard deviations of y (the regressor standardizes it); 1.35 is HuberRegressor's default,
        # 95 % as efficient as least squares under Gaussian noise
        Setting("epsilon", 1.35, [_POSITIVE], "training", "unsupported"),
        # scikit-learn's GaussianProcessRegressor name; on by default here (see pfedest.regressor)
        Setting("normalize_y", True, ["boolean"], "training", "unsupported"),
    ),
}

_BY_NAME = {s.name: s for s in SETTINGS + sum(HEAD_SETTINGS.values(), ())}

#: Settings a checkpoint records and a resumed fit must share: any other value would end with
#: parameters no uninterrupted run gives. (The plan is checked on its own; execution settings may
#: change between the runs: a fit may move from loop to vmap, or CPU to GPU, when resumed.)
RESUME_CHECKED = tuple(s.name for s in SETTINGS if s.role in ("model", "training"))


def _settings(head: str = "classifier") -> tuple[Setting, ...]:
    if head not in HEAD_SETTINGS:
        raise ValueError(f"Unknown head {head!r}; expected one of {sorted(HEAD_SETTINGS)}.")
    return SETTINGS + HEAD_SETTINGS[head]


def names(head: str = "classifier") -> list[str]:
    """The parameter names of the estimator ``head`` (``"classifier"`` or ``"regressor"``), in ``__init__`` order.

    Examples
    --------
    >>> names()[:3], names("regressor")[-3:]
    (['module', 'split', 'algorithm'], ['loss', 'epsilon', 'normalize_y'])
    """
    return [s.name for s in _settings(head)]


def defaults(head: str = "classifier") -> dict:
    """Each parameter's default.

    Examples
    --------
    >>> defaults()["lr"], defaults()["split"], defaults("regressor")["loss"]
    (0.3, 'head', 'squared_error')
    """
    return {s.name: s.default for s in _settings(head)}


def parameter_constraints(head: str = "classifier") -> dict:
    """scikit-learn's ``_parameter_constraints`` for the estimator ``head``."""
    return {s.name: list(s.constraints) for s in _settings(head)}


def head_resume_checked(params) -> tuple[str, ...]:
    """The head-only settings among ``params`` (names) that a resumed fit must share.

    Examples
    --------
    >>> head_resume_checked({"lr": 0.3, "loss": "huber", "epsilon": 1.0})
    ('loss', 'epsilon')
    """
    return tuple(s.name for head in HEAD_SETTINGS.values() for s in head
                 if s.role in ("model", "training") and s.name in params)


def by_role(role: str) -> tuple[str, ...]:
    """The names of the settings with ``role``; also takes a Flower treatment as ``"flower:<kind>"``.

    Examples
    --------
    >>> by_role("plan")
    ('n_rounds', 'pretrain_rounds', 'finetune_epochs')
    >>> by_role("flower:unsupported")[-3:]
    ('pretrain_rounds', 'finetune_epochs', 'callbacks')
    """
    if role.startswith("flower:"):
        kind = role.split(":", 1)[1]
        return tuple(s.name for s in SETTINGS if s.flower == kind)
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; expected one of {ROLES} or 'flower:<kind>'.")
    return tuple(s.name for s in SETTINGS if s.role == role)


def setting(name: str) -> Setting:
    """The :class:`Setting` called ``name``."""
    return _BY_NAME[name]
