"""The guard against harmful personalization: every client's accuracy with the guard and without.

On scikit-learn's digits dealt to 20 clients (half of them relabel the digits,
:func:`pfedest.datasets.federate`), a personal output layer is fitted without and with
``guard="validation"``, next to FedAvg with the same rounds, and every client is scored on its own
test rows. Left: one point a client, its accuracy with the guard against without, marked by the
guard's decision (kept its personal part, or answered by the fallback). Right: each client's change
against FedAvg, without and with the guard: the clients below zero are those personalization hurt.

Run: ``python examples/plot_guard.py`` (about 20 s on 2 cores). Writes ``guard.png`` (``--out``).
The measured table over ten seeds and two data sets is ``benchmarks/guard.py``'s
(``docs/guide/guard.rst``).
"""

import argparse
import warnings

import matplotlib

matplotlib.use("Agg")  # writes a PNG, needs no display

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import federate
from pfedest.evaluation.model_selection import train_test_split
from pfedest.evaluation.report import client_accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="guard.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these models are tiny: more threads cost more than they bring

    X, y = load_digits(return_X_y=True)
    X, y, c = federate(X / 16.0, y, n_clients=args.clients, label_shift=0.5, random_state=args.seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.25, random_state=args.seed)
    common = dict(n_rounds=args.rounds, tol=None, random_state=args.seed)
    models = {"FedAvg": dict(split="none"), "without guard": dict(), "with guard": dict(guard="validation")}
    acc, fitted = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=None runs every round by design
        for name, params in models.items():
            fitted[name] = PartialPersonalizedClassifier(**common, **params).fit(X_tr, y_tr, client_ids=c_tr)
            clients, _, acc[name] = client_accuracies(fitted[name], X_te, y_te, c_te)
    guarded = fitted["with guard"]
    report = guarded.client_report(X_te, y_te, c_te, baseline=fitted["FedAvg"])
    print(report)
    kept = np.asarray(report.clients["guard_weight"]) > 0
    for name in ("without guard", "with guard"):
        worse = acc[name] < acc["FedAvg"]
        print(f"{name}: mean accuracy {acc[name].mean():.3f}, {worse.sum()} of {len(worse)} clients worse than FedAvg")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot([0, 1], [0, 1], color="0.7", lw=1)
    left.scatter(acc["without guard"][kept], acc["with guard"][kept], label="kept its personal part")
    left.scatter(acc["without guard"][~kept], acc["with guard"][~kept], marker="s", label="answered by the fallback")
    left.set(xlabel="accuracy without the guard", ylabel="accuracy with the guard", xlim=(0, 1.02), ylim=(0, 1.02),
             title="each client, with the guard against without")
    left.legend(loc="lower right")
    order = np.argsort(acc["without guard"] - acc["FedAvg"])
    right.axhline(0, color="0.7", lw=1)
    right.plot(acc["without guard"][order] - acc["FedAvg"][order], "o", label="without guard")
    right.plot(acc["with guard"][order] - acc["FedAvg"][order], "x", label="with guard")
    right.set(xlabel="clients, by change without the guard", ylabel="accuracy minus FedAvg's",
              title="change against FedAvg (same rounds)")
    right.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    return acc


if __name__ == "__main__":
    main()
