"""Seconds per round of pfedest's engines against the fastest plain PyTorch loop.

Workload (shared/PERFORMANCE.md): FedAlt, split="head", every sampled client holds 64 rows and
takes 5 personal steps (shared block frozen) then 5 shared steps (personal block frozen), batch 16,
synthetic random data. Three engines run the same rounds on the same data with the same clients and
minibatch indices, interleaved round by round in one process:

- fastest loop: the honest baseline of PERFORMANCE.md, what PFLlib-style simulators do at best: one
  ``nn.Module`` reused, ``load_state_dict`` of the client's (shared + personal) state, a fresh
  ``torch.optim.SGD``, plain ``loss.backward()`` steps, clients one after another.
- pfedest loop: ``pfedest.core.rounds.run_round(engine="loop")``.
- pfedest vmap: ``pfedest.core.rounds.run_round(engine="vmap")`` (all sampled clients in one chunk).

Each configuration first runs one warm-up round from an identical state in every engine and checks
that they return the same averaged shared parameters (and personal parameters); then the median of
``--rounds`` timed rounds is reported.

Examples
--------
    python benchmarks/bench_engine.py --quick
    python benchmarks/bench_engine.py --device cuda --threads 1 --peak-tflops 67
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.core.engine import make_engine
from pfedest.core.rounds import run_round
from pfedest.core.model import make_loss
from pfedest.nn.modules import MLP, SmallCNN
from pfedest.core.sampling import minibatch_stream, sample_clients
from pfedest.nn.splits import HeadSplit

ROWS_PER_CLIENT = 64
BATCH = 16
STEPS = {"personal": 5, "shared": 5}
N_CLASSES = 10
LR = 0.05
TOLERANCE = 1e-4  # relative, on the averaged shared parameters

LOOP_ENGINES = ("fastest loop", "pfedest loop")


# ----------------------------------------------------------------------------- models and data
def build_models(args):
    """(label, module factory, input shape of one row, FLOPs per trained row or None)."""
    hidden = tuple(int(h) for h in args.mlp_hidden.split(","))
    models = []
    if "mlp" in args.models:
        models.append(("MLP", lambda: MLP(args.mlp_features, N_CLASSES, hidden), (args.mlp_features,)))
    if "cnn" in args.models:
        c = args.cnn_channels
        models.append(("SmallCNN", lambda: SmallCNN(c, N_CLASSES), (c, 16, 16)))
    return models


def forward_macs(module: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one row's forward pass through the Conv2d and Linear layers."""
    macs = 0

    def hook(mod, inputs, output):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs += output[0].numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return macs


def flops_per_row(label, module, input_shape, n_params):
    """Training FLOPs per row per step: 6 * params for the MLP, 6 * forward MACs for the CNN.

    Both count a full forward and backward pass (2 FLOPs per MAC forward, twice that backward);
    FedAlt's personal steps back-propagate only into the head, so this overestimates them.
    """
    if label == "MLP":
        return 6 * n_params
    return 6 * forward_macs(module, input_shape)


