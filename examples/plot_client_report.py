"""Who gains and who loses: a personalized model against FedAvg, client by client.

Personalization can lower some clients' accuracy while the mean rises (Pillutla et al., 2022).
On federated digits (``load_federated_digits``: 30 clients of unequal sizes, half of them
relabel the digits), a personal output layer is compared with FedAvg on every client's own
held-out rows. The report gives each client's accuracy under both, the change, and the summaries
over clients (mean, weighted mean, std, 10/50/90 % quantiles, worst), and the share of clients
made worse.

Run: ``python examples/plot_client_report.py`` (well under a minute on 2 cores). Writes
``client_report.png`` (``--out``).
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # writes a PNG, needs no display

import matplotlib.pyplot as plt
import torch

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import load_federated_digits
from pfedest.evaluation.model_selection import train_test_split
from pfedest.evaluation.plotting import plot_client_change, plot_client_scatter
from pfedest.evaluation.report import client_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--split", default="head", help="what to personalize: head, input, adapters, full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="client_report.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these models are tiny: more threads cost more than they bring

    X, y, c = load_federated_digits(n_clients=args.clients, random_state=args.seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.3, random_state=args.seed)
    settings = dict(n_rounds=args.rounds, lr=0.2, batch_size=16, random_state=args.seed)
    model = PartialPersonalizedClassifier(split=args.split, **settings).fit(X_tr, y_tr, client_ids=c_tr)
    fedavg = PartialPersonalizedClassifier(split="none", **settings).fit(X_tr, y_tr, client_ids=c_tr)

    report = client_report(model, X_te, y_te, c_te, baseline=fedavg)
    print(f"split={args.split!r} ({model.personal_fraction_:.1%} of parameters personal) against FedAvg, "
          f"{len(X_te)} held-out rows of {report.n_clients} clients:\n")
    print(report)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), width_ratios=[1.6, 1], layout="constrained")
    label = f"personal {args.split}"
    plot_client_change(report, ax=left, label=label, baseline_label="FedAvg",
                       title=f"Per-client change: {report.hurt_text()}")
    plot_client_scatter(report, ax=right, label=label, baseline_label="FedAvg",
                        title="Each client's held-out accuracy")
    fig.suptitle(f"Federated digits, {report.n_clients} clients (half relabel the digits), {args.rounds} rounds")
    fig.savefig(args.out, dpi=130)
    plt.close(fig)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
