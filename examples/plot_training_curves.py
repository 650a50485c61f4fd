"""Training curves in the style of the paper's figures: FedAlt vs FedSim, one column per personal part.

``PartialPersonalizedClassifier`` on a generated federation (``pfedest.datasets.make_shifted_clients``:
each client shifts its features and, half of the time, permutes the labels), with the personal part
being the output layer, the input layer or adapters. Top row: training loss per round (the mean
minibatch loss of the round's local steps, ``history_``). Bottom row: mean over clients of each
client's accuracy on its own held-out rows, measured every few rounds by continuing the same fit
(``warm_start=True``). FedAvg (nothing personal) is drawn in grey in every column for reference.

Run: ``python examples/plot_training_curves.py --out-dir figures`` (1.5 minutes of CPU on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from pfedest import PartialPersonalizedClassifier  # noqa: E402
from pfedest.datasets import make_shifted_clients  # noqa: E402
from pfedest.evaluation.report import client_accuracies  # noqa: E402

SPLITS = {"head": "personal output layer", "input": "personal input layer", "adapters": "personal adapters"}
COLORS = {"fedalt": "tab:blue", "fedsim": "tab:orange", "fedavg": "0.5"}
NAMES = {"fedalt": "FedAlt", "fedsim": "FedSim", "fedavg": "FedAvg (nothing personal)"}


def curve(split, algorithm, data, args, seed):
    """Training loss per round and mean per-client test accuracy every ``args.every`` rounds."""
    X_tr, X_te, y_tr, y_te, c_tr, c_te = data
    est = PartialPersonalizedClassifier(split=split, algorithm=algorithm, n_rounds=args.every,
                                        clients_per_round=args.per_round, lr=args.lr, warm_start=True,
                                        random_state=seed)
    rounds, accuracy = [], []
    while len(getattr(est, "history_", [])) < args.rounds:
        est.fit(X_tr, y_tr, client_ids=c_tr)
        _, _, acc = client_accuracies(est, X_te, y_te, c_te)
        rounds.append(len(est.history_))
        accuracy.append(float(np.mean(acc)))
    return {"loss": np.array(est.history_[:, "train_loss"]), "rounds": np.array(rounds),
            "accuracy": np.array(accuracy), "personal_fraction": est.personal_fraction_}


def plot(results, args, path):
    splits = list(SPLITS)
    fig, axes = plt.subplots(2, len(splits), figsize=(5.2 * len(splits), 8), sharex=True)
    for j, split in enumerate(splits):
        for key in ("fedalt", "fedsim", "fedavg"):
            runs = results[split][key] if key != "fedavg" else results["fedavg"]
            loss = np.mean([r["loss"] for r in runs], axis=0)
            acc = np.mean([r["accuracy"] for r in runs], axis=0)
            ls = "--" if key == "fedavg" else "-"
            axes[0, j].plot(np.arange(1, len(loss) + 1), loss, color=COLORS[key], ls=ls, lw=1.6, label=NAMES[key])
            axes[1, j].plot(runs[0]["rounds"], acc, color=COLORS[key], ls=ls, marker="o", ms=3.5, lw=1.6,
                            label=NAMES[key])
        share = results[split]["fedalt"][0]["personal_fraction"]
        axes[0, j].set_title(f"{SPLITS[split]} ({share:.1%} of parameters personal)")
        axes[0, j].set_yscale("log")
        axes[0, j].set_ylabel("training loss (round's minibatches)")
        axes[1, j].set_ylabel("mean per-client test accuracy")
        axes[1, j].set_xlabel("communication round")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"make_shifted_clients: {args.clients} clients, {args.per_round} per round, lr={args.lr:g}; "
                 f"mean over {args.seeds} seed(s)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("figures"))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10, help="clients per round")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--every", type=int, default=5, help="rounds between test evaluations")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    X, y, c = make_shifted_clients(n_clients=args.clients, random_state=args.seed)
    data = train_test_split(X, y, c, test_size=0.3, stratify=c, random_state=args.seed)
    results = {split: {alg: [curve(split, alg, data, args, s) for s in range(args.seeds)]
                       for alg in ("fedalt", "fedsim")} for split in SPLITS}
    results["fedavg"] = [curve("none", "fedalt", data, args, s) for s in range(args.seeds)]

    print(f"Mean per-client test accuracy after {args.rounds} rounds ({args.seeds} seed(s))")
    print("| personal part | FedAlt | FedSim |")
    print("|---|---|---|")
    for split in SPLITS:
        a, s = (np.mean([r["accuracy"][-1] for r in results[split][alg]]) for alg in ("fedalt", "fedsim"))
        print(f"| {SPLITS[split]} | {a:.3f} | {s:.3f} |")
    print(f"| nothing (FedAvg) | {np.mean([r['accuracy'][-1] for r in results['fedavg']]):.3f} | - |")
    path = args.out_dir / "training_curves.png"
    plot(results, args, path)
    print(f"\nsaved {path} ({time.perf_counter() - tic:.0f} s)")
    return {"results": results, "figure": path}


if __name__ == "__main__":
    main()