def make_data(n_clients, input_shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    n = n_clients * ROWS_PER_CLIENT
    X = torch.randn(n, *input_shape, generator=g).to(device)
    y = torch.randint(0, N_CLASSES, (n,), generator=g).to(device)
    counts = np.full(n_clients, ROWS_PER_CLIENT, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return X, y, counts, offsets


def init_state(module, personal_names, n_clients):
    """Shared dict and personal dict stacked over all clients, as the estimator's ``_initialize``."""
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    shared = {n: p for n, p in params.items() if n not in personal_names}
    personal = {n: params[n].expand(n_clients, *params[n].shape).clone() for n in personal_names}
    return shared, personal


def clone_state(shared, personal):
    return {k: v.clone() for k, v in shared.items()}, {k: v.clone() for k, v in personal.items()}


# ----------------------------------------------------------------------------- the three engines
class FastestLoop:
    """One reused module, load_state_dict, fresh SGD per client, plain backward: FedAlt."""

    def __init__(self, module, personal_names, X, y, counts, offsets, device):
        self.module = copy.deepcopy(module)
        self.params = dict(self.module.named_parameters())
        self.personal_names = list(personal_names)
        self.shared_names = [n for n in self.params if n not in personal_names]
        self.X, self.y, self.counts, self.offsets, self.device = X, y, counts, offsets, device

    def _set_trainable(self, names_on):
        for n, p in self.params.items():
            p.requires_grad_(n in names_on)

    def _phase(self, opt, idx_c):
        for step in range(idx_c.shape[0]):
            rows = idx_c[step]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.module(self.X[rows]), self.y[rows])
            loss.backward()
            opt.step()

    def round(self, shared, personal_state, rng, m):
        sampled = sample_clients(rng, np.arange(len(self.counts)), m)
        # Same draws, in the same order, as run_round: one stream per FedAlt stream name.
        streams = {}
        for name in ALGORITHMS["fedalt"].streams:
            idx, _mask = minibatch_stream(rng, self.counts[sampled], BATCH, STEPS[name])
            idx = idx + self.offsets[sampled][:, None, None]
            streams[name] = torch.as_tensor(idx, device=self.device)
        return self.train(shared, personal_state, sampled, streams)

    def train(self, shared, personal_state, sampled, streams):
        """FedAlt for the ``sampled`` clients on ``streams`` (global row indices ``[client, step, batch]``
        per stream); their personal rows are updated in place, the weighted mean of ``u`` returned."""
        total = {n: torch.zeros_like(v) for n, v in shared.items()}
        weight = 0.0
        for i, c in enumerate(sampled.tolist()):
            state = dict(shared)
            state.update({n: personal_state[n][c] for n in self.personal_names})
            self.module.load_state_dict(state)
            opt = torch.optim.SGD([{"params": [self.params[n] for n in self.shared_names], "lr": LR},
                                   {"params": [self.params[n] for n in self.personal_names], "lr": LR}], lr=LR)
            self._set_trainable(self.personal_names)  # personal block, shared frozen
            self._phase(opt, streams["personal"][i])
            self._set_trainable(self.shared_names)  # then shared block, new personal frozen
            self._phase(opt, streams["shared"][i])
            w = float(self.counts[c])
            with torch.no_grad():
                for n in self.shared_names:
                    total[n].add_(self.params[n], alpha=w)
                for n in self.personal_names:
                    personal_state[n][c] = self.params[n]
            weight += w
        return {n: t / weight for n, t in total.items()}


class PfedestEngine:
    def __init__(self, engine, module, X, y, counts, offsets, device, shared, chunk_size=None, compile=False):
        loss = make_loss(module, dict(module.named_buffers()), X, y)
        self.engine = make_engine(engine, loss, shared, compile=compile)
        self.counts, self.offsets, self.device, self.chunk_size = counts, offsets, device, chunk_size

    def round(self, shared, personal_state, rng, m):
        sampled = sample_clients(rng, np.arange(len(self.counts)), m)
        new_shared, _ = run_round(
            algorithm=ALGORITHMS["fedalt"], engine=self.engine, shared=shared, personal_state=personal_state,
            counts=self.counts, offsets=self.offsets, sampled=sampled, rng=rng, batch_size=BATCH,
            steps=STEPS, lr=StepSizes(shared=LR, personal=LR), server_lr=1.0,
            chunk_size=self.chunk_size, device=self.device)
        return new_shared


# ----------------------------------------------------------------------------- measuring
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(runner, state, seed, m, device):
    """Run one round on ``state`` (updated in place) and return its wall time in seconds."""
    rng = np.random.default_rng(seed)
    sync(device)
    tic = time.perf_counter()
    with torch.enable_grad():
        new_shared = runner.round(state[0], state[1], rng, m)
    sync(device)
    elapsed = time.perf_counter() - tic
    state[0] = new_shared
    return elapsed


def rel_diff(a, b):
    """Largest over tensors of ||a - b|| / ||b||."""
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)) for k in b)


def check_agreement(label, m, ref_name, ref_state, other_name, other_state, before_shared, sampled):
    shared_rel = rel_diff(other_state[0], ref_state[0])
    delta_rel = rel_diff({k: other_state[0][k] - before_shared[k] for k in before_shared},
                         {k: ref_state[0][k] - before_shared[k] for k in before_shared})
    personal_rel = rel_diff({k: v[sampled] for k, v in other_state[1].items()},
                            {k: v[sampled] for k, v in ref_state[1].items()})
    moved = min(float((ref_state[0][k] - before_shared[k]).norm()) for k in before_shared)
    ok = shared_rel <= TOLERANCE and personal_rel <= TOLERANCE and moved > 0
    line = (f"check {label}, {m} clients: {other_name} vs {ref_name} after one round: averaged shared params "
            f"rel. diff {shared_rel:.1e} (of the round's update: {delta_rel:.1e}), personal {personal_rel:.1e} "
            f"-> {'OK' if ok else 'MISMATCH'} (tolerance {TOLERANCE:.0e})"
            + ("" if moved > 0 else "; the round left some shared tensor unchanged"))
    print(line, flush=True)
    if not ok:
        raise SystemExit(f"FAILED: {line}")


