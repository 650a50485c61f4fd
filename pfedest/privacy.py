"""User-level differential privacy on what clients send: the shared part (DP-FedAvg).

:class:`DifferentialPrivacy` is the estimator's ``privacy`` parameter. With it, every round that
aggregates (training, and pre-training if any) runs DP-FedAvg (McMahan, Ramage, Talwar and Zhang,
"Learning differentially private recurrent language models", ICLR 2018) on the shared parameters:

1. clients are sampled as the accountant assumes: each independently with probability
   ``q = clients_per_round / n_clients`` (``sampling="poisson"``), or exactly ``clients_per_round``
   of them without replacement (``sampling="fixed"``);
2. each sampled client's update of the shared part ``u_i - u`` is clipped to norm ``clip``
   (:mod:`pfedest.core.privacy`, one batched computation per chunk of clients);
3. the server adds Gaussian noise of standard deviation ``noise_multiplier * clip`` to the sum and
   divides by the expected number of clients; its optimizer steps on that noisy mean.

The personal parameters are never clipped, noised or sent. The privacy budget is counted by
Google's ``dp-accounting`` library (an RDP or PLD accountant): ``history_`` holds the ``epsilon``
spent after every private round at the given ``delta``. :class:`PrivateTraining` is the fit
loop's side of it: sampling, the round's aggregator, the accountant.

``dp-accounting`` is an optional dependency (``pip install pfedest[privacy]``), imported only
when a fit is private.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .core.privacy import PrivateSum, next_clip, update_noise_multiplier
from .core.sampling import RoundKeys

__all__ = ["DifferentialPrivacy", "PrivateTraining", "round_event", "epsilon_of", "calibrate_noise", "check_config"]

#: The stream of :class:`~pfedest.core.sampling.RoundKeys` that keys the server's noise (the
#: algorithms' minibatch streams are 0 and 1).
NOISE_STREAM = 1_000_003


def _accounting():
    try:
        import dp_accounting
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Differential privacy needs Google's dp-accounting library: pip install "
                          "'pfedest[privacy]' (or pip install dp-accounting).") from exc
    return dp_accounting


class DifferentialPrivacy(BaseEstimator):
    """User-level differential privacy of the shared part (DP-FedAvg), for an estimator's ``privacy``.

    Give either ``noise_multiplier`` or ``target_epsilon`` (which sets the noise multiplier for
    the rounds planned, ``pretrain_rounds + n_rounds``). The guarantee is for the shared
    parameters the server releases, about any one client's whole data (user level), with
    ``clients_per_round / n_clients`` as the sampling rate.

    Parameters
    ----------
    clip : float, default=1.0
        Each sampled client's shared update is clipped to this L2 norm (the initial norm with
        ``target_quantile``). ``inf`` turns clipping off, and is only accepted with
        ``noise_multiplier=0`` (no privacy: a reference).
    noise_multiplier : float or None, default=None
        Standard deviation of the server's Gaussian noise over ``clip``. ``0``: no noise
        (``epsilon`` is infinite).
    target_epsilon : float or None, default=None
        Set the noise multiplier so that the planned rounds spend this epsilon at ``delta``
        (``dp_accounting.calibrate_dp_mechanism``).
    delta : float, default=1e-5
        The delta of (epsilon, delta)-DP; keep it below ``1 / n_clients``.
    sampling : {"poisson", "fixed"}, default="poisson"
        How clients are sampled, matching the accountant's event: Poisson sampling (each client
        independently, add-or-remove-one neighbours; the sum is divided by the expected count) or
        a fixed number without replacement (replace-one neighbours, for which one client moves
        the sum by up to ``2 * clip``; RDP accountant only).
    accountant : {"rdp", "pld"}, default="rdp"
        ``dp_accounting``'s Rényi DP accountant (at integer orders, :data:`RDP_ORDERS`) or its
        privacy-loss-distribution one (tighter, about 40x slower a round).
    target_quantile : float in (0, 1) or None, default=None
        Adaptive clipping (Andrew et al., NeurIPS 2021): move ``clip`` each round towards this
        quantile of the clients' update norms, from a noisy count of the clients within it.
    clip_lr : float, default=0.2
        Step of the geometric clip update (adaptive clipping).
    clipped_count_stddev : float or None, default=None
        Noise on that count (adaptive clipping); ``None``: the expected number of clients / 20,
        as Andrew et al. suggest. Its share of the budget is taken from the noise on the updates,
        so ``epsilon`` stays that of ``noise_multiplier``.

    Examples
    --------
    >>> dp = DifferentialPrivacy(noise_multiplier=1.0, clip=0.5)
    >>> dp
    DifferentialPrivacy(clip=0.5, noise_multiplier=1.0)
    """

    def __init__(self, clip: float = 1.0, noise_multiplier: Optional[float] = None,
                 target_epsilon: Optional[float] = None, delta: float = 1e-5, sampling: str = "poisson",
                 accountant: str = "rdp", target_quantile: Optional[float] = None, clip_lr: float = 0.2,
                 clipped_count_stddev: Optional[float] = None):
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.target_epsilon = target_epsilon
        self.delta = delta
        self.sampling = sampling
        self.accountant = accountant
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.clipped_count_stddev = clipped_count_stddev

    def check(self) -> None:
        """Raise a ``ValueError`` that names the setting when the combination is not usable."""
        def number(name, low, high=math.inf, low_closed=False, high_closed=False, none=False):
            value = getattr(self, name)
            if value is None and none:
                return
            ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
            above = low <= value if low_closed else low < value
            below = value <= high if high_closed else value < high
            ok = ok and above and below
            if not ok:
                interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
                raise ValueError(f"DifferentialPrivacy: {name} must be a number in {interval}"
                                 f"{' or None' if none else ''}, got {value!r}.")

        number("clip", 0, math.inf, high_closed=True)
        number("noise_multiplier", 0, low_closed=True, none=True)
        number("target_epsilon", 0, none=True)
        number("delta", 0, 1)
        number("target_quantile", 0, 1, none=True)
        number("clip_lr", 0)
        number("clipped_count_stddev", 0, none=True)
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("DifferentialPrivacy needs exactly one of noise_multiplier and target_epsilon, got "
                             f"noise_multiplier={self.noise_multiplier!r}, target_epsilon={self.target_epsilon!r}.")
        if self.sampling not in ("poisson", "fixed"):
            raise ValueError(f"DifferentialPrivacy: sampling must be 'poisson' or 'fixed', got {self.sampling!r}.")
        if self.accountant not in ("rdp", "pld"):
            raise ValueError(f"DifferentialPrivacy: accountant must be 'rdp' or 'pld', got {self.accountant!r}.")
        if self.sampling == "fixed" and self.accountant == "pld":
            raise ValueError("DifferentialPrivacy: fixed-size sampling is accounted by the RDP accountant only "
                             "(dp-accounting's PLD accountant has no sampling without replacement); use "
                             "accountant='rdp' or sampling='poisson'.")
        if math.isinf(self.clip) and self.noise_multiplier != 0:
            raise ValueError("DifferentialPrivacy: clip=inf leaves a client's influence unbounded, so no noise makes "
                             "it private; it is accepted only with noise_multiplier=0 (a non-private reference).")
        if math.isinf(self.clip) and self.target_quantile is not None:
            raise ValueError("DifferentialPrivacy: adaptive clipping (target_quantile) needs a finite initial clip.")


def round_event(sampling: str, population: int, expected: int, noise_multiplier: float,
                count_stddev: Optional[float] = None):
    """The ``dp_accounting`` event of one private round.

    Parameters
    ----------
    sampling : {"poisson", "fixed"}
    population : int
        Clients that may be sampled.
    expected : int
        Clients sampled (expected, with Poisson sampling).
    noise_multiplier : float
        The total noise multiplier ``z`` (the updates' and, with adaptive clipping, the count's together).
    count_stddev : float or None
        Noise on the clipped count (adaptive clipping), whose sensitivity is 1.

    Returns
    -------
    dp_accounting.DpEvent
        ``PoissonSampledDpEvent(q, Gaussian(z_d)[, Gaussian(count_stddev)])``, or for fixed-size
        sampling ``SampledWithoutReplacementDpEvent(population, expected, ...)`` with the updates'
        multiplier halved: replacing one client moves the sum of clipped updates by up to ``2 * clip``.

    Examples
    --------
    >>> round_event("poisson", 100, 10, 1.0)
    PoissonSampledDpEvent(sampling_probability=0.1, event=GaussianDpEvent(noise_multiplier=1.0))
    """
    dp = _accounting()
    scale = 1.0 if sampling == "poisson" else 2.0  # the sum's sensitivity, in units of clip
    z = noise_multiplier / scale
    events = [dp.GaussianDpEvent(update_noise_multiplier(z, count_stddev))]
    if count_stddev is not None:
        events.append(dp.GaussianDpEvent(count_stddev))
    inner = events[0] if len(events) == 1 else dp.ComposedDpEvent(events)
    if sampling == "poisson":
        return dp.PoissonSampledDpEvent(min(1.0, expected / population), inner)
    return dp.SampledWithoutReplacementDpEvent(population, expected, inner)


#: The RDP accountant's orders: the integers of TF Privacy's first accountant. The library's default
#: adds fractional orders below 11, whose subsampled-Gaussian RDP costs ~10x more to compute (0.4 s
#: a round at q=0.2, z=1 here, against 0.04 s) and gives at most a few percent smaller epsilon
#: (11.34 against 11.70 after 50 such rounds, at delta=1e-5): a slightly conservative count.
#: ``accountant="pld"`` is the tight one.
RDP_ORDERS = tuple(range(2, 65)) + (128, 256, 512, 1024)


def _fresh_accountant(kind: str, sampling: str):
    dp = _accounting()
    if kind == "pld":
        return dp.pld.PLDAccountant()
    relation = dp.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dp.NeighboringRelation.ADD_OR_REMOVE_ONE
    return dp.rdp.RdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=relation)


def epsilon_of(events: list, delta: float, kind: str = "rdp", sampling: str = "poisson") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (``inf`` if a round had no noise).

    Examples
    --------
    >>> e = round_event("poisson", 100, 100, 4.530877117)  # every client, one round
    >>> round(epsilon_of([e], delta=1e-6), 2)  # dp-accounting's own test: (1, 1e-6)-DP
    1.0
    """
    if any(_noiseless(e) for e in events):
        return math.inf
    accountant = _fresh_accountant(kind, sampling)
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _noiseless(event) -> bool:
    """A round without noise: nothing bounds its epsilon (the library divides by the multiplier)."""
    return getattr(getattr(event, "event", event), "noise_multiplier", None) == 0 or any(
        getattr(e, "noise_multiplier", None) == 0 for e in getattr(getattr(event, "event", None), "events", ()))


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, make_event, previous: list = (),
                    kind: str = "rdp", sampling: str = "poisson") -> float:
    """The smallest noise multiplier whose ``rounds`` rounds, after the ``previous`` events, spend at
    most ``target_epsilon`` at ``delta`` (``dp_accounting.calibrate_dp_mechanism``).

    Parameters
    ----------
    target_epsilon, delta : float
    rounds : int
    make_event : callable
        ``noise_multiplier -> DpEvent`` of one round.
    previous : list of DpEvent
        Rounds already run (a warm start).
    kind, sampling : str
        As :class:`DifferentialPrivacy`'s ``accountant`` and ``sampling``.

    Examples
    --------
    >>> z = calibrate_noise(1.0, 1e-6, 1, lambda z: round_event("poisson", 10, 10, z))
    >>> round(z, 3)
    4.531
    """
    dp = _accounting()

    def event(z):
        return dp.ComposedDpEvent([*previous, dp.SelfComposedDpEvent(make_event(z), rounds)])

    if previous and epsilon_of(list(previous), delta, kind, sampling) >= target_epsilon:
        raise ValueError(f"The rounds already run spent epsilon={epsilon_of(list(previous), delta, kind, sampling):.4g}"
                         f", at or above target_epsilon={target_epsilon:g}: no noise keeps more rounds within it.")
    # below 0.3 the PLD accountant's grid of privacy losses outgrows memory, and so few rounds
    # are private at such a noise that the search starts there
    lowest = 0.3
    if epsilon_of([event(lowest)], delta, kind, sampling) <= target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon:g} is reached with a noise multiplier below {lowest}: "
                         "give noise_multiplier directly, or a smaller target_epsilon.")
    return float(dp.calibrate_dp_mechanism(lambda: _fresh_accountant(kind, sampling), event, target_epsilon, delta,
                                           dp.LowerEndpointAndGuess(lowest, 2 * lowest), tol=1e-3))


