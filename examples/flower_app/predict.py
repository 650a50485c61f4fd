"""Load a finished Flower run into a PartialPersonalizedClassifier and score each node's client.

    python predict.py --out /tmp/pfedest-flower --nodes 2
"""

import argparse
from pathlib import Path

import numpy as np

from pfedest.flower import load_result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    est = load_result(args.out / "result", [args.out / f"state{node}" for node in range(args.nodes)])
    print("train loss by round:", " ".join(f"{loss:.3f}" for loss in est.history_[:, "train_loss"]))
    for node in range(args.nodes):
        with np.load(args.out / f"test{node}.npz") as test:
            ids = np.full(len(test["y"]), node)
            print(f"client {node}: held-out accuracy {est.score(test['X'], test['y'], client_ids=ids):.3f}")
    return est


if __name__ == "__main__":
    main()
