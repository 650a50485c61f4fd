"""The paper's protocol end to end: FedAvg pre-training, FedAlt/FedSim personalization, fine-tuning.

Pillutla et al. (ICML 2022) pre-train the whole model with FedAvg, start personalization from it,
and optionally fine-tune the personal part locally at the end. This example runs that pipeline
for a personal output layer, input layer and adapters, with FedAlt and FedSim, next to FedAvg
trained for as many rounds, and evaluates every client on its own held-out rows. Every stage runs
its stated rounds (``tol=None``: no early stop) at one client learning rate (``--lr``), so the
tables do not move with the estimator's defaults.

- One seed (the default): every client is evaluated after each round; the table gives mean and
  10th-percentile per-client accuracy at the end of each stage and the share of clients that end
  up worse than under FedAvg; the figure (``--out``) shows accuracy against rounds.
- ``--seeds N``: the paper's question, answered over ``N`` seeds (each a new draw of the data and
  of training) on two federations, one whose clients permute the labels (``labels``: a personal
  output layer is the natural fit) and one whose clients shift their features (``covariate``:
  per-client offsets, the input side's job). Per model: the share of personal parameters, mean
  and 10th-percentile client accuracy with a 95 % interval over seeds, the share of full
  personalization's gain over FedAvg that it recovers, and the share of clients it leaves worse
  than FedAvg, beside FedAvg, local training and full personalization; per split, the paired
  FedAlt - FedSim difference with its interval and a two-sided sign test.

Run: ``python examples/paper_pipeline.py`` (``--quick`` for a small run, ``--out`` for the PNG),
``python examples/paper_pipeline.py --seeds 10`` for the tables of ``docs/theory.md``.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.model_selection import train_test_split

from pfedest import EvaluateClients, PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients
from pfedest.evaluation.report import client_accuracies, summary_statistics

SPLITS = ("head", "input", "adapters")
ALGORITHMS = ("fedalt", "fedsim")
#: The federations of the over-seeds tables: each keeps ``make_shifted_clients``' default for its
#: own shift and switches the other one off.
DATASETS = {"labels": dict(label_shift=0.5, feature_shift=0.0),
            "covariate": dict(label_shift=0.0, feature_shift=1.0),
            "mixed": dict()}  # both shifts, the generator's defaults (the one-seed run's federation)


def run(args):
    X, y, c = make_shifted_clients(n_clients=args.clients, random_state=args.seed, **DATASETS[args.data])
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, stratify=c,
                                                          random_state=args.seed)
    common = dict(clients_per_round=args.per_round, lr=args.lr, tol=None, random_state=args.seed)
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


# ----------------------------------------------------------------------------- over seeds
def seed_results(args, dataset, seed):
    """Per-client test accuracy of every model on one draw of ``dataset``, and each model's personal share."""
    X, y, c = make_shifted_clients(n_clients=args.clients, random_state=seed, **DATASETS[dataset])
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, stratify=c, random_state=seed)
    common = dict(clients_per_round=args.per_round, lr=args.lr, tol=None, random_state=seed)
    total = args.pretrain + args.rounds
    models = {"FedAvg": dict(split="none", n_rounds=total),
              "Local only": dict(split="full", n_rounds=total, finetune_epochs=args.finetune),
              "Full personalization": dict(split="full", pretrain_rounds=args.pretrain, n_rounds=args.rounds,
                                           finetune_epochs=args.finetune)}
    for split in SPLITS:
        for algorithm in ALGORITHMS:
            models[f"{NAMES[algorithm]} {split}"] = dict(split=split, algorithm=algorithm, n_rounds=args.rounds,
                                                         pretrain_rounds=args.pretrain, finetune_epochs=args.finetune)
    out = {}
    for name, params in models.items():
        est = PartialPersonalizedClassifier(**params, **common).fit(X_tr, y_tr, client_ids=c_tr)
        _, _, accuracy = client_accuracies(est, X_te, y_te, c_te)
        out[name] = {"accuracy": accuracy, "personal": est.personal_fraction_}
    return out


NAMES = {"fedalt": "FedAlt", "fedsim": "FedSim"}