def bench_model(label, factory, input_shape, clients, args, device, results):
    torch.manual_seed(args.seed)
    module, personal_names = HeadSplit().resolve(factory())
    n_params = sum(p.numel() for p in module.parameters())
    fpr = flops_per_row(label, module, input_shape, n_params)
    module = module.to(device)
    population = max(clients)
    X, y, counts, offsets = make_data(population, input_shape, device, args.seed)
    init = init_state(module, personal_names, population)
    runners = {
        "fastest loop": FastestLoop(module, personal_names, X, y, counts, offsets, device),
        "pfedest loop": PfedestEngine("loop", module, X, y, counts, offsets, device, init[0]),
        "pfedest vmap": PfedestEngine("vmap", module, X, y, counts, offsets, device, init[0], args.chunk_size),
    }
    if args.compile:
        runners["pfedest vmap+compile"] = PfedestEngine("vmap", module, X, y, counts, offsets, device, init[0],
                                                        args.chunk_size, compile=True)
    shape = "x".join(map(str, input_shape))
    name = f"{label} ({shape} in)"
    print(f"\n{name}: {n_params:,} parameters, personal = {personal_names}, "
          f"{fpr / 1e6:.3f} MFLOP per row per step", flush=True)

    per_client = {}  # engine -> (seconds per client, measured at m)
    todo = sorted(clients)
    basis_needed = [m for m in todo if m > args.max_loop_clients]
    if basis_needed and args.loop_above_max == "extrap" and not any(m <= args.max_loop_clients for m in todo):
        todo = [args.max_loop_clients] + todo  # measure the basis of the extrapolation, no row of its own

    for m in todo:
        engines = list(runners)
        measured = [e for e in engines if e not in LOOP_ENGINES or m <= args.max_loop_clients]
        states = {e: list(clone_state(*init)) for e in engines}
        # Warm-up round, identical start and seed for every engine: also the agreement check.
        warm_seed = args.seed * 1000 + m
        check = ["pfedest loop", "pfedest vmap"] + (["fastest loop"] if "fastest loop" in measured else []) \
            + [e for e in engines if "compile" in e]
        for e in check:
            timed_round(runners[e], states[e], warm_seed, m, device)
        sampled = sample_clients(np.random.default_rng(warm_seed), np.arange(population), m)
        note = "" if "pfedest loop" in measured else " (pfedest loop run once, untimed, for this check)"
        if note:
            print(f"check {name}, {m} clients:{note}")
        check_agreement(name, m, "pfedest loop", states["pfedest loop"], "pfedest vmap", states["pfedest vmap"],
                        init[0], sampled)
        for e in engines:
            if "compile" in e:
                check_agreement(name, m, "pfedest loop", states["pfedest loop"], e, states[e], init[0], sampled)
        if "fastest loop" in measured:
            check_agreement(name, m, "pfedest loop", states["pfedest loop"], "fastest loop",
                            states["fastest loop"], init[0], sampled)
        times = {e: [] for e in measured}
        for r in range(args.rounds):  # interleaved: each round runs every engine once
            for e in measured:
                times[e].append(timed_round(runners[e], states[e], warm_seed + 1 + r, m, device))
        med = {e: statistics.median(t) for e, t in times.items()}
        for e in measured:
            if e in LOOP_ENGINES:
                per_client[e] = (med[e] / m, m)
        if m not in clients:
            continue  # only the extrapolation basis
        row_times = {}
        for e in engines:
            if e in med:
                row_times[e] = (med[e], "")
            elif args.loop_above_max == "extrap" and e in per_client:
                sec, at = per_client[e]
                row_times[e] = (sec * m, f"(extrap. from {at})")
            else:
                row_times[e] = (None, "skipped")
        for e in engines:
            results.append(dict(model=name, params=n_params, clients=m, engine=e, seconds=row_times[e][0],
                                mark=row_times[e][1], baseline=row_times["fastest loop"][0],
                                baseline_mark=row_times["fastest loop"][1],
                                flops=fpr * BATCH * sum(STEPS.values()) * m))
        print(f"  {m} clients: " + ", ".join(
            f"{e} {t * 1e3:.1f} ms" if t is not None else f"{e} {mark}" for e, (t, mark) in row_times.items()
            if t is not None or mark) + f"   (median of {args.rounds})", flush=True)


