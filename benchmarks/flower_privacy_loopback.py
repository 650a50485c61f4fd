"""A real loopback private Flower run (a SuperLink and 3 SuperNodes on 127.0.0.1, ``flwr run``) against the
simulator's private fit: the sampled clients, epsilon after each round, the shared parameters.

Usage: ``PYTHONPATH=$PWD python benchmarks/flower_privacy_loopback.py /tmp/some-empty-folder`` (about 2 min).
"""
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_flower import Federation, small_estimator
from pfedest.datasets import make_shifted_clients
from pfedest.flower import export_app, load_result
from pfedest.flower.records import read_npz
from pfedest.privacy import DifferentialPrivacy

root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
n, rounds = 3, 3
X, y, c = make_shifted_clients(n_clients=n, n_samples_per_client=(20, 45), n_features=5, n_classes=3, random_state=1)
params = dict(clients_per_round=2, n_rounds=rounds, random_state=5,
              privacy=DifferentialPrivacy(clip=0.3, target_epsilon=4.0, delta=1e-3, sampling="poisson"))
fitted = small_estimator(tol=None, **params).fit(X, y, client_ids=c)
for p in range(n):
    np.savez(root / f"node{p}.npz", X=X[c == p], y=y[c == p])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    app = export_app(small_estimator(**params), root / "app", classes=np.unique(y), n_features=5, min_nodes=n,
                     node_wait=120.0, evaluate_every=-1, poll_interval=0.5, result_dir=str(root / "result"))
fed = Federation(root)
tic = time.monotonic()
try:
    fed.start_superlink()
    for p in range(n):
        fed.start_node(p)
    with open(root / "logs" / "flwr-run.log", "wb") as log:
        rc = subprocess.run(["flwr", "run", str(app), "pfedest-test", "--stream"], env=fed.env, cwd=root,
                            stdout=log, stderr=subprocess.STDOUT, timeout=400).returncode
finally:
    fed.stop()
print("rc", rc, "wall", round(time.monotonic() - tic, 1), "s")
summary = json.loads((root / "result" / "rounds.json").read_text())
print("flower  clients", [r.get("clients") for r in summary["rounds"]],
      "epsilon", [r.get("epsilon") for r in summary["rounds"]])
print("fit     clients", [h["clients"] for h in fitted.history_], "epsilon", [h["epsilon"] for h in fitted.history_])
shared, _ = read_npz(root / "result" / "shared.npz")
print("max |flower - fit| shared", max(float((shared[k] - v).abs().max()) for k, v in fitted.shared_params_.items()),
      "max |fit shared|", max(float(v.abs().max()) for v in fitted.shared_params_.values()))
est = load_result(root / "result", [root / f"state{p}" for p in range(n)])
print("load_result history epsilon", [h.get("epsilon") for h in est.history_], "privacy", est.privacy)
