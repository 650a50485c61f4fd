"""The server's side: :class:`PersonalizedFedAvg`, Flower's ``FedAvg`` over the shared parameters only.

It subclasses ``flwr.serverapp.strategy.FedAvg``, so this module imports Flower at its top; the rest
of :mod:`pfedest.flower` imports it only when a ServerApp runs (and ``pfedest.flower.PersonalizedFedAvg``
on first use). The replies are read here, and nothing a node sends is trusted: a train reply is
accepted only if it holds exactly the shared parameters, each a ``.npy`` array of the model's
dtype and shape (checked in its header before it is read) with finite values no larger than
:data:`MAX_ABS_VALUE`, and a whole ``num-examples`` from 1 to :data:`MAX_NUM_EXAMPLES`; an
evaluate reply only if its ``accuracy`` lies in [0, 1] and its ``loss`` is finite. The accepted
train replies become one weighted mean (:class:`pfedest.core.server.WeightedAverage`) and one
server step (:func:`pfedest.core.rounds.server_update`), as in the simulator's round; a step that
would make any shared parameter non-finite is refused, and the round keeps the previous ones.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import numbers
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ..core.rounds import server_update
from ..core.sampling import sample_clients
from ..core.server import WeightedAverage
from ..core.types import Params
from .privacy import ServerPrivacy, check_flower_privacy
from .records import ARRAYS_KEY, CONFIG_KEY, to_record, to_tensors
from .settings import RunSettings

__all__ = ["PersonalizedFedAvg", "MAX_NUM_EXAMPLES", "MAX_ABS_VALUE"]

# A child of Flower's logger, so that messages show in `flwr run --stream` and the SuperLink log.
logger = logging.getLogger("flwr.pfedest")

#: The most examples a reply may claim (its weight in the mean): more rows than a node holds, and
#: few enough that the weighted sum of float32 parameters cannot overflow.
MAX_NUM_EXAMPLES = 2**31 - 1
#: The largest magnitude a parameter in a reply, or an evaluation loss, may have: far beyond any
#: trained network's weights, and small enough that ``MAX_NUM_EXAMPLES`` replies of it sum to a
#: finite float32.
MAX_ABS_VALUE = 1e15


class PersonalizedFedAvg(FedAvg):
    """FedAvg over the shared parameters only, for FedAlt and FedSim.

    Flower's own ``FedAvg`` averages whatever keys the replies hold (a key in some replies
    only is averaged with the weights of all, so it shrinks) and samples with Python's global
    ``random``. This strategy instead:

    - samples ``settings.n_sampled(n)`` of the ``n`` connected nodes with
      :func:`pfedest.core.sampling.sample_clients` seeded by ``(seed, round)``, after waiting at most
      ``node_wait`` seconds for ``min_nodes`` of them. The nodes are taken in the order of
      their ``partition-id`` (learnt from their replies; before a round that samples only some
      nodes, the server asks those it does not know yet with a query message, and leaves out
      of the round any that does not answer), so that the sample is the estimator's;
    - refuses a reply unless it holds exactly the shared parameters, of the model's names,
      shapes and dtypes, with finite values of magnitude at most :data:`MAX_ABS_VALUE`, and a
      whole ``num-examples`` from 1 to :data:`MAX_NUM_EXAMPLES` (and, where present, an integer
      ``partition-id`` >= 0 and finite ``train-loss-sum`` and ``train-rows`` >= 0); a refused or
      failed reply is left out of the round, and the reason goes into its record
      (:meth:`check_train_reply`);
    - averages the accepted replies in the order of their ``partition-id``, weighted by
      ``num-examples`` (or equally, with ``settings.weighting="uniform"``), with
      :class:`pfedest.core.server.WeightedAverage`, then takes the server step with its
      :class:`pfedest.core.server.ServerOptimizer` (``server_optimizer``, ``server_lr``,
      ``server_momentum``; plain ``u + server_lr * (mean - u)`` by default), whose state (momentum,
      Adam's moments) it keeps from round to round. If the step would make any shared parameter
      NaN or infinite, the round is refused: the shared parameters and the optimizer's state stay
      as they were, and the round's record says why (``refused``);
    - averages the evaluate replies' ``accuracy`` and ``loss`` weighted by ``num-examples``,
      leaving out, with the reason in the record, any that lacks them or holds an accuracy
      outside [0, 1] or a loss that is not finite (:meth:`check_evaluate_reply`);
    - keeps a record of every round in :attr:`rounds`: which nodes were asked, which replied
      with which keys and sizes, which were refused or failed and why.

    Parameters
    ----------
    shared : dict of str to Tensor
        The shared parameters' layout (names and shapes).
    settings : RunSettings
    on_round : callable, optional
        Called as ``on_round(record, shared)`` after each round's aggregation.
    privacy : DifferentialPrivacy, optional
        User-level DP of the shared part (``model.json``'s ``privacy``; :mod:`pfedest.flower.privacy`):
        the nodes are sampled as its accountant assumes (Poisson or fixed-size, the simulator's draw),
        every accepted reply's update is clipped and counts once, the sum gets the simulator's keyed
        Gaussian noise and is divided by the expected number of clients, also in a round with no
        usable reply; each round's record holds ``epsilon``, ``dp_clip`` and ``dp``.
    """

    def __init__(self, shared: Params, settings: RunSettings, on_round=None, privacy=None):
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=settings.min_nodes, arrayrecord_key=ARRAYS_KEY,
                         configrecord_key=CONFIG_KEY)
        self.layout = {k: tuple(v.shape) for k, v in shared.items()}
        self.dtypes = {k: np.dtype(torch.empty(0, dtype=v.dtype).numpy().dtype) for k, v in shared.items()}
        self.settings = settings
        self.on_round = on_round
        self.rounds: list[dict] = []
        self._current: Optional[Params] = None
        self.partitions: Dict[int, int] = {}  # node id -> partition-id, from the nodes' replies
        self.server = settings.make_server_optimizer()
        privacy = check_flower_privacy(privacy, settings.guard)
        self.privacy = None if privacy is None else ServerPrivacy(privacy, settings.seed, settings.num_rounds)

    def summary(self) -> None:
        s = self.settings
        logger.info("PersonalizedFedAvg: %s, %d shared arrays, clients per round %s, min nodes %d, "
                    "server %s (lr %s, momentum %s), %s weighting, seed %d", s.algorithm, len(self.layout),
                    s.clients_per_round, s.min_nodes, s.server_optimizer, s.server_lr, s.server_momentum,
                    s.weighting, s.seed)

    def _connected(self, grid) -> list:
        deadline = time.monotonic() + self.settings.node_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.settings.min_nodes:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"Only {len(nodes)} node(s) connected after {self.settings.node_wait} s; "
                                   f"the run needs min-nodes={self.settings.min_nodes}.")
            time.sleep(0.5)

    @staticmethod
    def _instructions(nodes, message_type, server_round: int, arrays=None, config=None) -> list:
        """One message to each of ``nodes``: ``arrays`` (if any) and ``config`` with the ``server-round``."""
        config = ConfigRecord(dict(config or {}))
        config["server-round"] = int(server_round)
        content = RecordDict({CONFIG_KEY: config} if arrays is None else {ARRAYS_KEY: arrays, CONFIG_KEY: config})
        return [Message(content=content, message_type=message_type, dst_node_id=n) for n in nodes]

    @staticmethod
    def _metrics(msg) -> dict:
        """The metrics of a reply (its first ``MetricRecord``; empty if none)."""
        return dict(next(iter(msg.content.metric_records.values()), {}) or {})

    @staticmethod
    def _failure(msg) -> dict:
        return {"node": str(msg.metadata.src_node_id), "reason": str(msg.error.reason)}

    def _learn_partition(self, node, metrics) -> None:
        pid = metrics.get("partition-id")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
            self.partitions[int(node)] = pid

    def ask_partitions(self, grid, nodes: Sequence[int], server_round: int) -> list:
        """Ask ``nodes`` whose ``partition-id`` is not known yet for it; returns the nodes
        that stay eligible (known now)."""
        unknown = [n for n in nodes if int(n) not in self.partitions]
        if unknown:
            replies = grid.send_and_receive(self._instructions(unknown, MessageType.QUERY, server_round),
                                            timeout=min(self.settings.round_timeout, self.settings.node_wait))
            for msg in replies:
                if not msg.has_error():
                    self._learn_partition(msg.metadata.src_node_id, self._metrics(msg))
            silent = [n for n in unknown if int(n) not in self.partitions]
            if silent:
                logger.warning("Round %d: node(s) %s did not tell their partition-id; they sit this round out.",
                               server_round, silent)
        return [n for n in nodes if int(n) in self.partitions]

    def begin_round(self, server_round: int, shared: Params, connected: Sequence[int]) -> list:
        """Sample the round's nodes out of ``connected`` and start its record; returns them.

        The nodes are ordered by ``partition-id`` when the server knows every one's (by node id
        otherwise), so that sampling positions picks the clients the estimator would pick.
        """
        self._current = {k: v.clone() for k, v in shared.items()}
        nodes = sorted(connected)
        if all(int(n) in self.partitions for n in nodes):
            nodes.sort(key=lambda n: (self.partitions[int(n)], n))
        if self.privacy is not None:  # as the accountant assumes: Poisson or fixed-size, the simulator's draw
            chosen = self.privacy.sample(server_round, len(nodes), self.settings.n_sampled(len(nodes)))
        else:
            rng = np.random.default_rng([self.settings.seed, int(server_round)])
            chosen = sample_clients(rng, np.arange(len(nodes)), self.settings.n_sampled(len(nodes)))
        sampled = [nodes[i] for i in chosen]
        # Node ids are 64-bit unsigned: kept as strings, JSON and numpy cannot hold them all.
        self.rounds.append({"round": int(server_round), "connected": [str(n) for n in nodes],
                            "sampled": [str(n) for n in sampled], "started": time.time()})
        return sampled

    def configure_train(self, server_round, arrays, config, grid):
        connected = self._connected(grid)
        if self.privacy is not None or self.settings.n_sampled(len(connected)) < len(connected):
            connected = self.ask_partitions(grid, connected, server_round) or connected
        sampled = self.begin_round(server_round, to_tensors(arrays), connected)
        logger.info("Round %d: training %d of %d nodes", server_round, len(sampled),
                    len(self.rounds[-1]["connected"]))
        return self._instructions(sampled, MessageType.TRAIN, server_round, arrays, config)

    def check_train_reply(self, content) -> Params:
        """The shared parameters of a train reply, checked; a ``ValueError`` says why it is refused.

        The reply must hold one ``ArrayRecord`` with exactly the shared parameters (each a
        ``.npy`` array of the model's dtype and shape, finite, no larger than :data:`MAX_ABS_VALUE`)
        and one ``MetricRecord`` with a whole ``num-examples`` from 1 to :data:`MAX_NUM_EXAMPLES`;
        ``partition-id``, ``train-loss-sum`` and ``train-rows``, where present, must be an
        integer >= 0 and finite numbers >= 0.

        Parameters
        ----------
        content : flwr.app.RecordDict
            The reply's content.

        Returns
        -------
        dict of str to Tensor
        """
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise ValueError(f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} "
                             f"and {len(content.metric_records)}")
        arrays = next(iter(content.array_records.values()))
        keys = set(arrays.keys())
        if keys != set(self.layout):
            raise ValueError(f"holds keys other than the shared parameters: unexpected "
                             f"{sorted(keys - set(self.layout))}, missing {sorted(set(self.layout) - keys)}")
        metrics = dict(next(iter(content.metric_records.values())))
        _count(metrics, self.weighted_by_key)
        _partition(metrics)
        for key in ("train-loss-sum", "train-rows"):
            if key in metrics and not (_finite(metrics[key]) and metrics[key] >= 0):
                raise ValueError(f"{key}={metrics[key]!r} is not a finite number >= 0")
        params = {}
        for k in sorted(self.layout):
            try:
                params[k] = torch.from_numpy(_read_array(arrays[k], self.dtypes[k], self.layout[k]))
            except ValueError as exc:
                raise ValueError(f"{k} {exc}") from None
        return params

    def check_evaluate_reply(self, content) -> dict:
        """``num-examples``, ``accuracy`` and ``loss`` of an evaluate reply, checked; a ``ValueError``
        says why it is left out of the mean.

        The reply must hold one ``MetricRecord`` with a whole ``num-examples`` from 1 to
        :data:`MAX_NUM_EXAMPLES`, an ``accuracy`` in [0, 1] and a finite ``loss`` from 0 to
        :data:`MAX_ABS_VALUE`; a ``partition-id``, where present, must be an integer >= 0.

        Parameters
        ----------
        content : flwr.app.RecordDict
            The reply's content.

        Returns
        -------
        dict
            ``num_examples`` (int), ``accuracy`` and ``loss`` (floats).
        """
        if len(content.metric_records) != 1:
            raise ValueError(f"expected one MetricRecord, got {len(content.metric_records)}")
        metrics = dict(next(iter(content.metric_records.values())))
        n = _count(metrics, "num-examples")
        _partition(metrics)
        for key in ("accuracy", "loss"):
            if key not in metrics:
                raise ValueError(f"{key} is missing")
        accuracy, loss = metrics["accuracy"], metrics["loss"]
        if not (_finite(accuracy) and 0 <= accuracy <= 1):
            raise ValueError(f"accuracy={accuracy!r} is not a number from 0 to 1")
        if not (_finite(loss) and 0 <= loss <= MAX_ABS_VALUE):
            raise ValueError(f"loss={loss!r} is not a finite number >= 0")
        return {"num_examples": n, "accuracy": float(accuracy), "loss": float(loss)}

    def aggregate_train(self, server_round, replies):
        record = self.rounds[-1]
        accepted, record["replies"], record["failures"] = [], [], []
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                record["failures"].append(self._failure(msg))
                continue
            try:
                params, reason = self.check_train_reply(msg.content), None
            except ValueError as exc:
                params, reason = None, str(exc)
            arrays = list(msg.content.array_records.values())
            metrics = self._metrics(msg)
            if reason is None:  # a refused reply teaches nothing, not even its partition-id
                self._learn_partition(msg.metadata.src_node_id, metrics)
            record["replies"].append({
                "node": node, "partition_id": metrics.get("partition-id"),
                "num_examples": metrics.get(self.weighted_by_key),
                "keys": sorted(k for a in arrays for k in a.keys()),
                "bytes": int(sum(len(getattr(x, "data", b"")) for a in arrays for x in a.values())),
                "personal_source": metrics.get("personal-source"), "accepted": reason is None,
                "reason": reason})
            if reason is None:
                accepted.append((metrics, params, node))
            else:
                logger.warning("Round %d: refused the reply of node %s: %s", server_round, node, reason)
        record["missing"] = sorted(set(record["sampled"]) - {r["node"] for r in record["replies"]}
                                   - {f["node"] for f in record["failures"]})
        if self.privacy is None and not accepted:
            record.update(train_loss=None, n_accepted=0, finished=time.time())
            logger.warning("Round %d: no usable reply; the shared parameters stay as they were.", server_round)
            if self.on_round:
                self.on_round(record, self._current)
            return None, None
        # A fixed order (by partition) makes the average independent of the arrival order.
        accepted.sort(key=lambda item: (item[0].get("partition-id", -1), item[2]))
        stacked = {k: torch.stack([p[k] for _, p, _ in accepted]) for k in self.layout} if accepted else None
        if self.privacy is None:
            uniform = self.settings.weighting == "uniform"
            total = WeightedAverage()
            total.add(stacked, torch.tensor([1.0 if uniform else float(m[self.weighted_by_key])
                                             for m, _, _ in accepted]))
        else:
            # every accepted reply clipped and counted once, and the keyed noise; a round with no usable
            # reply still releases the noise, as the simulator's does: keeping the parameters would tell
            # that nobody took part
            total = self.privacy.aggregator(self._current, server_round)
            if accepted:
                total.add(stacked, torch.ones(len(accepted)))
        return self._server_step(server_round, record, accepted, total)

    def _server_step(self, server_round, record, accepted, total):
        """The server step from the round's aggregate ``total``, the round's record (with its epsilon
        when private), and the refusal of a step that would make a parameter non-finite."""
        before = copy.deepcopy(self.server.state_dict())
        new_shared = server_update(self.server, self._current, total.mean())
        loss_sum = sum(float(m.get("train-loss-sum", 0.0)) for m, _, _ in accepted)
        rows = sum(float(m.get("train-rows", 0.0)) for m, _, _ in accepted)
        train_loss = loss_sum / rows if rows and math.isfinite(loss_sum / rows) else None
        record.update(train_loss=train_loss, n_accepted=len(accepted),
                      clients=[m.get("partition-id") for m, _, _ in accepted],
                      bytes_up=int(sum(r["bytes"] for r in record["replies"] if r["accepted"])),
                      finished=time.time())
        extra, noise = {}, ""
        if self.privacy is not None:
            # the data touched the noisy sum whether or not the step is kept: the round is counted
            record.update(**self.privacy.account(total))
            logger.info("Round %d: private aggregate of %d node(s), epsilon %.4g at delta %g", server_round,
                        len(accepted), record["epsilon"], self.privacy.config.delta)
            extra = {"epsilon": float(record["epsilon"])}
            noise = f", noise multiplier {self.privacy.training.noise_multiplier:g}"
        broken = sorted(k for k, v in new_shared.items() if not torch.isfinite(v).all())
        if broken:
            # Neither saved nor sent: the round keeps the previous parameters and optimizer state.
            self.server.load_state_dict(before)
            record["refused"] = (f"the server step would make {', '.join(broken)} NaN or infinite "
                                 f"(server-optimizer={self.settings.server_optimizer!r}, "
                                 f"server-lr={self.settings.server_lr}{noise}); the shared parameters stay as they "
                                 "were")
            logger.warning("Round %d: refused: %s.", server_round, record["refused"])
            if self.on_round:
                self.on_round(record, self._current)
            return None, None
        if self.on_round:
            self.on_round(record, new_shared)
        metrics = MetricRecord({"train-loss": train_loss if train_loss is not None else 0.0,
                                "nodes": len(accepted), **extra})
        return to_record(new_shared), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        every, last = self.settings.evaluate_every, server_round == self.settings.num_rounds
        if every < 0 or not (last or (every and server_round % every == 0)):
            return []
        return self._instructions(sorted(grid.get_node_ids()), MessageType.EVALUATE, server_round, arrays, config)

    def aggregate_evaluate(self, server_round, replies):
        per_node, failures, usable = [], [], []
        for msg in replies:
            if msg.has_error():
                failures.append(self._failure(msg))
                continue
            m = self._metrics(msg)
            try:
                usable.append(self.check_evaluate_reply(msg.content))
                reason = None
            except ValueError as exc:
                reason = str(exc)
                logger.warning("Round %d: left the evaluation of node %s out: %s", server_round,
                               msg.metadata.src_node_id, reason)
            per_node.append({"node": str(msg.metadata.src_node_id), "partition_id": m.get("partition-id"),
                             "num_examples": m.get("num-examples"), "accuracy": m.get("accuracy"),
                             "loss": m.get("loss"), "personal_source": m.get("personal-source"),
                             "accepted": reason is None, "reason": reason})
        record = next((r for r in self.rounds if r["round"] == server_round), None)
        if record is not None:
            record["evaluation"] = sorted(per_node, key=_by_partition)
            record["evaluation_failures"] = failures
            if self.on_round:
                self.on_round(record, None)
        if not usable:
            return None
        average = WeightedAverage()  # the nodes' metrics weighted by their rows, in float64
        average.add({k: torch.tensor([r[k] for r in usable], dtype=torch.float64) for k in ("accuracy", "loss")},
                    torch.tensor([float(r["num_examples"]) for r in usable], dtype=torch.float64))
        return MetricRecord({k: float(v) for k, v in average.mean().items()})


def _finite(value) -> bool:
    """A real number (not a bool) that is finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or math.isfinite(value)


def _count(metrics: dict, key: str) -> int:
    """``metrics[key]`` as a number of examples; a ``ValueError`` unless it is a whole number in range."""
    if key not in metrics:
        raise ValueError(f"{key} is missing")
    n = metrics[key]
    if not (_finite(n) and n == int(n) and 1 <= n <= MAX_NUM_EXAMPLES):
        raise ValueError(f"{key}={n!r} is not a whole number from 1 to {MAX_NUM_EXAMPLES}")
    return int(n)


def _partition(metrics: dict) -> Optional[int]:
    """A reply's ``partition-id`` (``None`` if absent); a ``ValueError`` unless an integer >= 0."""
    pid = metrics.get("partition-id")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, numbers.Integral) or pid < 0):
        raise ValueError(f"partition-id={pid!r} is not an integer >= 0")
    return pid


def _by_partition(entry: dict) -> tuple:
    """Sort key of a record's entries: valid partition ids first, in order; any other value after."""
    pid = entry.get("partition_id")
    valid = isinstance(pid, numbers.Integral) and not isinstance(pid, bool)
    return (not valid, pid if valid else 0, entry["node"])


def _read_array(array, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """The values of a reply's Flower ``Array``; a ``ValueError`` unless it is a ``.npy`` array of
    ``dtype`` and ``shape`` with finite values no larger than :data:`MAX_ABS_VALUE`.

    The ``.npy`` header is checked before any data is read (it may claim any size), and the data is
    read without pickle.
    """
    stype, data = getattr(array, "stype", None), getattr(array, "data", None)
    if stype != "numpy.ndarray" or not isinstance(data, bytes):
        raise ValueError(f"is not a numpy array (stype {stype!r})")
    header = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(header)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"format version {version}")
        got_shape, _, got_dtype = read_header(header)
    except Exception as exc:  # numpy raises ValueError, EOFError or struct errors on a bad header
        raise ValueError(f"is not a readable .npy array ({exc})") from None
    if got_dtype != dtype:
        raise ValueError(f"has dtype {got_dtype}, expected {dtype}")
    if tuple(got_shape) != shape:
        raise ValueError(f"has shape {tuple(got_shape)}, expected {shape}")
    try:
        values = np.ascontiguousarray(np.lib.format.read_array(io.BytesIO(data), allow_pickle=False))
    except Exception as exc:
        raise ValueError(f"is not a readable .npy array ({exc})") from None
    if not np.isfinite(values).all():
        raise ValueError("is not finite")
    if values.size and float(np.abs(values).max()) > MAX_ABS_VALUE:
        raise ValueError(f"holds values beyond {MAX_ABS_VALUE:g} in magnitude")
    return values
