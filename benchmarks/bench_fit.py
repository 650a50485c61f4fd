"""Seconds per round of ``PartialPersonalizedClassifier.fit`` end to end, beside the engine alone and
the fastest per-client loop, with a breakdown of where a round's time goes.

Workload: ``bench_engine.py``'s (FedAlt, split="head", 64 rows per client, 5 personal then 5 shared
steps of batch 16, lr 0.05, synthetic data, an MLP on 64 features), ``--clients`` clients a round out
of ``max(--population, clients)``.

For each size one ``fit`` runs ``--warmup + --rounds`` rounds. A callback times each of its rounds
(``on_round_begin`` to ``on_round_end``: sampling, draws, local updates, averaging, the divergence
checks and the history record) and, after each one, runs one round of every other contender on its
own copy of the state, so all contenders are interleaved round by round in one process (the loop
first in every other round: what runs just before a contender warms or cools the caches for it):

- ``engine``: :func:`pfedest.core.rounds.run_round` with the engine and compile setting the fit
  resolved, the same keyed draws (``RoundKeys``) and client sampling as the fit.
- ``phases``: the same round written out phase by phase, synchronising the device after each
  (draws, transfers, client updates, averaging): the breakdown. ``bookkeeping`` is the fit's
  median round minus the engine's: what the estimator adds around ``run_round``.
- ``fastest loop``: ``bench_engine.py``'s honest baseline (one reused module, ``load_state_dict``,
  a fresh SGD per client), with the same keyed draws. Above ``--max-loop-clients`` it trains that
  many of the round's clients and its time is scaled by clients / that many (marked "extrap.").

A ``-long`` variant plans a fit of 2,000 rounds and stops it after the timed ones, so that
``compile="auto"`` decides as for a long fit (it compiles on CUDA). The first ``--warmup`` rounds
are excluded; what they cost beyond a timed round is reported apart as "first rounds" (one-time
set-up and, with ``compile``, the compile time).

Examples
--------
    python benchmarks/bench_fit.py                              # CPU, 10 / 100 / 1,000 clients
    python benchmarks/bench_fit.py --clients 100 --rounds 9 --variants defaults,loop
    python benchmarks/bench_fit.py --device cuda --clients 10,100,1000,10000 --mlp-hidden 192,192
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as be  # noqa: E402  (the shared workload and the fastest loop)

from pfedest import PartialPersonalizedClassifier  # noqa: E402
from pfedest.callbacks import Callback  # noqa: E402
from pfedest.core.algorithms import ALGORITHMS, StepSizes  # noqa: E402
from pfedest.core.engine import auto_chunk_size, bytes_per_client, make_engine  # noqa: E402
from pfedest.core.model import make_loss  # noqa: E402
from pfedest.core.precision import autocast_loss  # noqa: E402
from pfedest.core.rounds import draw_batches, run_round  # noqa: E402
from pfedest.core.sampling import RoundKeys, sample_clients  # noqa: E402
from pfedest.core.server import ServerOptimizer, WeightedAverage  # noqa: E402
from pfedest.nn.modules import MLP  # noqa: E402

PHASES = ("draws", "transfers", "client updates", "averaging")
LONG_FIT = 2000  # rounds a "-long" variant plans (and stops early): compile="auto" compiles such a fit on CUDA
VARIANTS = {  # name -> estimator settings beyond the workload's; "-long": planned as a long fit
    "defaults": {},
    "defaults-long": {},
    "loop": {"engine": "loop"},
    "vmap": {"engine": "vmap"},
    "compile": {"compile": True},
    "bf16": {"precision": "bf16"},
    "compile+bf16": {"compile": True, "precision": "bf16"},
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Workload:
    """Data, model and the fit's resolved settings, shared by every contender of one size."""

    def __init__(self, args, m, device):
        self.m, self.device, self.args = m, device, args
        self.population = max(args.population, m)
        hidden = tuple(int(h) for h in args.mlp_hidden.split(","))
        self.factory = lambda n_features, n_classes: MLP(n_features, n_classes, hidden)
        g = np.random.default_rng(args.seed)
        n = self.population * be.ROWS_PER_CLIENT
        self.X = g.standard_normal((n, args.mlp_features), dtype=np.float32)
        self.y = g.integers(0, be.N_CLASSES, n)
        self.client_ids = np.repeat(np.arange(self.population), be.ROWS_PER_CLIENT)

    def estimator(self, n_rounds, callbacks, **settings):
        return PartialPersonalizedClassifier(
            self.factory, split="head", algorithm="fedalt", clients_per_round=self.m,
            personal_steps=be.STEPS["personal"], shared_steps=be.STEPS["shared"], batch_size=be.BATCH, lr=be.LR,
            tol=None, n_rounds=n_rounds, device=self.device, random_state=self.args.seed, callbacks=callbacks,
            **settings)