def interval(values, level=0.95):
    """Mean of ``values`` and the half-width of its Student-t interval over seeds (nan for one seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def ratio_interval(numerator, denominator, n_boot=4000, level=0.95, seed=0):
    """``mean(numerator) / mean(denominator)`` with a percentile bootstrap interval over seeds."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(numerator), size=(n_boot, len(numerator)))
    ratios = numerator[draws].mean(1) / denominator[draws].mean(1)
    low, high = np.percentile(ratios, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(numerator.mean() / denominator.mean()), float(low), float(high)


def sign_test(differences):
    """FedAlt ahead / tied / behind over seeds and the two-sided sign test's p-value (ties dropped)."""
    d = np.asarray(differences, dtype=float)
    ahead, behind = int((d > 0).sum()), int((d < 0).sum())
    p = stats.binomtest(ahead, ahead + behind).pvalue if ahead + behind else 1.0
    return ahead, len(d) - ahead - behind, behind, float(p)


def summarize_seeds(per_seed):
    """The table rows of one data set from :func:`seed_results` of each seed."""
    names = list(per_seed[0])
    mean = {n: np.array([r[n]["accuracy"].mean() for r in per_seed]) for n in names}
    p10 = {n: np.array([summary_statistics(r[n]["accuracy"], np.ones_like(r[n]["accuracy"]))["10%"]
                        for r in per_seed]) for n in names}
    full_gain = mean["Full personalization"] - mean["FedAvg"]
    full_helps = interval(full_gain)[0] - interval(full_gain)[1] > 0  # the share is a share of a real gain only
    rows = {}
    for n in names:
        worse = [np.mean(r[n]["accuracy"] < r["FedAvg"]["accuracy"] - 1e-12) for r in per_seed]
        gain = mean[n] - mean["FedAvg"]
        rows[n] = {"personal": float(np.mean([r[n]["personal"] for r in per_seed])), "mean": interval(mean[n]),
                   "p10": interval(p10[n]), "worse": interval(worse), "gain": interval(gain),
                   "recovered": ratio_interval(gain, full_gain) if n != "FedAvg" and full_helps else None}
    pairs = {}
    for split in SPLITS:
        d = mean[f"FedAlt {split}"] - mean[f"FedSim {split}"]
        pairs[split] = {"difference": interval(d), "sign": sign_test(d)}
    return {"rows": rows, "pairs": pairs, "n_seeds": len(per_seed)}


def print_seeds_table(dataset, summary):
    n = summary["n_seeds"]
    print(f"\n{dataset}: {n} seeds; mean over seeds [95 % interval]")
    print("| model | personal | mean client accuracy | 10th percentile | gain over FedAvg "
          "| share of full personalization's gain | clients worse than FedAvg |")
    print("|---|---|---|---|---|---|---|")

    def ci(mean_half, fmt="{:.3f}"):
        m, h = mean_half
        return "{} [{}, {}]".format(*(fmt.format(v) for v in (m, m - h, m + h)))

    for name, r in summary["rows"].items():
        if name == "FedAvg":
            gain = rec = worse = "-"
        else:
            gain, worse = ci(r["gain"], "{:+.3f}"), f"{r['worse'][0]:.0%}"
            rec = "{:.0%} [{:.0%}, {:.0%}]".format(*r["recovered"]) if r["recovered"] else \
                "n/a (full personalization does not beat FedAvg)"
        print(f"| {name} | {r['personal']:.1%} | {ci(r['mean'])} | {ci(r['p10'])} | {gain} | {rec} | {worse} |")
    print("\n| split | FedAlt - FedSim, mean client accuracy | FedAlt ahead / tied / behind | sign test p |")
    print("|---|---|---|---|")
    for split, p in summary["pairs"].items():
        (m, h), (ahead, tied, behind, pvalue) = p["difference"], p["sign"]
        print(f"| {split} | {m:+.4f} [{m - h:+.4f}, {m + h:+.4f}] | {ahead} / {tied} / {behind} | {pvalue:.3g} |")


def over_seeds(args):
    tic = time.perf_counter()
    out = {}
    for dataset in args.datasets.split(","):
        per_seed = [seed_results(args, dataset, seed) for seed in range(args.seed, args.seed + args.seeds)]
        out[dataset] = summarize_seeds(per_seed)
        print_seeds_table(dataset, out[dataset])
    print(f"\n{args.clients} clients, {args.per_round} per round, lr {args.lr:g}, {args.pretrain} FedAvg rounds + "
          f"{args.rounds} rounds + {args.finetune} fine-tuning epochs (no early stop); seeds {args.seed}.."
          f"{args.seed + args.seeds - 1} ({time.perf_counter() - tic:.0f} s)")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--pretrain", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--finetune", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.3, help="client learning rate of every stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="more than 1: the over-seeds tables (seeds seed, seed+1, ...) instead of the stage table")
    parser.add_argument("--data", choices=sorted(DATASETS), default="mixed", help="federation of the one-seed run")
    parser.add_argument("--datasets", default="labels,covariate", help="federations of the over-seeds tables")
    parser.add_argument("--out", type=Path, default=Path("paper_pipeline.png"))
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.pretrain, args.rounds, args.finetune = 8, 4, 4, 1
    if args.seeds > 1:
        return over_seeds(args)
    runs, rows = run(args)
    print_table(rows)
    plot(runs, args.out)
    print(f"\nsaved {args.out}")
    return rows


if __name__ == "__main__":
    main()