def fmt_seconds(s):
    return f"{s:.4f}" if s < 1 else f"{s:.3f}" if s < 10 else f"{s:.1f}"


def render_table(results, show_flops, peak_tflops):
    head = ["model", "params", "clients/round", "engine", "s/round", "client-steps/s", "speed-up vs fastest loop"]
    if show_flops:
        head.append("achieved TFLOP/s" + (f" (% of {peak_tflops:g} peak)" if peak_tflops else ""))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    steps = sum(STEPS.values())
    for r in results:
        s, mark = r["seconds"], r["mark"]
        if s is None:
            cells = [mark, "-", "-"]
            flops_cell = "-"
        else:
            suffix = f" {mark}" if mark else ""
            cells = [fmt_seconds(s) + suffix, f"{r['clients'] * steps / s:,.0f}" + suffix]
            if r["baseline"] is None:
                cells.append("-")
            else:
                extrap = " (extrap.)" if (mark or r["baseline_mark"]) else ""
                cells.append(f"{r['baseline'] / s:.2f}x{extrap}")
            tf = r["flops"] / s / 1e12
            flops_cell = f"{tf:.3f}" + (f" ({100 * tf / peak_tflops:.1f}%)" if peak_tflops else "") + suffix
        row = [r["model"], f"{r['params']:,}", f"{r['clients']:,}", r["engine"], *cells]
        if show_flops:
            row.append(flops_cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--clients", type=str, default="10,100,1000", help="comma-separated clients per round")
    p.add_argument("--quick", action="store_true", help="only 10 and 100 clients per round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration (after one warm-up)")
    p.add_argument("--max-loop-clients", type=int, default=100,
                   help="above this many clients the two loop engines are not timed")
    p.add_argument("--loop-above-max", choices=["extrap", "skip"], default="extrap",
                   help="loop rows above --max-loop-clients: extrapolate from the per-client time at the "
                        "largest measured count, or skip them")
    p.add_argument("--models", type=str, default="mlp,cnn", help="comma-separated subset of mlp,cnn")
    p.add_argument("--mlp-features", type=int, default=64)
    p.add_argument("--mlp-hidden", type=str, default="192,192",
                   help="hidden widths; 64-192-192-10 has 51,466 parameters")
    p.add_argument("--cnn-channels", type=int, default=1, choices=[1, 3], help="input channels of the 16x16 images")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, for the FLOP/s column (CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="clients per batched chunk in pfedest's vmap engine (default: all sampled at once)")
    p.add_argument("--compile", action="store_true",
                   help="also time pfedest's vmap engine with torch.compile (compile time excluded: warm-up)")
    args = p.parse_args(argv)
    args.clients = sorted({int(c) for c in args.clients.split(",")})
    if args.quick:
        args.clients = [c for c in args.clients if c in (10, 100)] or [10, 100]
    args.models = [m.strip().lower() for m in args.models.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda asked, but CUDA is not available")
    torch.set_num_threads(args.threads)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# pfedest engine benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, Python {platform.python_version()}, device {device} ({dev_name}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"workload: FedAlt, split=head, {ROWS_PER_CLIENT} rows per client, batch {BATCH}, "
          f"steps {STEPS} = {sum(STEPS.values())} local steps per client, lr {LR}, synthetic data, fp32; "
          f"clients per round {args.clients}; median of {args.rounds} rounds after 1 warm-up; "
          f"loop engines above {args.max_loop_clients} clients: "
          f"{'extrapolated' if args.loop_above_max == 'extrap' else 'skipped'}", flush=True)
    results = []
    for label, factory, shape in build_models(args):
        bench_model(label, factory, shape, args.clients, args, device, results)
    print()
    print(render_table(results, show_flops=device.type == "cuda", peak_tflops=args.peak_tflops))
    print()
    notes = ["s/round: median wall time of one round (sampling, local updates, averaging).",
             f"client-steps/s: clients x {sum(STEPS.values())} local steps / s/round.",
             "speed-up: fastest loop's s/round / this engine's, measured in the same process with rounds interleaved."]
    if args.loop_above_max == "extrap":
        notes.append("'(extrap. from N)': not timed; the per-client time measured at N clients x clients.")
    else:
        notes.append("'skipped': not timed above --max-loop-clients.")
    if device.type == "cuda":
        notes.append("TFLOP/s: 6 x params (MLP) or 6 x forward MACs (CNN) x rows per step x steps x clients "
                     "/ s/round (counts a full backward for the personal steps too).")
    print(" ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