class State:
    """A contender's own copy of the fit's starting state (shared dict, personal stacked)."""

    def __init__(self, est):
        self.shared = {k: v.clone() for k, v in est.shared_params_.items()}
        self.personal = {k: v.clone() for k, v in est.personal_params_.items()}


class EngineRound:
    """``run_round`` as the fit calls it, without the estimator around it."""

    def __init__(self, est, data_X, data_y, counts, offsets, seed):
        self.loss = autocast_loss(make_loss(est.module_, dict(est.module_.named_buffers()), data_X, data_y),
                                  est.device_, est.precision)
        self.engine = make_engine(est.engine_, self.loss, est.shared_params_, compile=resolved_compile(est))
        self.counts, self.offsets, self.seed, self.device = counts, offsets, seed, est.device_
        self.chunk = est.max_clients_per_batch or auto_chunk_size(
            est.device_, bytes_per_client(est.module_, data_X[:1], be.BATCH))
        self.present = np.arange(len(counts))

    def sampled(self, round_number, m):
        return sample_clients(np.random.default_rng([self.seed, round_number]), self.present, m)

    def round(self, state, round_number, m):
        sampled = self.sampled(round_number, m)
        state.shared, _ = run_round(
            algorithm=ALGORITHMS["fedalt"], engine=self.engine, shared=state.shared, personal_state=state.personal,
            counts=self.counts, offsets=self.offsets, sampled=sampled, rng=RoundKeys(self.seed, round_number),
            batch_size=be.BATCH, steps=be.STEPS, lr=StepSizes(be.LR, be.LR), chunk_size=self.chunk,
            device=self.device, weights=self.counts)

    def phases(self, state, round_number, m):
        """The same round, phase by phase, the device synchronised after each: seconds per phase."""
        dev, out = self.device, dict.fromkeys(PHASES, 0.0)
        tic = time.perf_counter()
        sampled = self.sampled(round_number, m)
        batches = draw_batches(ALGORITHMS["fedalt"], RoundKeys(self.seed, round_number), self.counts[sampled],
                               be.BATCH, be.STEPS, keys=sampled)
        sync(dev)
        out["draws"] += time.perf_counter() - tic
        average = WeightedAverage()
        for start in range(0, len(sampled), self.chunk):
            tic = time.perf_counter()
            chunk = slice(start, start + self.chunk)
            clients = sampled[chunk]
            streams = {}
            for name, (idx, mask) in batches.items():
                off = torch.as_tensor(self.offsets[clients], device=dev) if torch.is_tensor(idx) \
                    else self.offsets[clients]
                streams[name] = (torch.as_tensor(idx[chunk] + off[:, None, None], device=dev),
                                 torch.as_tensor(mask[chunk], device=dev))
            rows = torch.as_tensor(clients, device=dev)
            personal = {k: v[rows] for k, v in state.personal.items()}
            sync(dev)
            out["transfers"] += time.perf_counter() - tic
            tic = time.perf_counter()
            client_shared, client_personal, (sums, _) = self.engine.local_updates(
                ALGORITHMS["fedalt"], state.shared, personal, streams, StepSizes(be.LR, be.LR))
            bool(torch.isfinite(sums.sum()))
            sync(dev)
            out["client updates"] += time.perf_counter() - tic
            tic = time.perf_counter()
            for k, v in client_personal.items():
                state.personal[k][rows] = v
            average.add(client_shared, torch.as_tensor(self.counts[clients], dtype=torch.float32, device=dev))
            sync(dev)
            out["averaging"] += time.perf_counter() - tic
        tic = time.perf_counter()
        state.shared = ServerOptimizer("sgd", lr=1.0).step(state.shared, average.mean())
        sync(dev)
        out["averaging"] += time.perf_counter() - tic
        return out


