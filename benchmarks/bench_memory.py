"""Peak memory and time of one round with many clients: does 10,000 clients x 100k parameters fit?

Each configuration runs in a fresh subprocess (so peaks do not add up) that fits
``PartialPersonalizedClassifier`` for one round on generated data and reports its peak resident
memory (``ru_maxrss``) and the round's wall time. The personal state of all clients lives in
stacked tensors; rounds process the sampled clients in chunks sized from free memory.

Examples
--------
    python benchmarks/bench_memory.py                 # CPU; measured figures: docs/guide/gpu.rst
    python benchmarks/bench_memory.py --clients 2000  # smaller
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from pfedest import PartialPersonalizedClassifier
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
rng = np.random.default_rng(0)
n = cfg["clients"] * cfg["rows"]
X = rng.standard_normal((n, cfg["features"]), dtype=np.float32)
y = rng.integers(0, 10, n)
c = np.repeat(np.arange(cfg["clients"]), cfg["rows"])
est = PartialPersonalizedClassifier(split=cfg["split"], hidden_layer_sizes=tuple(cfg["hidden"]), n_rounds=1,
                                    clients_per_round=cfg["per_round"], engine=cfg["engine"],
                                    device=cfg["device"], random_state=0)
tic = time.perf_counter()
est.fit(X, y, client_ids=c)
fit_s = time.perf_counter() - tic
n_params = sum(v.numel() for v in est.shared_params_.values()) + sum(v[0].numel() for v in est.personal_params_.values())
personal_bytes = sum(v.numel() * v.element_size() for v in est.personal_params_.values())
peak_gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and cfg["device"] != "cpu" else 0
print(json.dumps(dict(params=n_params, personal_gb=personal_bytes / 2**30, round_s=est.history_[0]["wall_time"],
                      fit_s=fit_s, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      peak_gpu_gb=peak_gpu / 2**30, data_gb=X.nbytes / 2**30)))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--rows", type=int, default=20, help="rows per client")
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--hidden", default="256,256", help="MLP hidden widths (128-256-256-10: 101k parameters)")
    p.add_argument("--splits", default="head,full")
    p.add_argument("--per-round", default="1000,10000", help="clients per round")
    p.add_argument("--engine", default="vmap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(f"{args.clients:,} clients x {args.rows} rows, {args.features} features, MLP hidden {args.hidden}, "
          f"engine={args.engine}, device={args.device}, {args.threads} threads; one round (one local epoch "
          "of personal steps, then of shared steps, batch 32)\n")
    print("| split | params | personal state (GiB) | clients/round | round (s) | peak RSS (GiB) | peak GPU (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for split in args.splits.split(","):
        for per_round in (int(m) for m in args.per_round.split(",")):
            cfg = dict(clients=args.clients, rows=args.rows, features=args.features, split=split,
                       hidden=[int(h) for h in args.hidden.split(",")], per_round=per_round, engine=args.engine,
                       device=args.device, threads=args.threads)
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode:
                print(f"| {split} | - | - | {per_round:,} | failed: {out.stderr.strip().splitlines()[-1]} | - | - |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {split} | {r['params']:,} | {r['personal_gb']:.2f} | {per_round:,} | {r['round_s']:.1f} | "
                  f"{r['peak_rss_gb']:.2f} | {r['peak_gpu_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
