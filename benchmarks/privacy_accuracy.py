"""Client accuracy against epsilon: whole-model DP-FedAvg against DP on the shared part only.

For each data set, seed and epsilon, four models are trained with the same user-level DP-FedAvg
(Poisson sampling of ``--per-round`` clients out of ``--clients`` in expectation, each client's
update clipped to ``--clip``, Gaussian noise calibrated with ``dp-accounting``'s RDP accountant so
that ``--rounds`` rounds spend epsilon at ``--delta``):

- ``fedavg``: ``split="none"``, the whole model is shared and privatized;
- ``head``, ``input``, ``adapters``: partial personalization (FedAlt), only the shared part is sent
  and privatized, the personal part stays on the client.

Epsilon ``inf`` is the same training with clipping and no noise; ``--reference`` adds ``none``, the
non-private fit (``privacy=None``, fixed-size sampling, uniform weights). Each client is evaluated on its own
held-out rows (30 %); the table gives the mean over seeds of the mean and of the 10th percentile
of client accuracy (with the standard deviation over seeds).

Data sets: ``digits``, sklearn's digits dealt to ``--clients`` clients with
``pfedest.datasets.federate`` with label skew (Dirichlet class proportions, concentration 0.3:
most clients hold two or three digits);
``covariate``, ``pfedest.datasets.make_shifted_clients`` with per-client affine feature shifts and
no label shift.

Run: ``python benchmarks/privacy_accuracy.py --seeds 10 --reference --data digits`` and the same
with ``--data covariate`` (the tables of docs/guide/privacy.rst; 9 and 11 minutes on 2 shared
cores); ``--local`` adds local training alone; ``--quick`` for a smoke run.
"""

import argparse
import json
import logging
import math
import time

import numpy as np
import torch
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import federate, make_shifted_clients
from pfedest.evaluation.report import client_accuracies
from pfedest.privacy import DifferentialPrivacy, calibrate_noise, round_event

METHODS = {"fedavg": "none", "head": "head", "input": "input", "adapters": "adapters"}
EPSILONS = (1.0, 3.0, 8.0, math.inf)
LABEL_SKEW = 0.3  # digits: each client holds mostly two or three digits
REFERENCE = None  # --reference adds the non-private fit as a column


def load(name, n_clients, seed):
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X, y, c = federate(X / 16.0, y, n_clients=n_clients, label_skew=LABEL_SKEW, random_state=seed)
    else:
        X, y, c = make_shifted_clients(n_clients=n_clients, n_samples_per_client=(20, 60), label_shift=0.0,
                                       feature_shift=1.0, random_state=seed)
    return train_test_split(X, y, c, test_size=0.3, stratify=c, random_state=seed)


def noise_for(epsilon, args):
    if epsilon is None or math.isinf(epsilon):
        return 0.0
    return calibrate_noise(epsilon, args.delta, args.rounds,
                           lambda z: round_event("poisson", args.clients, args.per_round, z))


def fit_one(data, method, epsilon, z, seed, args):
    X_tr, X_te, y_tr, y_te, c_tr, c_te = data
    privacy = None if epsilon is None else DifferentialPrivacy(clip=args.clip, noise_multiplier=z, delta=args.delta)
    est = PartialPersonalizedClassifier(
        split=METHODS.get(method, "full"), n_rounds=args.rounds, clients_per_round=args.per_round, lr=args.lr, tol=None,
        hidden_layer_sizes=tuple(args.hidden), batch_size=args.batch_size, weighting="uniform", privacy=privacy,
        random_state=seed)
    try:
        est.fit(X_tr, y_tr, client_ids=c_tr)
        diverged = False
    except FloatingPointError:
        # the noise's random walk blew the loss up: the estimator keeps the model of the round
        # before, which is scored as it is (a run that ends early spends less epsilon)
        diverged = True
    _, _, acc = client_accuracies(est, X_te, y_te, c_te)
    spent = est.history_[-1]["epsilon"] if privacy is not None else None
    return float(acc.mean()), float(np.quantile(acc, 0.1)), spent, diverged


