"""Quickstart: partial personalization against its two honest baselines, FedAvg and local training.

First the estimator as it comes, with every default, on scikit-learn's handwritten digits dealt to
20 clients, half of whom write the labels their own way (a label permutation each): it trains until
it has converged and says when it stopped. Then a generated federation where each client shifts its features and, half of the time, relabels the
classes: a shared model cannot serve clients that disagree on labels, purely local models see
too few rows. Every model is scored on *every* client's own held-out rows.

Run: ``python examples/quickstart.py`` (``--rounds`` and ``--clients`` make it smaller;
``--seeds 8`` repeats it over 8 seeds and prints how the mean accuracies spread, and how often
FedAlt beats FedSim: one seed is one draw of data and training).
"""

import argparse
import time

import numpy as np

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import federate, make_shifted_clients
from pfedest.evaluation.report import client_accuracies, summarize

RUNS = [  # (label, split, algorithm)
    ("FedAvg (nothing personal)", "none", "fedalt"),
    ("Local only (all personal)", "full", "fedalt"),
    ("FedAlt, personal head", "head", "fedalt"),
    ("FedSim, personal head", "head", "fedsim"),
    ("FedAlt, personal input layer", "input", "fedalt"),
    ("FedAlt, personal adapters", "adapters", "fedalt"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="repeat over seeds seed, seed+1, ... and summarize")
    parser.add_argument("--default-rounds", type=int, default=None,
                        help="cap the default fit's rounds (a quick look; by default it runs as it comes)")
    args = parser.parse_args(argv)
    if args.seeds == 1:
        default_fit(args.seed, args.default_rounds)
        return table(args, args.seed)
    per_seed = [table(args, seed, show=False) for seed in range(args.seed, args.seed + args.seeds)]
    print(f"{args.clients} clients, {args.rounds} rounds, seeds {args.seed}..{args.seed + args.seeds - 1}: "
          "mean client accuracy\n")
    print(f"| {'model':<30} | {'mean':>5} | {'min':>5} | {'max':>5} |")
    print(f"|{'-' * 32}|-------|-------|-------|")
    for label, _, _ in RUNS:
        means = np.array([r[label]["mean"] for r in per_seed])
        print(f"| {label:<30} | {means.mean():.3f} | {means.min():.3f} | {means.max():.3f} |")
    diff = np.array([r["FedAlt, personal head"]["mean"] - r["FedSim, personal head"]["mean"] for r in per_seed])
    print(f"\nFedAlt - FedSim (personal head): {' '.join(f'{d:+.3f}' for d in diff)}; mean {diff.mean():+.3f}; "
          f"FedAlt ahead in {(diff > 0).sum()} of {len(diff)}, tied in {(diff == 0).sum()}")
    return per_seed


def default_fit(seed, n_rounds=None):
    """``PartialPersonalizedClassifier()`` with every default (``n_rounds`` capped if given), on digits."""
    X, y = load_digits(return_X_y=True)
    X, y, c = federate(X / 16.0, y, n_clients=20, label_shift=0.5, random_state=seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.25, stratify=c, random_state=seed)
    tic = time.perf_counter()
    capped = {} if n_rounds is None else {"n_rounds": n_rounds}
    est = PartialPersonalizedClassifier(random_state=seed, **capped).fit(X_tr, y_tr, client_ids=c_tr)
    seconds = time.perf_counter() - tic
    _, counts, accuracy = client_accuracies(est, X_te, y_te, c_te)
    print(f"PartialPersonalizedClassifier() on digits, 20 clients (10 with their own labels): mean client "
          f"accuracy {summarize(counts, accuracy)['mean']:.3f} after {est.n_iter_} rounds ({seconds:.1f} s).\n"
          f"Why it stopped: {est.stop_reason_}\n")
    return est


def table(args, seed, show=True):
    """Every model of ``RUNS`` on the federation of ``seed``; prints its table when ``show``."""
    say = print if show else (lambda *a, **k: None)
    X, y, c = make_shifted_clients(n_clients=args.clients, random_state=seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, stratify=c, random_state=seed)
    say(f"{args.clients} clients, {len(X_tr)} training rows, {len(X_te)} test rows, {args.rounds} rounds for every "
        "model (tol=None: the same budget, no early stop), 10 clients per round\n")
    say(f"| {'model':<30} | personal | mean acc | weighted | worst client | fit (s) |")
    say(f"|{'-' * 32}|----------|----------|----------|--------------|---------|")
    results = {}
    for label, split, algorithm in RUNS:
        tic = time.perf_counter()
        # a fixed budget for every model (tol=None), so that the table compares like with like
        est = PartialPersonalizedClassifier(split=split, algorithm=algorithm, n_rounds=args.rounds, tol=None,
                                            random_state=seed)
        est.fit(X_tr, y_tr, client_ids=c_tr)
        seconds = time.perf_counter() - tic
        _, counts, accuracy = client_accuracies(est, X_te, y_te, c_te)
        s = results[label] = summarize(counts, accuracy)
        say(f"| {label:<30} | {est.personal_fraction_:>7.1%} | {s['mean']:>8.3f} | {s['weighted_mean']:>8.3f} "
            f"| {s['worst']:>12.3f} | {seconds:>7.1f} |")
    return results


if __name__ == "__main__":
    main()
