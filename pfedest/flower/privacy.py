"""User-level differential privacy of the shared part in the Flower app (DP-FedAvg, as the simulator).

An estimator's ``privacy=`` (:class:`pfedest.privacy.DifferentialPrivacy`) travels in ``model.json``.
Each side then does its share of the simulator's private round (:mod:`pfedest.privacy`):

- a node clips its shared update ``u_i - u`` to norm ``clip`` (one norm over all shared tensors,
  :func:`pfedest.core.privacy.clip_deltas`) and sends ``u + clipped delta`` with ``num-examples``
  1: every client counts once, whatever its row count (:func:`clip_update`);
- the server (:class:`ServerPrivacy`, used by :class:`~pfedest.flower.strategy.PersonalizedFedAvg`)
  samples the nodes as the accountant assumes, with the simulator's draw
  (:meth:`pfedest.privacy.PrivateTraining.sample` keyed by ``(seed, round)``), clips every reply
  again (a node's clipping is not trusted), sums them, adds the Gaussian noise of the simulator's
  keyed stream (:meth:`pfedest.privacy.PrivateTraining.aggregator`), divides by the expected
  number of clients, and counts epsilon with the same ``dp-accounting`` event (the round's record
  holds ``epsilon``, ``dp_clip`` and ``dp`` as ``history_`` does).

The population of the accountant is the number of nodes eligible in a round (connected and, when
the server needs it, with a known ``partition-id``), and the expected number of clients
``settings.n_sampled`` of it: the simulator's with that many clients. When it changes from a round
to the next, the accountant is rebuilt from the rounds already counted (as a warm-started fit's), so
each round is counted with the event it ran; a ``target_epsilon`` is then calibrated again for the
rounds left.

Adaptive clipping (``target_quantile``) is refused: its count of clients within the clip would need
each node to report, privately, whether its update was clipped. The validation guard is refused
with privacy too: its nodes send their personal parts to the server, outside the privatized update.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.privacy import PrivateSum, clip_deltas
from ..core.types import Params
from ..privacy import DifferentialPrivacy, PrivateTraining, check_config, epsilon_of

__all__ = ["check_flower_privacy", "clip_update", "ServerPrivacy"]


def check_flower_privacy(config, guard: str = "") -> Optional[DifferentialPrivacy]:
    """``config`` checked for the Flower app: ``None``, or a usable :class:`~pfedest.privacy.DifferentialPrivacy`.

    Parameters
    ----------
    config : DifferentialPrivacy or None
    guard : str, default=""
        The run config's ``guard``.

    Returns
    -------
    DifferentialPrivacy or None

    Examples
    --------
    >>> check_flower_privacy(DifferentialPrivacy(noise_multiplier=1.0)).clip
    1.0
    >>> check_flower_privacy(DifferentialPrivacy(noise_multiplier=1.0, target_quantile=0.5))
    Traceback (most recent call last):
    ...
    ValueError: The Flower app does not run adaptive clipping ...
    """
    if config is None:
        return None
    check_config(config)
    if config.target_quantile is not None:
        raise ValueError("The Flower app does not run adaptive clipping (target_quantile="
                         f"{config.target_quantile!r}): its count of the clients within the clip would need every "
                         "node to report, privately, whether it was clipped. Give a fixed clip (target_quantile=None), "
                         "or train with adaptive clipping in the simulator (fit).")
    if guard:
        raise ValueError(f"The Flower app does not run the guard (guard={guard!r}) with privacy: its nodes send their "
                         "personal parts to the server for the fallback, outside the privatized update. Set guard "
                         "to '' in the run config, or privacy=None.")
    return config


def clip_update(new_shared: Params, shared: Params, clip: float) -> Params:
    """``shared`` plus the node's update ``new_shared - shared`` clipped to norm ``clip``.

    The norm is taken over all the shared tensors together, as
    :func:`pfedest.core.privacy.clip_deltas` takes each client's in the simulator (in float64,
    applied in the tensors' dtype, so a clipped norm can be a few ulps above ``clip``).

    Parameters
    ----------
    new_shared, shared : dict of str to Tensor
        The node's shared parameters after local training, and the server's it started from.
    clip : float

    Returns
    -------
    dict of str to Tensor

    Examples
    --------
    >>> import torch
    >>> clip_update({"w": torch.tensor([3.0, 4.0])}, {"w": torch.zeros(2)}, clip=1.0)["w"].tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    deltas = {k: (new_shared[k] - shared[k])[None] for k in shared}
    clipped, _ = clip_deltas(deltas, clip)
    return {k: shared[k] + clipped[k][0] for k in shared}


class ServerPrivacy:
    """The strategy's side of DP-FedAvg: the simulator's sampling, noisy sum and accountant, per round.

    Parameters
    ----------
    config : DifferentialPrivacy
    seed : int
        The run config's ``seed`` (an estimator's int ``random_state``): keys the sampling and the noise.
    planned : int
        The rounds of the run (``num-rounds``), for ``target_epsilon``.

    Examples
    --------
    >>> import torch
    >>> private = ServerPrivacy(DifferentialPrivacy(noise_multiplier=1.0, clip=0.5), seed=0, planned=3)
    >>> chosen = private.sample(1, n_nodes=10, expected=5)
    >>> total = private.aggregator({"w": torch.zeros(2)}, server_round=1)
    >>> entry = private.account(total)
    >>> sorted(entry), entry["dp"]["population"], entry["dp"]["expected"]
    (['dp', 'dp_clip', 'epsilon'], 10, 5)
    """

    def __init__(self, config: DifferentialPrivacy, seed: int, planned: int):
        self.config = check_flower_privacy(config)
        self.seed = int(seed)
        self.planned = int(planned)
        self.history: list = []  # {"dp": entry} of every round counted, as PrivateTraining reads a history
        self.training: Optional[PrivateTraining] = None
        # a ServerApp without dp-accounting fails here, with the install hint, not in its first round
        epsilon_of([], self.config.delta)

    def sample(self, server_round: int, n_nodes: int, expected: int) -> np.ndarray:
        """Positions (among ``n_nodes`` eligible nodes, in partition order) sampled in ``server_round``,
        with the simulator's draw for a federation of ``n_nodes`` clients; sets the round's accountant."""
        if self.training is None or (self.training.population, self.training.expected) != (n_nodes, expected):
            left = max(self.planned - len(self.history), 1)
            self.training = PrivateTraining(self.config, n_nodes, expected, left, self.history)
        rng = np.random.default_rng([self.seed, int(server_round)])
        return self.training.sample(rng, np.arange(n_nodes))

    def aggregator(self, shared: Params, server_round: int) -> PrivateSum:
        """The round's :class:`~pfedest.core.privacy.PrivateSum` (after :meth:`sample`): the simulator's,
        its noise keyed by ``(seed, server_round)``."""
        return self.training.aggregator(shared, self.seed, int(server_round))

    def account(self, total: PrivateSum) -> dict:
        """Count the round; its record entries ``epsilon`` (spent so far), ``dp_clip`` and ``dp``."""
        entry = self.training.account(total)
        self.history.append({"dp": entry["dp"]})
        return entry