def main(argv=None):
    """Run the grid; print the tables (``--json``: every run's numbers)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", nargs="+", default=["digits", "covariate"])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--json", default=None, help="write every run's numbers here")
    parser.add_argument("--reference", action="store_true", help="also the non-private fit (privacy=None)")
    parser.add_argument("--local", action="store_true", help="also local training alone (split='full')")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 10 rounds, digits only")
    args = parser.parse_args(argv)
    args.epsilons = tuple(args.epsilons) + ((REFERENCE,) if args.reference else ())
    if args.quick:
        args.seeds, args.rounds, args.data = min(args.seeds, 2), 10, ["digits"]
    logging.getLogger("absl").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # tiny models: more threads cost more than they bring
    tic = time.perf_counter()
    noise = {eps: noise_for(eps, args) for eps in args.epsilons}
    print(f"clients {args.clients}, {args.per_round} a round (Poisson), {args.rounds} rounds, batch {args.batch_size}, "
          f"lr {args.lr:g}, clip {args.clip:g}, hidden {args.hidden}")
    print(f"noise multipliers for {args.rounds} rounds, q={args.per_round}/{args.clients}, delta={args.delta:g}: "
          + ", ".join(f"eps={e}: z={z:.3f}" for e, z in noise.items() if e is not None))
    runs = []
    for name in args.data:
        for seed in range(args.seeds):
            data = load(name, args.clients, seed)
            for method in args.methods:
                for eps in args.epsilons:
                    mean, p10, spent, diverged = fit_one(data, method, eps, noise[eps], seed, args)
                    runs.append(dict(data=name, seed=seed, method=method, epsilon=eps, spent=spent, mean=mean,
                                     p10=p10, diverged=diverged))
                print(f"    {name} seed {seed} {method} done at {time.perf_counter() - tic:.0f} s", flush=True)
            if args.local:  # every parameter personal: nothing is sent, the release spends epsilon 0
                mean, p10, _, _ = fit_one(data, "local", None, 0.0, seed, args)
                runs.append(dict(data=name, seed=seed, method="local", epsilon=0.0, spent=0.0, mean=mean, p10=p10,
                                 diverged=False))
            print(f"  {name} seed {seed} done at {time.perf_counter() - tic:.0f} s", flush=True)
    print_table(runs, args)
    print(f"total time {time.perf_counter() - tic:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "noise": {str(k): v for k, v in noise.items()}, "runs": runs}, f, indent=1)


def label(eps):
    return "none" if eps is None else ("inf" if math.isinf(eps) else f"{eps:g}")


def print_table(runs, args):
    for name in args.data:
        print(f"\n{name}: client accuracy, mean (sd over {args.seeds} seeds) / 10th percentile, by epsilon; "
              "[kd]: k runs stopped early, diverged")
        print("| method | " + " | ".join(f"eps={label(e)}" for e in args.epsilons) + " |")
        print("|---" * (len(args.epsilons) + 1) + "|")
        for method in args.methods:
            cells = []
            for eps in args.epsilons:
                sel = [r for r in runs if r["data"] == name and r["method"] == method and r["epsilon"] == eps]
                m, p = np.array([r["mean"] for r in sel]), np.array([r["p10"] for r in sel])
                stopped = sum(r["diverged"] for r in sel)
                cells.append(f"{m.mean():.3f} ({m.std():.3f}) / {p.mean():.3f}" + (f" [{stopped}d]" if stopped else ""))
            print(f"| {method} | " + " | ".join(cells) + " |")
        local = [r for r in runs if r["data"] == name and r["method"] == "local"]
        if local:
            m, p = np.array([r["mean"] for r in local]), np.array([r["p10"] for r in local])
            print(f"local training alone (split='full', nothing sent: epsilon 0): {m.mean():.3f} ({m.std():.3f}) / "
                  f"{p.mean():.3f}")
        print(f"\n{name}: mean client accuracy minus FedAvg's at the same epsilon, paired by seed: mean "
              "[95 % t-interval]; and the accuracy lost from eps=inf, mean over seeds")
        print("| method | " + " | ".join(f"eps={label(e)}" for e in args.epsilons) + " | lost at eps="
              + ", ".join(label(e) for e in args.epsilons if e is not None and not math.isinf(e)) + " |")
        print("|---" * (len(args.epsilons) + 2) + "|")

        def accuracy(method, eps):
            sel = sorted((r for r in runs if r["data"] == name and r["method"] == method and r["epsilon"] == eps),
                         key=lambda r: r["seed"])
            return np.array([r["mean"] for r in sel])

        for method in args.methods:
            cells = []
            for eps in args.epsilons:
                diff = accuracy(method, eps) - accuracy("fedavg", eps)
                half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0
                cells.append(f"{diff.mean():+.3f} [{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}]")
            lost = [float((accuracy(method, math.inf) - accuracy(method, e)).mean())
                    for e in args.epsilons if e is not None and not math.isinf(e)] if math.inf in args.epsilons else []
            print(f"| {method} | " + " | ".join(cells) + " | " + ", ".join(f"{v:.3f}" for v in lost) + " |")


if __name__ == "__main__":
    main()
