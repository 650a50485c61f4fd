"""The server's side: :class:`PersonalizedFedAvg`, Flower's ``FedAvg`` over the shared parameters only.

It subclasses ``flwr.serverapp.strategy.FedAvg``, so this module imports Flower at its top; the rest
of :mod:`pfedest.flower` imports it only when a ServerApp runs (and ``pfedest.flower.PersonalizedFedAvg``
on first use). The replies are read here: a train reply is accepted only if it holds exactly the
shared parameters, and the accepted ones become one weighted mean
(:class:`pfedest.core.server.WeightedAverage`) and one server step
(:func:`pfedest.core.rounds.server_update`), as in the simulator's round.
"""

from __future__ import annotations

import logging
import math
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
from .records import ARRAYS_KEY, CONFIG_KEY, to_record, to_tensors
from .settings import RunSettings

__all__ = ["PersonalizedFedAvg"]

# A child of Flower's logger, so that messages show in `flwr run --stream` and the SuperLink log.
logger = logging.getLogger("flwr.pfedest")


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
    - refuses a reply unless it holds exactly the shared parameters (names, shapes, finite
      values) and a positive ``num-examples``; a refused or failed reply is left out of the round;
    - averages the accepted replies in the order of their ``partition-id``, weighted by
      ``num-examples`` (or equally, with ``settings.weighting="uniform"``), with
      :class:`pfedest.core.server.WeightedAverage`, then takes the server step with its
      :class:`pfedest.core.server.ServerOptimizer` (``server_optimizer``, ``server_lr``,
      ``server_momentum``; plain ``u + server_lr * (mean - u)`` by default), whose state (momentum,
      Adam's moments) it keeps from round to round;
    - keeps a record of every round in :attr:`rounds`: which nodes were asked, which replied
      with which keys and sizes, which failed and why.

    Parameters
    ----------
    shared : dict of str to Tensor
        The shared parameters' layout (names and shapes).
    settings : RunSettings
    on_round : callable, optional
        Called as ``on_round(record, shared)`` after each round's aggregation.
    """

    def __init__(self, shared: Params, settings: RunSettings, on_round=None):
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=settings.min_nodes, arrayrecord_key=ARRAYS_KEY,
                         configrecord_key=CONFIG_KEY)
        self.layout = {k: tuple(v.shape) for k, v in shared.items()}
        self.settings = settings
        self.on_round = on_round
        self.rounds: list[dict] = []
        self._current: Optional[Params] = None
        self.partitions: Dict[int, int] = {}  # node id -> partition-id, from the nodes' replies
        self.server = settings.make_server_optimizer()

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
        rng = np.random.default_rng([self.settings.seed, int(server_round)])
        chosen = sample_clients(rng, np.arange(len(nodes)), self.settings.n_sampled(len(nodes)))
        sampled = [nodes[i] for i in chosen]
        # Node ids are 64-bit unsigned: kept as strings, JSON and numpy cannot hold them all.
        self.rounds.append({"round": int(server_round), "connected": [str(n) for n in nodes],
                            "sampled": [str(n) for n in sampled], "started": time.time()})
        return sampled

    def configure_train(self, server_round, arrays, config, grid):
        connected = self._connected(grid)
        if self.settings.n_sampled(len(connected)) < len(connected):
            connected = self.ask_partitions(grid, connected, server_round) or connected
        sampled = self.begin_round(server_round, to_tensors(arrays), connected)
        logger.info("Round %d: training %d of %d nodes", server_round, len(sampled),
                    len(self.rounds[-1]["connected"]))
        return self._instructions(sampled, MessageType.TRAIN, server_round, arrays, config)

    def _refuse(self, content) -> Optional[str]:
        """Why a train reply cannot be averaged, or ``None``."""
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return (f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} "
                    f"and {len(content.metric_records)}")
        arrays = next(iter(content.array_records.values()))
        keys = set(arrays.keys())
        if keys != set(self.layout):
            return (f"holds keys other than the shared parameters: unexpected {sorted(keys - set(self.layout))}, "
                    f"missing {sorted(set(self.layout) - keys)}")
        for k, a in arrays.items():
            if tuple(a.shape) != self.layout[k]:
                return f"{k} has shape {tuple(a.shape)}, expected {self.layout[k]}"
            if not np.isfinite(a.numpy()).all():
                return f"{k} is not finite"
        n = next(iter(content.metric_records.values())).get(self.weighted_by_key)
        if not isinstance(n, (int, float)) or not n > 0 or not math.isfinite(n):
            return f"{self.weighted_by_key}={n!r} is not a positive number"
        return None

    def aggregate_train(self, server_round, replies):
        record = self.rounds[-1]
        accepted, record["replies"], record["failures"] = [], [], []
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                record["failures"].append(self._failure(msg))
                continue
            reason = self._refuse(msg.content)
            arrays = list(msg.content.array_records.values())
            metrics = self._metrics(msg)
            self._learn_partition(msg.metadata.src_node_id, metrics)
            record["replies"].append({
                "node": node, "partition_id": metrics.get("partition-id"),
                "num_examples": metrics.get(self.weighted_by_key),
                "keys": sorted(k for a in arrays for k in a.keys()),
                "bytes": int(sum(len(x.data) for a in arrays for x in a.values())),
                "personal_source": metrics.get("personal-source"), "accepted": reason is None,
                "reason": reason})
            if reason is None:
                accepted.append((metrics, arrays[0], node))
            else:
                logger.warning("Round %d: refused the reply of node %s: %s", server_round, node, reason)
        record["missing"] = sorted(set(record["sampled"]) - {r["node"] for r in record["replies"]}
                                   - {f["node"] for f in record["failures"]})
        if not accepted:
            record.update(train_loss=None, n_accepted=0, finished=time.time())
            logger.warning("Round %d: no usable reply; the shared parameters stay as they were.", server_round)
            if self.on_round:
                self.on_round(record, self._current)
            return None, None
        # A fixed order (by partition) makes the average independent of the arrival order.
        accepted.sort(key=lambda item: (item[0].get("partition-id", -1), item[2]))
        replies = [to_tensors(a) for _, a, _ in accepted]
        uniform = self.settings.weighting == "uniform"
        average = WeightedAverage()
        average.add({k: torch.stack([r[k] for r in replies]) for k in self.layout},
                    torch.tensor([1.0 if uniform else float(m[self.weighted_by_key]) for m, _, _ in accepted]))
        new_shared = server_update(self.server, self._current, average.mean())
        loss_sum = sum(float(m.get("train-loss-sum", 0.0)) for m, _, _ in accepted)
        rows = sum(float(m.get("train-rows", 0.0)) for m, _, _ in accepted)
        record.update(train_loss=loss_sum / rows if rows else None, n_accepted=len(accepted),
                      clients=[m.get("partition-id") for m, _, _ in accepted],
                      bytes_up=int(sum(r["bytes"] for r in record["replies"] if r["accepted"])),
                      finished=time.time())
        if self.on_round:
            self.on_round(record, new_shared)
        metrics = MetricRecord({"train-loss": record["train_loss"] if record["train_loss"] is not None else 0.0,
                                "nodes": len(accepted)})
        return to_record(new_shared), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        every, last = self.settings.evaluate_every, server_round == self.settings.num_rounds
        if every < 0 or not (last or (every and server_round % every == 0)):
            return []
        return self._instructions(sorted(grid.get_node_ids()), MessageType.EVALUATE, server_round, arrays, config)

    def aggregate_evaluate(self, server_round, replies):
        per_node, failures = [], []
        for msg in replies:
            if msg.has_error():
                failures.append(self._failure(msg))
                continue
            m = self._metrics(msg)
            per_node.append({"node": str(msg.metadata.src_node_id), "partition_id": m.get("partition-id"),
                             "num_examples": m.get("num-examples"), "accuracy": m.get("accuracy"),
                             "loss": m.get("loss"), "personal_source": m.get("personal-source")})
        record = next((r for r in self.rounds if r["round"] == server_round), None)
        if record is not None:
            record["evaluation"] = sorted(per_node, key=lambda r: (r["partition_id"] is None, r["partition_id"]))
            record["evaluation_failures"] = failures
            if self.on_round:
                self.on_round(record, None)
        usable = [r for r in per_node if isinstance(r["num_examples"], (int, float)) and r["num_examples"] > 0]
        if not usable:
            return None
        average = WeightedAverage()  # the nodes' metrics weighted by their rows, in float64
        average.add({k: torch.tensor([float(r[k]) for r in usable], dtype=torch.float64) for k in ("accuracy", "loss")},
                    torch.tensor([float(r["num_examples"]) for r in usable], dtype=torch.float64))
        return MetricRecord({k: float(v) for k, v in average.mean().items()})

