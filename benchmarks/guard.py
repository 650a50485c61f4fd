"""Measure the guard against harmful personalization: clients worse than FedAvg, with and without it.

For each seed and data set, a quarter of each client's rows is held out for testing and four
models are fitted on the rest with the same budget (``--rounds`` rounds, ``tol=None``):

- ``FedAvg`` (``split="none"``) and ``FedAvg'`` (the same with another seed: the noise floor; a
  client is "worse" under FedAvg' than under FedAvg only by the chance of training);
- ``FedAlt`` (``split="head"``, no guard);
- ``FedAlt + guard`` (``guard="validation"``, which refits on every row once it has decided) and
  ``FedAlt + guard, no refit`` (``guard_refit=False``: the held-out rows never train).

A client is *hurt* when its test accuracy is below FedAvg's (*hurt by > 10 pts*: more than 0.1 below).
The variants of the guard are recomputed, without fitting again, from the fit without the refit (its
held-out rows are dealt again as the fit dealt them; the refit's decisions are checked to be its):
the per-row loss it compares (``01``: the 0/1 error, ``ce``: the cross-entropy, the classifier's)
and the margin (``--margins``, in standard errors), scored with the refit model; the fit's own
decision (``ce`` at its ``guard_margin``) is checked to be the recomputed one. The refit is checked
to be ``FedAlt`` with the guard's decisions (same seed, every row); a personal-only pass over every
row after the unrefit fit is measured against it. The fallback is the average of the
clients' personal parts (commit e02b99f of this benchmark also measured a global copy of the
personal block trained alongside FedAvg-style: ``docs/guide/guard.rst`` says why it was dropped).

Data sets (``--datasets``): ``digits-labels``, scikit-learn's digits (``/ 16``) dealt to
``--clients`` clients by :func:`pfedest.datasets.federate` with half of them permuting the labels;
``covariate``, :func:`pfedest.datasets.make_shifted_clients` with per-client feature offsets and no
label permutation.

Run::

    nice -n 10 python benchmarks/guard.py --seeds 10
    nice -n 10 python benchmarks/guard.py --seeds 2 --rounds 10   # a quick look

Writes the per-seed numbers as JSON (``--out``) and prints the table of ``docs/guide/guard.rst``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pfedest import PartialPersonalizedClassifier
from pfedest.core.guard import decide
from pfedest.core.model import personalized_logits
from pfedest.datasets import federate, make_shifted_clients
from pfedest.evaluation.model_selection import train_test_split
from pfedest.evaluation.report import client_accuracies
from pfedest.fit_state import ClientData
from pfedest.guard import guard_holdout

DATASETS = ("digits-labels", "covariate")


def load(dataset: str, n_clients: int, seed: int):
    if dataset == "digits-labels":
        X, y = load_digits(return_X_y=True)
        return federate(X / 16.0, y, n_clients=n_clients, label_shift=0.5, random_state=seed)
    if dataset == "covariate":
        return make_shifted_clients(n_clients=n_clients, label_shift=0.0, feature_shift=1.0, random_state=seed)
    raise ValueError(f"unknown data set {dataset!r}; expected one of {DATASETS}")


def outputs(est, X, rows, personal):
    """Logits of ``X`` under ``personal`` (stacked over clients) at client indices ``rows``."""
    module = est.module_
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    with torch.no_grad():
        return personalized_logits(module, dict(module.named_buffers()), est.shared_params_, personal, X,
                                   torch.as_tensor(rows))


def per_client(values, rows, n):
    return np.bincount(rows, weights=values, minlength=n) / np.maximum(np.bincount(rows, minlength=n), 1)


def guard_variants(est, X_tr, y_tr, c_tr, X_te, y_te, c_te, decided=None):
    """Test accuracy per client of the personal model and of each fallback of ``est``, and the held-out
    evidence of ``decided`` (the fit whose personal parts made the decision: without the refit pass,
    whose personal parts have seen the held-out rows; ``est`` itself by default)."""
    decided = est if decided is None else decided
    n = len(est.clients_)
    index = {c: i for i, c in enumerate(est.clients_.tolist())}
    rows_tr = np.array([index[c] for c in c_tr.tolist()])
    codes = np.searchsorted(est.classes_, y_tr)
    data = ClientData.from_rows(X_tr, codes, rows_tr, n, "cpu")
    # the rows the fit held out: the same deal (keyed by the fit's seed and each client's index)
    _, valid = guard_holdout(data, est.validation_fraction, est._fit.seed)
    valid_rows = valid.row_clients()
    def blocks_of(fit):
        return {"personal": fit.personal_params_,
                "fallback": {k: v[None].expand_as(fit.personal_params_[k]) for k, v in fit.fallback_params_.items()}}

    blocks, decided_blocks = blocks_of(est), blocks_of(decided)
    rows_te = np.array([index[c] for c in c_te.tolist()])
    y_te_codes = torch.as_tensor(np.searchsorted(est.classes_, y_te))
    test, losses = {}, {}
    for name, block in blocks.items():
        logits = outputs(est, X_te, rows_te, block)
        test[name] = per_client((logits.argmax(1) == y_te_codes).double().numpy(), rows_te, n)
        logits = outputs(decided, valid.X, valid_rows, decided_blocks[name])
        losses[name] = {"fitted": est._row_losses(logits, valid.y).double().numpy(),  # the library's
                        "01": (logits.argmax(1) != valid.y).double().numpy(),
                        "ce": F.cross_entropy(logits.double(), valid.y, reduction="none").numpy()}
    return test, losses, valid_rows, n


def one_seed(dataset, seed, args):
    X, y, c = load(dataset, args.clients, seed)
    X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.25, random_state=seed)
    common = dict(n_rounds=args.rounds, tol=None, clients_per_round=args.per_round,
                  hidden_layer_sizes=tuple(args.hidden), validation_fraction=args.validation_fraction)
    specs = {"FedAvg": dict(split="none", random_state=seed),
             "FedAvg'": dict(split="none", random_state=seed + 1000),
             "FedAlt": dict(split="head", random_state=seed),
             "FedAlt+guard": dict(split="head", guard="validation", random_state=seed),
             "FedAlt+guard, no refit": dict(split="head", guard="validation", guard_refit=False, random_state=seed)}
    acc, fits, seconds = {}, {}, {}
    for name, params in specs.items():
        tic = time.perf_counter()
        est = PartialPersonalizedClassifier(**common, **params).fit(X_tr, y_tr, client_ids=c_tr)
        seconds[name] = time.perf_counter() - tic
        _, _, acc[name] = client_accuracies(est, X_te, y_te, c_te)
        fits[name] = est
    guarded, unrefit = fits["FedAlt+guard"], fits["FedAlt+guard, no refit"]
    assert np.array_equal(guarded.guard_weights_, unrefit.guard_weights_), "the refit changed a decision"
    refits = {}
    # the full refit, as scikit-learn's, is the unguarded fit (the same seed, every row) with the decisions
    # and the fallback taken from its personal parts: checked against the library's fit
    est = pickle.loads(pickle.dumps(fits["FedAlt"]))
    est.guard_weights_ = guarded.guard_weights_.copy()
    est.fallback_params_ = {k: v.mean(0).clone() for k, v in est.personal_params_.items()}
    assert np.allclose(client_accuracies(est, X_te, y_te, c_te)[2], acc["FedAlt+guard"]), "the refit differs"
    # the alternative measured against it: a personal-only pass over every row (held-out ones given back,
    # the shared part frozen) after the unrefit fit, at the training lr and at a tenth of it
    for epochs, lr in ((1, None), (5, 0.03)):
        est = pickle.loads(pickle.dumps(unrefit)).set_params(guard=None, personal_lr=lr)  # keeps the decisions
        est.personalize(X_tr, y_tr, c_tr, epochs=epochs)
        refits[f"guard, personal pass {epochs} ep, lr {lr or unrefit.lr:g}"] = client_accuracies(est, X_te, y_te, c_te)[2]
    test, losses, valid_rows, n = guard_variants(guarded, X_tr, y_tr, c_tr, X_te, y_te, c_te, decided=unrefit)
    # the library's own decision must be the variant it implements
    weights, _ = decide(losses["personal"]["fitted"], losses["fallback"]["fitted"], valid_rows, n, guarded.guard_margin)
    assert np.array_equal(weights, guarded.guard_weights_), "recomputed decision differs from the fit's"
    variants = {}
    for loss in ("01", "ce"):
        for margin in args.margins:
            keep, _ = decide(losses["personal"][loss], losses["fallback"][loss], valid_rows, n, margin)
            variants[f"{loss}, margin {margin:g}"] = {
                "accuracy": np.where(keep > 0, test["personal"], test["fallback"]).tolist(), "kept": float(keep.mean())}
    return {"dataset": dataset, "seed": seed, "seconds": seconds,
            "accuracy": {k: v.tolist() for k, v in acc.items()},
            "guard_personal": test["personal"].tolist(), "fallback": test["fallback"].tolist(),
            "variants": variants, "refits": {k: v.tolist() for k, v in refits.items()}}


def hurt(acc, ref):
    return float(np.mean(np.asarray(acc) < np.asarray(ref) - 1e-12))


def table(results, dataset, keys):
    runs = [r for r in results if r["dataset"] == dataset]

    def column(get):
        values = np.array([get(r) for r in runs])
        return values.mean(), values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")

    print(f"\n{dataset}: {len(runs)} seeds (mean over seeds ± standard error)")
    print(f"{'model':<34}{'hurt share':>18}{'hurt by > 10 pts':>18}{'mean accuracy':>20}{'kept personal':>15}")
    rows = [("FedAvg' (noise: another seed)", lambda r: r["accuracy"]["FedAvg'"], None),
            ("FedAlt (no guard)", lambda r: r["accuracy"]["FedAlt"], None),
            ("FedAlt+guard, personal only", lambda r: r["guard_personal"], None),
            ("FedAlt+guard, fallback only", lambda r: r["fallback"], None),
            ("FedAlt+guard (as fitted)", lambda r: r["accuracy"]["FedAlt+guard"], None),
            ("FedAlt+guard, no refit", lambda r: r["accuracy"]["FedAlt+guard, no refit"], None)]
    rows += [(f"  {k}", (lambda k: lambda r: r["refits"][k])(k), None) for k in runs[0].get("refits", {})]
    rows += [(f"  guard {k}", (lambda k: lambda r: r["variants"][k]["accuracy"])(k),
              (lambda k: lambda r: r["variants"][k]["kept"])(k)) for k in keys]
    base = column(lambda r: np.mean(r["accuracy"]["FedAvg"]))
    print(f"{'FedAvg (reference)':<34}{'':>18}{base[0]:>13.4f} ± {base[1]:.4f}")
    for name, get, kept in rows:
        h = column(lambda r: hurt(get(r), r["accuracy"]["FedAvg"]))
        severe = column(lambda r: hurt(get(r), np.asarray(r["accuracy"]["FedAvg"]) - 0.1))
        m = column(lambda r: np.mean(get(r)))
        k = f"{column(kept)[0]:>15.2f}" if kept else ""
        print(f"{name:<34}{h[0]:>11.3f} ± {h[1]:.3f}{severe[0]:>11.3f} ± {severe[1]:.3f}{m[0]:>13.4f} ± {m[1]:.4f}{k}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--out", default=None, help="write the per-seed results as JSON here")
    parser.add_argument("--table", default=None, help="only print the table of a JSON written by --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        results, args_saved = saved["results"], saved["args"]
    else:
        results, tic = [], time.perf_counter()
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=None runs all rounds by design
        for dataset in args.datasets.split(","):
            for seed in range(args.seeds):
                results.append(one_seed(dataset, seed, args))
                print(f"{dataset} seed {seed}: {sum(results[-1]['seconds'].values()):.0f} s", flush=True)
        args_saved = {**vars(args), "total_seconds": time.perf_counter() - tic}
        print(f"total {args_saved['total_seconds']:.0f} s")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": args_saved, "results": results}, f)
    keys = list(results[0]["variants"])
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        table(results, dataset, keys)


if __name__ == "__main__":
    main()
