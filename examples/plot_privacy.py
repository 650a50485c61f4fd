"""Accuracy against privacy: DP-FedAvg on the whole model or on the shared part only.

User-level differential privacy (``privacy=DifferentialPrivacy(...)``) clips each sampled
client's update of what it sends and lets the server add Gaussian noise; ``dp-accounting`` counts
the epsilon spent. FedAvg (``split="none"``) sends, and so privatizes, the whole network; a
personal output layer (``split="head"``) keeps its part on the client, out of reach of the noise.
On federated digits (label skew: most of the 100 clients hold two or three digits) both are trained
for the same rounds at each target epsilon, the noise multiplier set by ``target_epsilon``, and
every client is evaluated on its own held-out rows.

Run: ``python examples/plot_privacy.py`` (20 s on one core; the docs run a smaller
size). Writes ``privacy.png`` (``--out``). The table of ``docs/guide/privacy.rst``, over seeds and
on two data sets, comes from ``benchmarks/privacy_accuracy.py``.
"""

import argparse
import logging
import math

import matplotlib

matplotlib.use("Agg")  # writes a PNG, needs no display

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import federate
from pfedest.evaluation.report import client_accuracies
from pfedest.privacy import DifferentialPrivacy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="privacy.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these models are tiny: more threads cost more than they bring
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's numerical notes

    X, y = load_digits(return_X_y=True)
    X, y, c = federate(X / 16.0, y, n_clients=args.clients, label_skew=0.3, random_state=args.seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, stratify=c,
                                                          random_state=args.seed)
    results = {}
    for name, split in (("FedAvg, whole model private", "none"), ("personal head, shared part private", "head")):
        for eps in args.epsilons:
            privacy = (DifferentialPrivacy(clip=1.0, noise_multiplier=0.0, delta=1e-3) if math.isinf(eps)
                       else DifferentialPrivacy(clip=1.0, target_epsilon=eps, delta=1e-3))
            est = PartialPersonalizedClassifier(split=split, n_rounds=args.rounds, clients_per_round=args.per_round,
                                                hidden_layer_sizes=(32,), batch_size=8, tol=None, privacy=privacy,
                                                random_state=args.seed)
            est.fit(X_tr, y_tr, client_ids=c_tr)
            _, _, acc = client_accuracies(est, X_te, y_te, c_te)
            spent = est.history_[-1]["epsilon"]
            results[name, eps] = (acc.mean(), np.quantile(acc, 0.1))
            print(f"{name:<36} target eps={eps:<5g} spent {spent:7.3f}  noise multiplier "
                  f"{est.history_[-1]['dp']['noise_multiplier']:.3f}  client accuracy mean {acc.mean():.3f}, "
                  f"10th percentile {np.quantile(acc, 0.1):.3f}")

    finite = [e for e in args.epsilons if not math.isinf(e)]
    where = {e: (e if not math.isinf(e) else 2 * max(finite or [1.0])) for e in args.epsilons}
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for color, (name, style) in enumerate((("FedAvg, whole model private", "o-"),
                                           ("personal head, shared part private", "s-"))):
        xs = [where[e] for e in args.epsilons]
        ax.plot(xs, [results[name, e][0] for e in args.epsilons], style, color=f"C{color}", label=f"{name}: mean")
        ax.plot(xs, [results[name, e][1] for e in args.epsilons], style.replace("-", "--"), color=f"C{color}",
                alpha=0.5, label=f"{name}: 10th percentile")
    ax.set_xscale("log")
    ax.set_xticks([where[e] for e in args.epsilons], [f"{e:g}" if not math.isinf(e) else "no noise"
                                                      for e in args.epsilons])
    ax.set_xlabel(f"epsilon (user level, delta=1e-3, {args.rounds} rounds)")
    ax.set_ylabel("client accuracy (held-out rows)")
    ax.set_title(f"digits, {args.clients} clients, {args.per_round} per round")
    ax.legend(fontsize=7)
    fig.savefig(args.out, dpi=100)
    return results


if __name__ == "__main__":
    main()