def resolved_compile(est):
    """The compile setting the fit ran with (``compile_`` where the estimator resolves ``"auto"``)."""
    return bool(getattr(est, "compile_", est.compile))


class FastestLoopRound:
    """``bench_engine.FastestLoop`` on the fit's data, with the fit's keyed draws."""

    def __init__(self, est, X, y, counts, offsets, seed, max_clients):
        module = est.module_
        self.inner = be.FastestLoop(module, est.personal_names_, X, y, counts, offsets, est.device_)
        self.seed, self.max_clients, self.present = seed, max_clients, np.arange(len(counts))
        self.counts, self.offsets, self.device = counts, offsets, est.device_

    def round(self, state, round_number, m):
        """One round of ``min(m, max_clients)`` of the round's clients; returns the time scale factor."""
        sampled = sample_clients(np.random.default_rng([self.seed, round_number]), self.present, m)
        sampled = sampled[:self.max_clients]
        batches = draw_batches(ALGORITHMS["fedalt"], RoundKeys(self.seed, round_number), self.counts[sampled],
                               be.BATCH, be.STEPS, keys=sampled)
        first = torch.as_tensor(self.offsets[sampled], device=self.device)[:, None, None]
        streams = {name: torch.as_tensor(idx, device=self.device) + first for name, (idx, _) in batches.items()}
        state.shared = self.inner.train(state.shared, state.personal, sampled, streams)
        return m / len(sampled)


RUNNERS = {}  # key -> SizeRunner: fit clones its callbacks, so they hold a key, not the runner


class Interleave(Callback):
    """Times the fit's rounds; after each, runs one round of every other contender."""

    def __init__(self, key=None):
        self.key = key

    @property
    def runner(self):
        return RUNNERS[self.key]

    def on_round_begin(self, estimator, round_number, stage):
        sync(estimator.device_)
        self.tic, self.cpu_tic = time.perf_counter(), time.thread_time()

    def on_round_end(self, estimator, record):
        sync(estimator.device_)
        self.runner.fit_times.append(time.perf_counter() - self.tic)
        self.runner.fit_cpu.append(time.thread_time() - self.cpu_tic)
        self.runner.after_fit_round(estimator, record["round"])
        if len(self.runner.fit_times) >= self.runner.args.warmup + self.runner.args.rounds:
            estimator.request_stop("bench_fit: the timed rounds are done")


