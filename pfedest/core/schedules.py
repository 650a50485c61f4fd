"""Client learning-rate schedules: a factor of the base rate for each round of training."""

from __future__ import annotations

from sklearn.base import BaseEstimator


class ConstantLR(BaseEstimator):
    """The base rate in every round.

    Parameters
    ----------
    None
        It takes no parameters; call it as ``schedule(round_index, n_rounds)`` for the factor.

    Examples
    --------
    >>> ConstantLR()(round_index=7, n_rounds=10)
    1.0
    """

    def __call__(self, round_index: int, n_rounds: int) -> float:
        return 1.0


class LinearLR(BaseEstimator):
    """Linear warm-up from ``1 / (warmup_rounds + 1)`` of the rate, then linear decay to ``final``.

    Parameters
    ----------
    warmup_rounds : int, default=0
    final : float, default=0.0
        Factor reached in the last round.

    Examples
    --------
    >>> [round(LinearLR(warmup_rounds=2)(r, 6), 3) for r in range(6)]
    [0.333, 0.667, 1.0, 0.667, 0.333, 0.0]
    """

    def __init__(self, warmup_rounds: int = 0, final: float = 0.0):
        self.warmup_rounds = warmup_rounds
        self.final = final

    def __call__(self, round_index: int, n_rounds: int) -> float:
        if round_index < self.warmup_rounds:
            return (round_index + 1) / (self.warmup_rounds + 1)
        decay_rounds = max(n_rounds - 1 - self.warmup_rounds, 1)
        progress = min((round_index - self.warmup_rounds) / decay_rounds, 1.0)
        return 1.0 + (self.final - 1.0) * progress


class StepLR(BaseEstimator):
    """Multiply the rate by ``gamma`` every ``step_rounds`` rounds.

    Parameters
    ----------
    step_rounds : int, default=10
    gamma : float, default=0.5

    Examples
    --------
    >>> [StepLR(step_rounds=2, gamma=0.1)(r, 6) for r in range(0, 6, 2)]
    [1.0, 0.1, 0.010000000000000002]
    """

    def __init__(self, step_rounds: int = 10, gamma: float = 0.5):
        self.step_rounds = step_rounds
        self.gamma = gamma

    def __call__(self, round_index: int, n_rounds: int) -> float:
        return self.gamma ** (round_index // self.step_rounds)


SCHEDULES = {"constant": ConstantLR, "linear": LinearLR, "step": StepLR}


def make_schedule(spec) -> object:
    """A schedule object from a name in ``SCHEDULES``, a schedule object, or a callable ``(round, n_rounds)``.

    Parameters
    ----------
    spec : str or callable
        ``"constant"``, ``"linear"`` or ``"step"`` (default settings), or a callable
        ``(round_index, n_rounds) -> factor``, returned as it is.

    Returns
    -------
    callable
        ``schedule(round_index, n_rounds) -> factor`` of the base learning rate.

    Examples
    --------
    >>> make_schedule("step")
    StepLR()
    >>> make_schedule(lambda r, n: 0.5)(3, 10)
    0.5
    """
    if isinstance(spec, str):
        if spec not in SCHEDULES:
            raise ValueError(f"Unknown lr_schedule {spec!r}; expected one of {sorted(SCHEDULES)} or a callable "
                             "(round_index, n_rounds) -> factor.")
        return SCHEDULES[spec]()
    if callable(spec):
        return spec
    raise TypeError(f"lr_schedule must be a name or a callable, got {spec!r}")