class PrivateTraining:
    """The fit loop's side of DP-FedAvg in one stage: sample, aggregate privately, account.

    Built for each stage that aggregates; ``history`` (the estimator's ``history_``) gives the
    private rounds already run, so warm starts and checkpoints continue the count and the
    adaptive clip.

    Parameters
    ----------
    config : DifferentialPrivacy
    population : int
        Clients that may be sampled.
    expected : int
        Clients per round (expected, with Poisson sampling).
    planned : int
        Private rounds this fit plans, counting this stage's (calibration of ``target_epsilon``).
    history : list of dict
        The rounds run so far.
    """

    def __init__(self, config: DifferentialPrivacy, population: int, expected: int, planned: int, history):
        config.check()
        self.config = config
        self.population, self.expected = int(population), int(expected)
        self.count_stddev = None
        if config.target_quantile is not None:
            self.count_stddev = (config.clipped_count_stddev if config.clipped_count_stddev is not None
                                 else self.expected / 20)
        past = [r["dp"] for r in history if "dp" in r]
        self.events = [round_event(p["sampling"], p["population"], p["expected"], p["noise_multiplier"],
                                   p["count_stddev"]) for p in past]
        self.clip = float(past[-1]["next_clip"]) if past and config.target_quantile is not None else float(config.clip)
        if config.noise_multiplier is not None:
            self.noise_multiplier = float(config.noise_multiplier)
        else:
            self.noise_multiplier = calibrate_noise(config.target_epsilon, config.delta, max(int(planned), 1),
                                                    self._event, self.events, config.accountant, config.sampling)
        scale = 1.0 if config.sampling == "poisson" else 2.0
        self.update_multiplier = scale * update_noise_multiplier(self.noise_multiplier / scale, self.count_stddev)
        self.infinite = any(_noiseless(e) for e in self.events)
        self._accountant = _fresh_accountant(config.accountant, config.sampling)
        for event in self.events:
            if not self.infinite:
                self._accountant.compose(event)

    def divergence_hint(self) -> str:
        """What to change when a private fit diverges: the noise it adds is usually the cause."""
        spread = self.noise_multiplier * self.clip / max(self.expected, 1)
        return (f" With privacy on, the server adds noise of standard deviation {spread:.3g} to every shared "
                f"parameter's mean each round (noise multiplier {self.noise_multiplier:.3g} x clip {self.clip:g} / "
                f"{self.expected} clients expected a round): sample more clients a round (clients_per_round, "
                "among more clients), allow a larger target_epsilon or fewer n_rounds, or lower lr.")

    def _event(self, z: float):
        return round_event(self.config.sampling, self.population, self.expected, z, self.count_stddev)

    def sample(self, rng: np.random.Generator, present: np.ndarray) -> np.ndarray:
        """The round's clients: Poisson (each with probability ``expected / population``; possibly
        none) or ``expected`` of them without replacement, sorted."""
        present = np.asarray(present)
        if self.config.sampling == "poisson":
            return present[rng.random(len(present)) < self.expected / self.population]
        if self.expected >= len(present):
            return np.sort(present)
        return np.sort(rng.choice(present, size=self.expected, replace=False))

    def aggregator(self, shared, seed: int, round_number: int) -> PrivateSum:
        """The round's :class:`~pfedest.core.privacy.PrivateSum`, its noise keyed by ``(seed, round_number)``."""
        word = int(RoundKeys(seed, round_number).uniforms(NOISE_STREAM, [0]).keys[0])
        generator = torch.Generator(device="cpu").manual_seed(word)
        return PrivateSum(shared, clip=self.clip, noise_std=self.update_multiplier * self.clip,
                          denominator=self.expected, generator=generator, count_std=self.count_stddev or 0.0)

    def account(self, total: PrivateSum) -> dict:
        """Compose the round's event; move the adaptive clip; return the round's record entries."""
        used = self.clip
        if self.config.target_quantile is not None:
            within = total.clipped_fraction()
            self.clip = next_clip(self.clip, within, self.config.target_quantile, self.config.clip_lr)
        entry = {"sampling": self.config.sampling, "population": self.population, "expected": self.expected,
                 "noise_multiplier": self.noise_multiplier, "count_stddev": self.count_stddev,
                 "next_clip": self.clip}
        self.infinite = self.infinite or self.noise_multiplier == 0
        if not self.infinite:
            self._accountant.compose(self._event(self.noise_multiplier))
        epsilon = math.inf if self.infinite else float(self._accountant.get_epsilon(self.config.delta))
        return {"epsilon": epsilon, "dp_clip": used, "dp": entry}


