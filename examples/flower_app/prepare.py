"""Write the nodes' data and the app's model file for the Flower example.

Each node gets ``node<i>.npz`` (its training rows) and ``test<i>.npz`` (held-out rows of the same
client) in ``--out``; ``pfedest_flower_example/model.json`` gets the model: a
``PartialPersonalizedClassifier`` configured here, its output layer personal.

    python prepare.py --nodes 2 --out /tmp/pfedest-flower
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients
from pfedest.flower import write_model

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    X, y, c = make_shifted_clients(n_clients=args.nodes, n_samples_per_client=(150, 250), n_features=10,
                                   n_classes=4, random_state=0)
    for node in range(args.nodes):
        X_train, X_test, y_train, y_test = train_test_split(X[c == node], y[c == node], test_size=0.3,
                                                            random_state=node, stratify=y[c == node])
        np.savez(args.out / f"node{node}.npz", X=X_train, y=y_train)
        np.savez(args.out / f"test{node}.npz", X=X_test, y=y_test)
        print(f"node {node}: {len(y_train)} training rows, {len(y_test)} held out -> {args.out}/node{node}.npz")
    est = PartialPersonalizedClassifier(split="head", hidden_layer_sizes=(32,), random_state=0)
    path = write_model(est, HERE / "pfedest_flower_example" / "model.json", classes=np.unique(y),
                       n_features=X.shape[1])
    print(f"model -> {path}")


if __name__ == "__main__":
    main()
