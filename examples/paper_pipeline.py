"""The paper's protocol end to end: FedAvg pre-training, FedAlt/FedSim personalization, fine-tuning.

Pillutla et al. (ICML 2022) pre-train the whole model with FedAvg, start personalization from it,
and optionally fine-tune the personal part locally at the end. This example runs that pipeline
for a personal output layer, input layer and adapters, with FedAlt and FedSim, next to FedAvg
trained for as many rounds, and evaluates every client on its own held-out rows after each
round. It prints mean and 10th-percentile per-client accuracy at the end of each stage, and the
share of clients that end up worse than under FedAvg; it saves accuracy against rounds as a PNG.

Run: ``python examples/paper_pipeline.py`` (``--quick`` for a small run, ``--out`` for the PNG).
"""

import argparse
from pathlib import Path

from sklearn.model_selection import train_test_split

from pfedest import EvaluateClients, PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients
from pfedest.evaluation.report import client_accuracies

SPLITS = ("head", "input", "adapters")
ALGORITHMS = ("fedalt", "fedsim")


def run(args):
    X, y, c = make_shifted_clients(n_clients=args.clients, random_state=args.seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, stratify=c,
                                                          random_state=args.seed)
    common = dict(clients_per_round=args.per_round, random_state=args.seed)
    evaluate = EvaluateClients(X_te, y_te, c_te, every=1)
    runs = {"FedAvg": PartialPersonalizedClassifier(split="none", n_rounds=args.pretrain + args.rounds,
                                                    callbacks=[evaluate], **common)}
    for split in SPLITS:
        for algorithm in ALGORITHMS:
            runs[f"{algorithm} {split}"] = PartialPersonalizedClassifier(
                split=split, algorithm=algorithm, pretrain_rounds=args.pretrain, n_rounds=args.rounds,
                finetune_epochs=args.finetune, callbacks=[evaluate], **common)
        # the same number of rounds, all personalized: did pre-training help?
        runs[f"fedalt {split}, no pre-training"] = PartialPersonalizedClassifier(
            split=split, pretrain_rounds=0, n_rounds=args.pretrain + args.rounds, finetune_epochs=args.finetune,
            callbacks=[evaluate], **common)
    for est in runs.values():
        est.fit(X_tr, y_tr, client_ids=c_tr)
    _, _, fedavg_acc = client_accuracies(runs["FedAvg"], X_te, y_te, c_te)

    rows = []
    for name, est in runs.items():
        _, _, acc = client_accuracies(est, X_te, y_te, c_te)
        stages = {}
        for record in est.history_:
            stages[record["stage"]] = record  # the last round of each stage
        worse = acc < fedavg_acc - 1e-12
        rows.append((name, {s: (r["valid_mean"], r["valid_p10"]) for s, r in stages.items()}, worse.mean(),
                     (acc - fedavg_acc)[worse].mean() if worse.any() else 0.0))
    return runs, rows


def print_table(rows):
    print("| run | after pre-training (mean / p10) | after personalization | after fine-tuning | "
          "clients worse than FedAvg | their mean accuracy loss |")
    print("|---|---|---|---|---|---|")
    cell = lambda d, s: f"{d[s][0]:.3f} / {d[s][1]:.3f}" if s in d else "-"  # noqa: E731
    for name, stages, worse, loss in rows:
        print(f"| {name} | {cell(stages, 'pretrain')} | {cell(stages, 'train')} | {cell(stages, 'finetune')} | "
              f"{worse:.0%} | {f'{-loss:.3f}' if worse else '-'} |")


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, algorithm in zip(axes, ALGORITHMS):
        fedavg = runs["FedAvg"].history_
        ax.plot(fedavg[:, "round"], fedavg[:, "valid_mean"], color="black", lw=2, label="FedAvg")
        for split, color in zip(SPLITS, ("tab:blue", "tab:orange", "tab:green")):
            if algorithm == "fedalt":
                cold = runs[f"fedalt {split}, no pre-training"].history_
                ax.plot(cold[:, "round"], cold[:, "valid_mean"], color=color, ls="--", lw=1,
                        label=f"personal {split}, no pre-training")
            h = runs[f"{algorithm} {split}"].history_
            ax.plot(h[:, "round"], h[:, "valid_mean"], color=color, label=f"personal {split}")
        stages = h[:, "stage"]
        for boundary in (i for i in range(1, len(stages)) if stages[i] != stages[i - 1]):
            ax.axvline(boundary + 0.5, color="grey", ls=":", lw=1)
        ax.set_title(f"{'FedAlt' if algorithm == 'fedalt' else 'FedSim'}: pre-train | personalize | fine-tune")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean per-client test accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--pretrain", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--finetune", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("paper_pipeline.png"))
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.pretrain, args.rounds, args.finetune = 8, 4, 4, 1
    runs, rows = run(args)
    print_table(rows)
    plot(runs, args.out)
    print(f"\nsaved {args.out}")
    return rows


if __name__ == "__main__":
    main()
