"""How much of the model to personalize: GridSearchCV over the personal fraction on federated digits.

scikit-learn's handwritten digits, dealt to 30 clients of unequal sizes; half of the clients label
the digits with their own permutation (``pfedest.datasets.load_federated_digits``). A shared model
(FedAvg) cannot serve clients that disagree on labels; purely local models see too few rows. The
grid spans both ends, adapters of growing width, and the output layer (with one more layer at
``split__fraction=0.3``), scored by ``ClientKFold``: each fold tests rows of every client, so every
tested client has trained. The winner is then compared with FedAvg on held-out rows, client by
client.

Run: ``python examples/plot_grid_search.py`` (about 2-3 minutes on 2 cores; ``--rounds`` and
``--clients`` make it smaller). Writes ``grid_search.png`` (``--out``).
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")  # writes a PNG, needs no display

import matplotlib.pyplot as plt
import sklearn
import torch
from sklearn.model_selection import GridSearchCV

from pfedest import AdapterSplit, HeadSplit, PartialPersonalizedClassifier
from pfedest.datasets import load_federated_digits
from pfedest.evaluation.model_selection import ClientKFold, personal_fractions, train_test_split
from pfedest.evaluation.plotting import plot_grid_search, split_name
from pfedest.evaluation.report import client_report

GRID = [
    {"split": ["none", "full"]},  # the two ends: nothing personal (FedAvg), everything personal
    {"split": [AdapterSplit()], "split__fraction": [0.05, 0.1, 0.2, 0.4]},
    {"split": [HeadSplit()], "split__fraction": [0.05, 0.3]},  # output layer; output + last hidden layer
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="grid_search.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these models are tiny: more threads cost more than they bring

    X, y, c = load_federated_digits(n_clients=args.clients, random_state=args.seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, random_state=args.seed)
    est = PartialPersonalizedClassifier(n_rounds=args.rounds, lr=0.2, batch_size=16, random_state=args.seed)
    search = GridSearchCV(est, GRID, cv=ClientKFold(args.folds, shuffle=True, random_state=args.seed),
                          n_jobs=args.n_jobs)
    tic = time.perf_counter()
    with sklearn.config_context(enable_metadata_routing=True):  # routes client_ids to split, fit and score
        search.fit(X_tr, y_tr, client_ids=c_tr)
    seconds = time.perf_counter() - tic
    n_candidates = len(search.cv_results_["params"])
    print(f"{args.clients} clients, {len(X_tr)} training rows, {args.folds} folds x {n_candidates} candidates, "
          f"{args.rounds} rounds each: {seconds:.0f} s\n")
    print("| split    | split__fraction | personal share | CV accuracy   | rank |")
    print("|----------|-----------------|----------------|---------------|------|")
    res = search.cv_results_
    shares = personal_fractions(search, X_tr, y_tr)
    for k, params in enumerate(res["params"]):
        fraction = params.get("split__fraction")
        print(f"| {split_name(params['split']):<8} | {'' if fraction is None else fraction:>15} | {shares[k]:>14.1%} | "
              f"{res['mean_test_score'][k]:.3f} ± {res['std_test_score'][k]:.3f} | {res['rank_test_score'][k]:>4} |")
    best = search.best_estimator_
    print(f"\nchosen: split={split_name(search.best_params_['split'])}, "
          f"split__fraction={search.best_params_.get('split__fraction')}, "
          f"realized personal share of parameters {best.personal_fraction_:.3f}")

    fedavg = PartialPersonalizedClassifier(**{**est.get_params(), "split": "none"}).fit(X_tr, y_tr, client_ids=c_tr)
    report = client_report(best, X_te, y_te, c_te, baseline=fedavg)
    print(f"\nheld-out rows ({len(X_te)}), chosen model against FedAvg, over clients:")
    print(report)

    # The x-axis is the share of parameters each candidate really makes personal: a head split
    # moves in whole layers, so split__fraction=0.05 gives the output layer, 7 % of the network.
    ax = plot_grid_search(search, x=shares,
                          title=f"Federated digits, {args.clients} clients, half relabel the digits\n"
                                f"{args.folds}-fold ClientKFold, {args.rounds} rounds per fit",
                          ylabel="accuracy on held-out rows of every client\n(mean ± std over folds)")
    ax.figure.savefig(args.out, dpi=130)
    plt.close(ax.figure)
    print(f"\nwrote {args.out}")
    return search, report


if __name__ == "__main__":
    main()
