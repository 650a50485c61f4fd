"""The fit loop: the plan's stages (pre-train, FedAlt/FedSim, fine-tune), their rounds, the callbacks.

The estimator validates the input and holds the model; :func:`run_plan` trains it through a plan,
advancing the estimator's :class:`~pfedest.fit_state.FitState`, and :func:`stage_runner` builds the
function that runs one round of a stage with :func:`pfedest.core.rounds.run_round`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .core.algorithms import ALGORITHMS, StepSizes
from .core.engine import auto_chunk_size, bytes_per_client, make_engine
from .core.model import make_loss
from .core.rounds import run_round
from .core.sampling import RoundKeys, n_sampled, sample_clients
from .core.schedules import make_schedule
from .core.server import make_server_optimizer
from .fit_state import ClientData, FitState
from .nn.splits import make_split


def run_plan(est, fit: FitState, plan: list, data: ClientData, callbacks) -> None:
    """Run the stages of ``plan`` (``[stage, rounds]`` pairs) on ``data`` with the callbacks' hooks.

    ``fit.progress`` counts the rounds done in each stage; a checkpoint restored by a callback in
    ``on_train_begin`` sets it, and the plan continues from there.
    """
    fit.start(plan, data)
    try:
        for cb in callbacks:
            cb.on_train_begin(est)
        _run_stages(est, fit, data, callbacks)
        for cb in callbacks:
            cb.on_train_end(est)
    finally:
        fit.finish()


def _run_stages(est, fit: FitState, data: ClientData, callbacks) -> None:
    bar = tqdm(total=sum(n for _, n in fit.plan), initial=sum(fit.progress), desc=fit.plan[-1][0],
               disable=not est.verbose, leave=False)
    try:
        for i, (stage, n_rounds) in enumerate(fit.plan):
            fit.stop_requested = False
            if fit.progress[i] >= n_rounds:
                continue
            run_one = stage_runner(est, fit, stage, data)
            bar.set_description(stage)
            while fit.progress[i] < n_rounds and not fit.stop_requested:
                round_number = len(est.history_) + 1
                for cb in callbacks:
                    cb.on_round_begin(est, round_number, stage)
                record = run_one(fit.progress[i], n_rounds)
                fit.progress[i] += 1
                est.history_.append(record)
                for cb in callbacks:
                    cb.on_round_end(est, record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
    finally:
        bar.close()


def stage_runner(est, fit: FitState, stage: str, data: ClientData):
    """A function ``(round_index, n_rounds) -> record`` that runs one round of ``stage``."""
    base = make_loss(est.module_, dict(est.module_.named_buffers()), data.X, data.y)
    present = np.flatnonzero(data.counts)
    personal_state, loss, merge = est.personal_params_, base, None
    options = dict(clip=est.clip_grad_norm, personal_l2=est.personal_l2,
                   personal_anchor=fit.personal_init if est.personal_l2_target == "init" else None)
    together = make_split(est.split).pretrain_personal
    if stage == "pretrain":
        # FedAvg on the whole network: the personal part, identical on every client until
        # personalization starts, trains as if it were shared (adapters stay the identity and are
        # fixed). After each round every client's copy is set to the new value, so that callbacks
        # evaluating the model mid-stage see it.
        algorithm, sampled_per_round = ALGORITHMS["fedsim"], n_sampled(est.clients_per_round, len(present))
        fixed = {} if together else {k: v[0] for k, v in est.personal_params_.items()}
        loss = lambda shared, personal, idx, mask: base(shared, fixed, idx, mask)  # noqa: E731
        personal_state = {}

        def merge_pretrained(new_shared):
            for k, v in est.personal_params_.items():
                if together:
                    v.copy_(new_shared[k].expand_as(v))
                    fit.personal_init[k] = new_shared[k].clone()  # personalization starts from here
            return {k: v for k, v in new_shared.items() if k in est.shared_params_}

        merge = merge_pretrained
    elif stage == "train":
        algorithm, sampled_per_round = ALGORITHMS[est.algorithm], n_sampled(est.clients_per_round, len(present))
    else:  # "finetune", "personalize": every client trains its personal part alone
        algorithm, sampled_per_round = ALGORITHMS["personal_only"], len(present)
    aggregate = stage in ("pretrain", "train")
    steps = algorithm.steps(est.personal_steps, est.shared_steps)
    schedule = make_schedule(est.lr_schedule) if aggregate else (lambda r, n: 1.0)

    def shared_in():
        if stage != "pretrain":
            return est.shared_params_
        return {**est.shared_params_, **{k: v[0] for k, v in est.personal_params_.items() if together}}

    engine = make_engine(est.engine_, loss, shared_in(), compile=est.compile, **options)
    server = fit.server(stage, lambda: make_server_optimizer(est.server_optimizer, est.server_lr, est.server_momentum))
    weights = data.counts if est.weighting == "samples" else np.ones(len(data.counts))
    chunk_size = est.max_clients_per_batch or auto_chunk_size(
        est.device_, bytes_per_client(est.module_, data.X[:1], est.batch_size))

    def run_one(round_index, n_rounds):
        tic = time.perf_counter()
        factor = float(schedule(round_index, n_rounds))
        lr = StepSizes(shared=est.lr * factor, personal=(est.personal_lr or est.lr) * factor)
        # Every draw is keyed by (seed, round[, client]), as a Flower node draws it (pfedest.flower).
        round_number = len(est.history_) + 1
        sampled = sample_clients(np.random.default_rng([fit.seed, round_number]), present, sampled_per_round)
        shared, result = run_round(
            algorithm=algorithm, engine=engine, shared=shared_in(), personal_state=personal_state,
            counts=data.counts, offsets=data.offsets, sampled=sampled, rng=RoundKeys(fit.seed, round_number),
            batch_size=est.batch_size, steps=steps, lr=lr, chunk_size=chunk_size, device=est.device_,
            aggregate=aggregate, server_optimizer=server, weights=weights)
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
