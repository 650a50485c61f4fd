"""Training: the plan of stages (pre-train, FedAlt/FedSim, fine-tune), rounds and callbacks.

These functions drive a :class:`~pfedest.PartialPersonalizedClassifier` through its training
plan; the estimator validates input and keeps the state, the engine runs each round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .core.algorithms import ALGORITHMS, StepSizes
from .core.engine import auto_chunk_size, make_engine
from .core.rounds import run_round
from .core.model import make_loss
from .core.sampling import RoundKeys, n_sampled, sample_clients
from .core.schedules import make_schedule
from .core.server import ServerOptimizer
from .nn.splits import make_split


@dataclass
class ClientData:
    """A fit's rows on the device, sorted by client, with each client's row count and offset."""

    X: torch.Tensor
    y: torch.Tensor
    counts: np.ndarray
    offsets: np.ndarray


def chunk_size(est):
    if est.max_clients_per_batch is not None:
        return est.max_clients_per_batch
    return auto_chunk_size(est.device_, est._bytes_per_client)


def local_steps(est, algorithm):
    return algorithm.steps(est.personal_steps, est.shared_steps)


def clients_per_round(est, n_clients):
    return n_sampled(est.clients_per_round, n_clients)


def client_data(est, X, codes, rows) -> ClientData:
    """Rows sorted by client, on the device, with each client's count and offset."""
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=len(est.clients_))
    return ClientData(
        X=torch.as_tensor(np.ascontiguousarray(X[order]), dtype=torch.float32, device=est.device_),
        y=torch.as_tensor(codes[order], dtype=torch.int64, device=est.device_),
        counts=counts, offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]))


def run_plan(est, plan, data: ClientData, callbacks) -> None:
    """Run the stages of ``plan`` (``[stage, rounds]`` pairs) with the callbacks' hooks.

    ``_progress`` counts the rounds done in each stage; a checkpoint restored by a callback in
    ``on_train_begin`` sets it, and the plan continues from there.
    """
    est._plan, est._progress, est.stop_reason_ = plan, [0] * len(plan), None
    est._fit_data, est._fit_data_signature = data, None  # for checkpoints; dropped after the fit
    try:
        _run_stages(est, plan, data, callbacks)
    finally:
        del est._fit_data, est._fit_data_signature


def _run_stages(est, plan, data: ClientData, callbacks) -> None:
    for cb in callbacks:
        cb.on_train_begin(est)
    bar = tqdm(total=sum(n for _, n in plan), initial=sum(est._progress), desc=plan[-1][0],
               disable=not est.verbose, leave=False)
    try:
        for i, (stage, n_rounds) in enumerate(plan):
            est._stop_requested = False
            if est._progress[i] >= n_rounds:
                continue
            run_one = stage_runner(est, stage, data)
            bar.set_description(stage)
            while est._progress[i] < n_rounds and not est._stop_requested:
                round_number = len(est.history_) + 1
                for cb in callbacks:
                    cb.on_round_begin(est, round_number, stage)
                record = run_one(est._progress[i], n_rounds)
                est._progress[i] += 1
                est.history_.append(record)
                for cb in callbacks:
                    cb.on_round_end(est, record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
    finally:
        bar.close()
    for cb in callbacks:
        cb.on_train_end(est)


def stage_runner(est, stage: str, data: ClientData):
    """A function ``(round_index, n_rounds) -> record`` that runs one round of ``stage``."""
    base = make_loss(est.module_, dict(est.module_.named_buffers()), data.X, data.y)
    present = np.flatnonzero(data.counts)
    personal_state, loss, merge = est.personal_params_, base, None
    options = dict(clip=est.clip_grad_norm, personal_l2=est.personal_l2,
                   personal_anchor=est._personal_init if est.personal_l2_target == "init" else None)
    together = make_split(est.split).pretrain_personal
    if stage == "pretrain":
        # FedAvg on the whole network: the personal part, identical on every client until
        # personalization starts, trains as if it were shared (adapters stay the identity).
        algorithm, n_sampled = ALGORITHMS["fedsim"], clients_per_round(est, len(present))
        fixed = {} if together else {k: v[0] for k, v in est.personal_params_.items()}
        loss = lambda shared, personal, idx, mask: base(shared, fixed, idx, mask)  # noqa: E731
        personal_state = {}

        def merge_pretrained(new_shared):
            for k, v in est.personal_params_.items():
                if together:
                    v.copy_(new_shared[k].expand_as(v))
                    # personalization starts from here: the anchor of personal_l2_target="init"
                    est._personal_init[k] = new_shared[k].clone()
            return {k: v for k, v in new_shared.items() if k in est.shared_params_}

        merge = merge_pretrained
    elif stage == "train":
        algorithm, n_sampled = ALGORITHMS[est.algorithm], clients_per_round(est, len(present))
    else:  # "finetune", "personalize": every client trains its personal part alone
        algorithm, n_sampled = ALGORITHMS["personal_only"], len(present)
    aggregate = stage in ("pretrain", "train")
    steps = local_steps(est, algorithm)
    schedule = make_schedule(est.lr_schedule) if aggregate else (lambda r, n: 1.0)

    def shared_in():
        if stage != "pretrain":
            return est.shared_params_
        return {**est.shared_params_, **{k: v[0] for k, v in est.personal_params_.items() if together}}

    engine = make_engine(est.engine_, loss, shared_in(), compile=est.compile, **options)
    server = est._servers.setdefault(stage, make_server_optimizer(est))
    weights = data.counts if est.weighting == "samples" else np.ones(len(data.counts))

    def run_one(round_index, n_rounds):
        tic = time.perf_counter()
        factor = float(schedule(round_index, n_rounds))
        lr = StepSizes(shared=est.lr * factor, personal=(est.personal_lr or est.lr) * factor)
        # Every draw is keyed by (seed, round[, client]), as a Flower node draws it (pfedest.flower).
        round_number = len(est.history_) + 1
        sampled = sample_clients(np.random.default_rng([est._keyed_seed, round_number]), present, n_sampled)
        shared, result = run_round(
            algorithm=algorithm, engine=engine, shared=shared_in(), personal_state=personal_state,
            counts=data.counts, offsets=data.offsets, sampled=sampled,
            rng=RoundKeys(est._keyed_seed, round_number),
            batch_size=est.batch_size, steps=steps, lr=lr, server_lr=est.server_lr,
            chunk_size=chunk_size(est), device=est.device_, aggregate=aggregate, server_optimizer=server,
            weights=weights)
        if not result.finite or not all(torch.isfinite(v).all() for v in shared.values()):
            raise FloatingPointError(
                f"Training diverged in round {round_number} ({stage}): the loss or the shared parameters "
                f"became NaN or infinite (loss {result.loss_sum / max(result.row_count, 1):.4g}). The "
                f"model is kept as it was after round {round_number - 1}; lower lr (now {lr.shared:g}) "
                "or scale the features.")
        est.shared_params_ = merge(shared) if merge else shared
        return {
            "round": round_number,
            "stage": stage,
            "train_loss": result.loss_sum / max(result.row_count, 1.0),
            "n_clients": len(sampled),
            "clients": est.clients_[sampled].tolist(),
            "bytes_up": result.bytes_up,
            "wall_time": time.perf_counter() - tic,
            "lr": lr.shared,
        }

    return run_one


def make_server_optimizer(est) -> ServerOptimizer:
    return ServerOptimizer(est.server_optimizer, lr=est.server_lr, momentum=est.server_momentum)