def check_config(config) -> DifferentialPrivacy:
    """``config`` if it is a usable :class:`DifferentialPrivacy`; a clear error otherwise.

    The estimator's ``privacy`` and the Flower app's both pass here.

    Parameters
    ----------
    config : object
        What was given as ``privacy``.

    Returns
    -------
    DifferentialPrivacy
        ``config`` itself.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`DifferentialPrivacy`.
    ValueError
        If one of its settings is out of range (:meth:`DifferentialPrivacy.check`).

    Examples
    --------
    >>> check_config(DifferentialPrivacy(noise_multiplier=1.0)).noise_multiplier
    1.0
    """
    if not isinstance(config, DifferentialPrivacy):
        raise TypeError(f"privacy must be None or a pfedest.privacy.DifferentialPrivacy, got {config!r}.")
    config.check()
    return config


def check_privacy_settings(est) -> None:
    """Refuse estimator settings a private fit cannot honour (called by ``fit`` when ``privacy`` is set)."""
    check_config(est.privacy)
    if getattr(est, "guard", None) is not None:
        # the guard's fallback is the average of the personal parts, released unclipped and without
        # noise, and its refit trains (and releases) a second time: the epsilon would cover neither
        raise ValueError(f"privacy and guard={est.guard!r} cannot be combined: the guard's fallback averages the "
                         "clients' personal parts outside the privacy accountant (and guard_refit trains a second "
                         "time), so the reported epsilon would not cover the model. Set guard=None for a private fit.")
    if est.tol is not None or est.early_stopping:
        warnings.warn("The stopping rule reads the clients' losses (tol or early_stopping), which the privacy "
                      "accountant does not count, and the number of rounds it picks depends on them: set tol=None "
                      "and early_stopping=False for a model whose epsilon covers everything it was trained on.",
                      UserWarning, stacklevel=4)
