"""The fit loop: the plan's stages (pre-train, FedAlt/FedSim, fine-tune), their rounds, the callbacks.

The estimator validates the input and holds the model; :func:`run_plan` trains it through a plan,
advancing the estimator's :class:`~pfedest.fit_state.FitState`, and :func:`stage_runner` builds the
function that runs one round of a stage with :func:`pfedest.core.rounds.run_round`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from .core.algorithms import ALGORITHMS, StepSizes
from .core.compiling import choose_compile
from .core.engine import auto_chunk_size, bytes_per_client, make_engine
from .core.model import Criterion, make_loss, mean_loss, needs_training_mode, training
from .core.precision import autocast_loss
from .core.reparametrize import ModuleCall
from .core.rounds import run_round
from .core.sampling import DROPOUT_STREAM, RoundKeys, n_sampled, sample_clients
from .core.schedules import make_schedule
from .core.server import make_server_optimizer
from .core.stopping import Plateau
from .fit_state import ClientData, FitState
from .nn.splits import make_split
from .privacy import PrivateTraining


def run_plan(est, fit: FitState, plan: list, data: ClientData, callbacks, valid: ClientData = None, *,
             criterion: Criterion) -> None:
    """Run the stages of ``plan`` (``[stage, rounds]`` pairs) on ``data`` with the callbacks' hooks.

    ``criterion`` is the loss the estimator trains (its head decides).

    ``fit.progress`` counts the rounds done in each stage; a checkpoint restored by a callback in
    ``on_train_begin`` sets it, and the plan continues from there. ``valid`` (rows held out of each
    client) is scored after every training round, for ``early_stopping``.
    """
    fit.start(plan, data, valid, start_round=len(est.history_))
    est.compile_ = choose_compile(est.compile, est.engine_, est.device_, planned_steps(est, plan, data.counts))
    try:
        for cb in callbacks:
            cb.on_train_begin(est)
        _run_stages(est, fit, data, callbacks, criterion)
        for cb in callbacks:
            cb.on_train_end(est)
    finally:
        fit.finish()


def planned_steps(est, plan: list, counts: np.ndarray) -> int:
    """Batched local steps the ``plan`` runs at most: its rounds x the local steps of a round
    (an epoch counted as the largest client's), what ``compile="auto"`` weighs."""
    epoch = -(-int(np.max(counts, initial=1)) // est.batch_size)
    per_round = sum(epoch if s is None else s
                    for s in ALGORITHMS[est.algorithm].steps(est.personal_steps, est.shared_steps).values())
    return sum(int(n) for _, n in plan) * per_round


def _run_stages(est, fit: FitState, data: ClientData, callbacks, criterion: Criterion) -> None:
    bar = tqdm(total=sum(n for _, n in fit.plan), initial=sum(fit.progress), desc=fit.plan[-1][0],
               disable=not est.verbose, leave=False)
    try:
        for i, (stage, n_rounds) in enumerate(fit.plan):
            fit.stop_requested = False
            if fit.progress[i] >= n_rounds:
                continue
            run_one = stage_runner(est, fit, stage, data, criterion)
            watch = _watcher(est, fit, data, criterion) if stage == "train" else None
            bar.set_description(stage)
            while fit.progress[i] < n_rounds and not fit.stop_requested:
                round_number = len(est.history_) + 1
                for cb in callbacks:
                    cb.on_round_begin(est, round_number, stage)
                record = run_one(fit.progress[i], n_rounds)
                fit.progress[i] += 1
                est.history_.append(record)
                if watch is not None:
                    watch(record)
                for cb in callbacks:
                    cb.on_round_end(est, record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
            if watch is not None:
                _end_watch(est, fit, n_rounds)
    finally:
        bar.close()


def _watcher(est, fit: FitState, data: ClientData, criterion: Criterion):
    """The stopping rule of the training stage: a function that takes each round's record.

    With ``early_stopping``, it scores the held-out rows (``valid_loss``) and keeps the best
    round's parameters; otherwise it watches the training loss averaged over the last pass over
    the clients (``train_loss_pass``: as many rounds as it takes to sample every client once, on
    average), since one round's loss depends on which clients it sampled. ``None`` with ``tol=None``.
    """
    valid = fit.valid if est.early_stopping else None
    if est.tol is None and valid is None:
        return None
    if fit.plateau is None:  # a restored checkpoint brings its own
        fit.plateau = Plateau("min", est.n_iter_no_change, est.tol or 0.0)
    present = int(np.count_nonzero(data.counts))
    window = -(-present // n_sampled(est.clients_per_round, present))
    rows = None if valid is None else torch.as_tensor(valid.row_clients(), device=valid.X.device)
    buffers = dict(est.module_.named_buffers())

    def watch(record):
        if valid is not None:
            name = "valid_loss"
            record[name] = mean_loss(est.module_, buffers, est.shared_params_, est.personal_params_, valid.X,
                                     valid.y, rows, criterion)
        else:
            name = "train_loss_pass"
            recent = [r["train_loss"] for r in est.history_[-window:] if r["stage"] == "train"]
            record[name] = float(np.mean(recent)) if len(recent) == window else math.nan
        if fit.plateau.update(record[name], record["round"]) and valid is not None:
            fit.best = {"shared": {k: v.clone() for k, v in est.shared_params_.items()},
                        "personal": {k: v.clone() for k, v in est.personal_params_.items()}}
        if est.tol is not None and fit.plateau.reached:
            fit.converged = True
            fit.request_stop(f"converged: {name} has not improved by more than tol={est.tol:g} for "
                             f"{est.n_iter_no_change} rounds (best {fit.plateau.best:.4g} in round "
                             f"{fit.plateau.best_round}).")

    return watch


def _end_watch(est, fit: FitState, n_rounds: int) -> None:
    """After the training stage: take back the best round (``early_stopping``); say why it ended."""
    if fit.best is not None:
        est.shared_params_ = fit.best["shared"]
        for k, v in fit.best["personal"].items():
            est.personal_params_[k].copy_(v)
    if est.tol is not None and not fit.converged and not fit.stop_requested:
        fit.stop_reason = (f"n_rounds: the {n_rounds} rounds ended before the monitored loss stopped improving by "
                           f"more than tol={est.tol:g} for {est.n_iter_no_change} rounds.")
        warnings.warn(f"{type(est).__name__} stopped after n_rounds={n_rounds} rounds before it converged "
                      f"(the monitored loss still improved by more than tol={est.tol:g} within the last "
                      f"{est.n_iter_no_change} rounds). Raise n_rounds or lr, or set tol=None to silence this.",
                      ConvergenceWarning, stacklevel=2)


def stage_runner(est, fit: FitState, stage: str, data: ClientData, criterion: Criterion):
    """A function ``(round_index, n_rounds) -> record`` that runs one round of ``stage`` (``criterion``:
    the loss)."""
    base = autocast_loss(make_loss(est.module_, dict(est.module_.named_buffers()), data.X, data.y, criterion),
                         est.device_, est.precision)
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

        @functools.wraps(base)  # keeps what the loss declares (mask_optional)
        def loss(shared, personal, idx, mask):
            return base(shared, fixed, idx, mask)
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
    # DP-FedAvg on what is sent (pfedest.privacy): its own sampling, a clipped and noised sum, an accountant
    private = None
    if aggregate and est.privacy is not None:
        planned = sum(n - done for (name, n), done in zip(fit.plan, fit.progress) if name in ("pretrain", "train"))
        private = PrivateTraining(est.privacy, len(present), sampled_per_round, planned, est.history_)
    steps = algorithm.steps(est.personal_steps, est.shared_steps)
    schedule = make_schedule(est.lr_schedule) if aggregate else (lambda r, n: 1.0)

    def shared_in():
        if stage != "pretrain":
            return est.shared_params_
        return {**est.shared_params_, **{k: v[0] for k, v in est.personal_params_.items() if together}}

    engine = make_engine(est.engine_, loss, shared_in(), compile=est.compile_, **options)
    server = fit.server(stage, lambda: make_server_optimizer(est.server_optimizer, est.server_lr, est.server_momentum))
    weights = data.counts if est.weighting == "samples" else np.ones(len(data.counts))
    chunk_size = est.max_clients_per_batch or auto_chunk_size(
        est.device_, bytes_per_client(est.module_, data.X[:1], est.batch_size))

    # the loss of the stage's first round in this model's history: a later one far above it diverged
    reference = next((r["train_loss"] for r in est.history_ if r["stage"] == stage), None)
    switch_mode = needs_training_mode(est.module_)
    # the model after each round is scored on some of its clients' rows
    probe = None if stage == "pretrain" else (ModuleCall(est.module_), dict(est.module_.named_buffers()))

    def run_one(round_index, n_rounds):
        nonlocal reference
        tic = time.perf_counter()
        factor = float(schedule(round_index, n_rounds))
        lr = StepSizes(shared=est.lr * factor, personal=(est.personal_lr or est.lr) * factor)
        # Every draw is keyed by (seed, round[, client]), as a Flower node draws it (pfedest.flower).
        round_number = len(est.history_) + 1
        rng = np.random.default_rng([fit.seed, round_number])
        sampled = sample_clients(rng, present, sampled_per_round) if private is None else private.sample(rng, present)
        average = None if private is None else private.aggregator(shared_in(), fit.seed, round_number)
        before = {k: v[sampled].clone() for k, v in personal_state.items()}  # to undo a round that diverged
        # dropout and batch statistics in the local steps only; dropout's masks keyed like the minibatches
        mode = (training(est.module_, RoundKeys(fit.seed, round_number).stream_key(DROPOUT_STREAM), est.device_)
                if switch_mode else contextlib.nullcontext())
        with mode:
            shared, result = run_round(
                algorithm=algorithm, engine=engine, shared=shared_in(), personal_state=personal_state,
                counts=data.counts, offsets=data.offsets, sampled=sampled, rng=RoundKeys(fit.seed, round_number),
                batch_size=est.batch_size, steps=steps, lr=lr, chunk_size=chunk_size, device=est.device_,
                aggregate=aggregate, server_optimizer=server, weights=weights, average=average)
        loss = result.loss_sum / max(result.row_count, 1.0)  # 0 when Poisson sampling sampled nobody
        problem = _divergence(est, result, loss, reference, shared, {k: v[sampled] for k, v in personal_state.items()},
                              lr, criterion)
        if problem:
            for k, v in before.items():
                personal_state[k][sampled] = v
            hint = "" if private is None else private.divergence_hint()
            raise FloatingPointError(f"Training diverged in round {round_number} ({stage}): {problem} The model is "
                                     f"kept as it was after round {round_number - 1}.{hint}")
        probe_loss = 0.0 if problem or probe is None else _probe_loss(est, shared, data, sampled, criterion, probe)
        if not math.isfinite(probe_loss) or probe_loss > _limit(criterion, reference):
            problem = (f"the model's loss on its training rows became {probe_loss:.4g} after the round although every "
                       f"parameter is finite. Lower lr (now {lr.shared:g}), server_lr (now {est.server_lr:g}) or "
                       "personal_lr, or scale the features.")
        if problem:
            for k, v in before.items():
                personal_state[k][sampled] = v
            hint = "" if private is None else private.divergence_hint()
            raise FloatingPointError(f"Training diverged in round {round_number} ({stage}): {problem} The model is "
                                     f"kept as it was after round {round_number - 1}.{hint}")
        if reference is None and result.row_count:
            reference = loss
        est.shared_params_ = merge(shared) if merge else shared
        return {
            "round": round_number,
            "stage": stage,
            "train_loss": result.loss_sum / result.row_count if result.row_count else math.nan,
            "n_clients": len(sampled),
            "clients": est.clients_[sampled].tolist(),
            "bytes_up": result.bytes_up,
            "wall_time": time.perf_counter() - tic,
            "lr": lr.shared,
            **({} if private is None else private.account(average)),
        }

    return run_one


def _probe_loss(est, shared, data: ClientData, sampled: np.ndarray, criterion: Criterion, probe,
                n: int = 256) -> float:
    """The loss of the model after a round on up to ``n`` rows spread over its clients' rows: the
    logits can overflow with finite weights. The round moved the shared part and these clients'
    personal parts, and its own clients' rows show both; their number grows with the round's work,
    so a round of one client pays for one small forward pass (the whole data's would cost as much as
    that client's local steps). ``probe``: the module's ``ModuleCall`` and buffers."""
    counts = data.counts[sampled]
    total = int(counts.sum())
    if total == 0:  # Poisson sampling (privacy) can sample nobody
        return 0.0
    k = min(n, total)
    position = np.arange(k) * (total - 1) // max(k - 1, 1)  # k distinct rows of ``total``, evenly spread
    ends = np.cumsum(counts)
    which = np.searchsorted(ends, position, side="right")  # each row's place in ``sampled``
    rows = data.offsets[sampled][which] + position - (ends - counts)[which]
    device = data.X.device
    index = torch.as_tensor(rows, device=device)
    call, buffers = probe
    return mean_loss(est.module_, buffers, shared, est.personal_params_, data.X[index], data.y[index],
                     torch.as_tensor(sampled[which], device=device), criterion, call=call)


def _limit(criterion: Criterion, reference) -> float:
    """The loss above which a round has diverged: none in a stage's first round (unscaled features
    can start far above the loss of guessing)."""
    if reference is None:
        return math.inf
    return BLOWUP * max(reference, criterion.guess + 1.0)


#: A round whose loss exceeds this many times the stage's first (at least the loss of guessing
#: uniformly, plus one) has diverged, even if every number is still finite.
BLOWUP = 100.0


def _divergence(est, result, loss: float, reference, shared, sampled_personal, lr, criterion: Criterion) -> str:
    """What diverged in a round, with the setting to lower, or ``""``."""
    limit = _limit(criterion, reference)
    rates = f"lr (now {lr.shared:g})" + (f" or personal_lr (now {lr.personal:g})" if est.personal_lr else "")
    if not result.finite or not math.isfinite(loss):
        return f"the training loss became NaN or infinite. Lower {rates}, or scale the features."
    if loss > limit:
        return (f"the training loss rose to {loss:.4g}, over {BLOWUP:g} times its start ({limit / BLOWUP:.4g}). "
                f"Lower {rates}, or scale the features.")
    if not all(torch.isfinite(v).all() for v in sampled_personal.values()):
        return (f"the personal parameters became NaN or infinite. Lower "
                f"{'personal_lr' if est.personal_lr else 'lr'} (now {lr.personal:g}).")
    if not all(torch.isfinite(v).all() for v in shared.values()):
        return ("the server's step made the shared parameters NaN or infinite. Lower server_lr (now "
                f"{est.server_lr:g}) or the server optimizer's lr.")
    return ""