class SizeRunner:
    """All contenders for one size and one fit variant."""

    def __init__(self, work, variant, args):
        self.work, self.variant, self.args = work, variant, args
        self.fit_times, self.engine_times, self.loop_times, self.phase_times = [], [], [], []
        self.fit_cpu, self.loop_cpu = [], []  # CPU time of this thread: what a quiet machine's wall time would be
        self.others = None

    def setup(self, est):
        d = est.device_
        counts = np.full(self.work.population, be.ROWS_PER_CLIENT, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # the fit sorts rows by client; ours already are, one block of 64 rows per client
        X = torch.as_tensor(self.work.X, device=d)
        y = torch.as_tensor(self.work.y, device=d)
        seed = self.args.seed  # an int random_state is the seed of the fit's draws
        self.engine = EngineRound(est, X, y, counts, offsets, seed)
        self.loop = FastestLoopRound(est, X, y, counts, offsets, seed, self.args.max_loop_clients) \
            if self.args.loop else None
        self.states = {"engine": State(est), "phases": State(est), "loop": State(est)}

    def after_fit_round(self, est, round_number):
        if self.others is None:
            self.setup(est)
            self.others = True
        m, d = self.work.m, est.device_
        # Every other round the loop runs first: what runs just before a contender leaves the caches
        # warm or cold for it, and the fit's round always follows the last of these.
        order = ("loop", "engine") if round_number % 2 else ("engine", "loop")
        with torch.enable_grad():
            for contender in order:
                if contender == "engine":
                    sync(d)
                    tic = time.perf_counter()
                    self.engine.round(self.states["engine"], round_number, m)
                    sync(d)
                    self.engine_times.append(time.perf_counter() - tic)
                    self.phase_times.append(self.engine.phases(self.states["phases"], round_number, m))
                elif self.loop is not None:
                    sync(d)
                    tic, cpu_tic = time.perf_counter(), time.thread_time()
                    scale = self.loop.round(self.states["loop"], round_number, m)
                    sync(d)
                    self.loop_times.append((time.perf_counter() - tic) * scale)
                    self.loop_cpu.append((time.thread_time() - cpu_tic) * scale)
                    self.loop_scale = scale

    def run(self):
        args = self.args
        n_rounds = LONG_FIT if self.variant.endswith("-long") else args.warmup + args.rounds
        RUNNERS[id(self)] = self
        est = self.work.estimator(n_rounds, [("interleave", Interleave(id(self)))], **VARIANTS[self.variant])
        tic = time.perf_counter()
        est.fit(self.work.X, self.work.y, self.work.client_ids)
        self.total = time.perf_counter() - tic
        self.est = est
        return self

    def row(self):
        w = self.args.warmup
        med = lambda xs: statistics.median(xs[w:])  # noqa: E731
        fit_s, eng_s = med(self.fit_times), med(self.engine_times)
        phases = {p: statistics.median([t[p] for t in self.phase_times[w:]]) for p in PHASES}
        loop_s = med(self.loop_times) if self.loop_times else None
        cpu_ratio = med(self.loop_cpu) / med(self.fit_cpu) if self.loop_cpu else None
        n_params = sum(p.numel() for p in self.est.module_.parameters())
        steps = sum(be.STEPS.values())
        # PERFORMANCE.md's traffic model: about 20 bytes per fp32 parameter per client step
        floor = 20 * n_params * self.work.m * steps / (self.args.bandwidth * 1e12) if self.args.bandwidth else None
        return dict(
            floor=floor, params=n_params,
            clients=self.work.m, variant=self.variant, engine=self.est.engine_, compile=resolved_compile(self.est),
            fit=fit_s, fit_range=(min(self.fit_times[w:]), max(self.fit_times[w:])), engine_s=eng_s, loop=loop_s,
            loop_extrap=self.loop_times and self.loop_scale > 1, phases=phases, bookkeeping=fit_s - eng_s,
            first=sum(self.fit_times[:w]) - w * fit_s, total=self.total, fit_cpu=med(self.fit_cpu),
            cpu_ratio=cpu_ratio)


def fmt(s):
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def render(rows, show_floor=False):
    head = ["clients/round", "fit variant", "engine", "fit s/round (range)", "engine alone", "fastest loop",
            "fit vs loop", "fit vs engine", "draws", "transfers", "client updates", "averaging", "bookkeeping",
            "first rounds", "fit CPU time/round", "fit vs loop, CPU time"] + (["vs memory floor"] if show_floor else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = "-" if r["loop"] is None else f"{r['loop'] / r['fit']:.1f}x" + (
            " (extrap.)" if r["loop_extrap"] else "")
        eng = r["engine"] + ("+compile" if r["compile"] else "")
        cells = [f"{r['clients']:,}", r["variant"], eng, f"{fmt(r['fit'])} ({fmt(r['fit_range'][0])}-"
                 f"{fmt(r['fit_range'][1])})", fmt(r["engine_s"]), fmt(r["loop"]), ratio,
                 f"{r['engine_s'] / r['fit']:.2f}", *[fmt(r["phases"][p]) for p in PHASES], fmt(r["bookkeeping"]),
                 fmt(r["first"]), fmt(r["fit_cpu"]), "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.1f}x"]
        if show_floor:
            cells.append(f"{r['fit'] / r['floor']:.2f}x ({fmt(r['floor'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--clients", default="10,100,1000", help="comma-separated clients per round")
    p.add_argument("--population", type=int, default=1000, help="clients in the federation (at least --clients)")
    p.add_argument("--variants", default="defaults",
                   help=f"comma-separated fit settings to time, of {sorted(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per fit (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="rounds excluded from the medians")
    p.add_argument("--max-loop-clients", type=int, default=100,
                   help="above this the loop trains this many of the round's clients, its time scaled up")
    p.add_argument("--no-loop", dest="loop", action="store_false", help="do not time the fastest loop")
    p.add_argument("--mlp-features", type=int, default=64)
    p.add_argument("--mlp-hidden", default="64,64",
                   help="hidden widths (64,64: 9k parameters, the CPU figures of PERFORMANCE.md; "
                        "192,192: the 51k MLP of the GPU tables)")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="device memory bandwidth in TB/s: adds the fit's time over the traffic floor "
                        "(20 bytes per parameter per client step, PERFORMANCE.md)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",")]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; choose from {sorted(VARIANTS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked, but CUDA is not available")
    torch.set_num_threads(args.threads)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    start = time.perf_counter()
    print(f"# pfedest fit benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    n_params = sum(p.numel() for p in MLP(args.mlp_features, be.N_CLASSES,
                                          tuple(int(h) for h in args.mlp_hidden.split(","))).parameters())
    print(f"torch {torch.__version__}, device {device} ({dev_name}), torch threads {torch.get_num_threads()}, "
          f"MLP {args.mlp_features}-{args.mlp_hidden.replace(',', '-')}-{be.N_CLASSES} ({n_params:,} parameters)")
    print(f"workload: FedAlt, split=head, {be.ROWS_PER_CLIENT} rows per client, batch {be.BATCH}, steps {be.STEPS}, "
          f"lr {be.LR}; clients a round {args.clients} of max({args.population}, clients); median of "
          f"{args.rounds} rounds after {args.warmup} warm-up rounds, contenders interleaved round by round",
          flush=True)
    rows = []
    for m in args.clients:
        work = Workload(args, m, device)
        for variant in args.variants:
            runner = SizeRunner(work, variant, args).run()
            rows.append(runner.row())
            r = rows[-1]
            print(f"  {m} clients, fit {variant} ({r['engine']}{'+compile' if r['compile'] else ''}): "
                  f"fit {fmt(r['fit'])}, engine {fmt(r['engine_s'])}, loop {fmt(r['loop'])}"
                  + (f" ({r['loop'] / r['fit']:.1f}x)" if r["loop"] else "") + f"; whole fit {r['total']:.1f} s",
                  flush=True)
            print("    " + render([r], show_floor=bool(args.bandwidth)).splitlines()[-1], flush=True)
    print()
    print(render(rows, show_floor=bool(args.bandwidth)))
    print()
    print("fit s/round: median (and range) of the timed rounds of one fit, on_round_begin to on_round_end. "
          "engine alone: run_round with the fit's engine, draws and chunks. phases: that round written out with "
          "a device sync after each phase (their sum exceeds 'engine alone' by the syncs). bookkeeping: fit minus "
          "engine alone (sampling state, divergence checks, the probe loss, the history record). first rounds: "
          f"what the {args.warmup} warm-up rounds took beyond as many timed ones (set-up, compiling). fastest loop "
          f"above {args.max_loop_clients} clients: that many clients timed, scaled (extrap.). CPU time: of the "
          "benchmark's thread (time.thread_time), a quiet machine's wall time for 1-thread CPU runs; on a shared "
          "machine the wall time also holds the waits for a core (on CUDA it misses the device's time).")
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
