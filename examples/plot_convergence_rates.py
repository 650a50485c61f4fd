"""Convergence rates of FedAlt and FedSim on problems whose constants are known: measured against predicted.

On a personalized least-squares problem (and a logistic regression) this runs FedAlt and FedSim
through pfedest's own round (``pfedest.core.rounds.run_round``) and compares, on log-log axes, the
average over ``T`` rounds of the stationarity measure the theory bounds with what it predicts:

- full gradients, all clients, constant step: slope -1, and below the descent bound of
  ``pfedest.theory.rates.descent_bound`` at every ``T``; the last iterate converges linearly at the
  spectral radius of the round (``pfedest.theory.rates.linear_rate``);
- minibatch noise, all clients, step tuned to ``T`` (``pfedest.theory.rates.tuned_eta``): slope -1/2;
- full gradients, ``m`` of ``n`` clients per round, step tuned to ``T``: slope -1/2.

It prints the table of measured and predicted slopes and saves ``convergence_rates.png``.

Run: ``python examples/plot_convergence_rates.py --out-dir figures`` (minutes; running times in
``docs/theory.md``), or ``--horizons 50,100,200 --seeds 1 --rounds 400`` for a quick look.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pfedest.theory import (PREDICTED_SLOPES, fit_linear_rate, fit_slope, linear_rate,  # noqa: E402
                            make_least_squares, make_logistic, run, theory_step_sizes, trajectory_bound, tuned_eta)

ALGORITHMS = ("fedalt", "fedsim")
NAMES = {"fedalt": "FedAlt", "fedsim": "FedSim"}
COLORS = {"fedalt": "tab:blue", "fedsim": "tab:orange"}


def deterministic(problem, n_rounds):
    """One full-gradient run per algorithm at the prescribed constant step (eta = 1 / kappa)."""
    out = {}
    for alg in ALGORITHMS:
        eta = tuned_eta(problem, alg, n_rounds)
        lr_u, lr_v = theory_step_sizes(problem, eta)
        traj = run(problem, alg, n_rounds, lr_shared=lr_u, lr_personal=lr_v)
        mean = traj.running_mean()
        T = np.arange(1, n_rounds + 1)
        window = T >= max(2, n_rounds // 10)
        out[alg] = {"eta": eta, "traj": traj, "running_mean": mean, "bound": trajectory_bound(problem, traj),
                    "slope": fit_slope(T[window], mean[window]),
                    "rho_predicted": linear_rate(problem, alg, lr_u, lr_v)}
        try:
            out[alg]["rho_measured"] = fit_linear_rate(traj.distance, low=1e-11, high=traj.distance[0] * 1e-2)
        except ValueError:  # too few rounds to leave the transient
            out[alg]["rho_measured"] = float("nan")
    return out


def tuned_sweep(problem, horizons, seeds, batch_size=None, clients_per_round=None):
    """For each horizon T, fresh runs of T rounds with the step tuned to T; mean over seeds."""
    out = {}
    for alg in ALGORITHMS:
        finals, spread, bounds = [], [], []
        for T in horizons:
            eta = tuned_eta(problem, alg, T, batch_size=batch_size, clients_per_round=clients_per_round)
            lr_u, lr_v = theory_step_sizes(problem, eta)
            values, bound = [], []
            for seed in range(seeds):
                traj = run(problem, alg, T, lr_shared=lr_u, lr_personal=lr_v, batch_size=batch_size,
                           clients_per_round=clients_per_round, random_state=seed)
                values.append(traj.running_mean()[-1])
                try:
                    bound.append(trajectory_bound(problem, traj)[-1])
                except NotImplementedError:  # FedAlt with partial participation: no proven bound
                    bound.append(np.nan)
            finals.append(np.mean(values))
            spread.append(np.std(values) / np.sqrt(len(values)) if len(values) > 1 else 0.0)
            bounds.append(np.mean(bound))
        out[alg] = {"T": np.array(horizons), "mean": np.array(finals), "sem": np.array(spread),
                    "bound": np.array(bounds), "slope": fit_slope(horizons, finals)}
    return out


def _reference(ax, x, y0, slope, label):
    x = np.asarray([x[0], x[-1]], dtype=float)
    ax.plot(x, y0 * (x / x[0]) ** slope, color="0.55", ls=":", lw=1.5, label=label)


def plot(det, minibatch, sampling, problem, args, path):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    ax = axes[0, 0]
    for alg in ALGORITHMS:
        r = det[alg]
        T = np.arange(1, len(r["running_mean"]) + 1)
        ax.loglog(T, r["running_mean"], color=COLORS[alg], lw=2,
                  label=f"{NAMES[alg]} measured (slope {r['slope']:.3f})")
        ax.loglog(T, r["bound"], color=COLORS[alg], ls="--", lw=1.2, label=f"{NAMES[alg]} descent bound")
    first = det["fedalt"]["running_mean"]
    _reference(ax, [len(first) / 10, len(first)], first[len(first) // 10 - 1] * 0.5, -1.0, "slope -1 (theory)")
    ax.set(xlabel="rounds T", ylabel=r"average stationarity  $(1/T)\,\sum_{t<T}\Phi_t$",
           title="Full gradients, all clients, constant step")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for alg in ALGORITHMS:
        r = det[alg]
        d = r["traj"].distance
        t = np.arange(len(d))
        ax.semilogy(t, d, color=COLORS[alg], lw=2,
                    label=f"{NAMES[alg]} measured (rate {r['rho_measured']:.4f}/round)")
        predicted = d[0] * r["rho_predicted"] ** t
        shown = predicted > 1e-15  # below that the measured distance sits at float64 rounding
        ax.semilogy(t[shown], predicted[shown], color=COLORS[alg], ls="--", lw=1.2,
                    label=f"{NAMES[alg]} predicted $\\rho$ = {r['rho_predicted']:.4f}")
    ax.set_ylim(1e-16, None)
    # Past the rounds where the predicted distance reaches float64 rounding there is nothing to see.
    reach = max(np.argmax(det[alg]["traj"].distance[0] * det[alg]["rho_predicted"] ** np.arange(10**6) < 1e-15)
                for alg in ALGORITHMS)
    ax.set_xlim(0, min(len(det["fedalt"]["traj"].distance) - 1, int(1.3 * reach) + 1))
    ax.set(xlabel="round t", ylabel=r"$\|x_t - x^\star\|$ (distance to the closed-form optimum)",
           title="Same runs, last iterate: linear convergence (least squares)")
    ax.legend(fontsize=8)

    for ax, sweep, title in ((axes[1, 0], minibatch, f"Minibatches of {args.batch_size} rows, all clients, "
                              r"step $\propto 1/\sqrt{T}$"),
                             (axes[1, 1], sampling, f"Full gradients, {args.sampled} of {problem.n_clients} clients "
                              r"per round, step $\propto 1/\sqrt{T}$")):
        for alg in ALGORITHMS:
            r = sweep[alg]
            ax.errorbar(r["T"], r["mean"], yerr=r["sem"], color=COLORS[alg], marker="o", lw=2, capsize=3,
                        label=f"{NAMES[alg]} measured (slope {r['slope']:.3f})")
            if np.all(np.isfinite(r["bound"])):
                ax.plot(r["T"], r["bound"], color=COLORS[alg], ls="--", lw=1.2,
                        label=f"{NAMES[alg]} descent bound (in expectation)")
            else:
                ax.plot([], [], color=COLORS[alg], ls="--", lw=1.2, label=f"{NAMES[alg]}: no bound proven here")
        r = sweep["fedalt"]
        _reference(ax, r["T"], r["mean"][0] * 0.6, -0.5, "slope -1/2 (theory)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="horizon T (rounds; one run per T and seed)",
               ylabel=r"average stationarity  $(1/T)\,\sum_{t<T}\Phi_t$  (mean over seeds)", title=title)
        ax.legend(fontsize=8)

    k = problem.constants
    fig.suptitle(f"Personalized least squares: n={problem.n_clients} clients, d_u={problem.dim_shared}, "
                 f"d_v={problem.dim_personal}, L_u={k.L_u:.2f}, L_v={k.L_v:.2f}, chi={k.chi:.2f}, mu={k.mu:.2f}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows):
    lines = ["| problem | setting | algorithm | predicted | measured | below bound |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['setting']} | {r['algorithm']} | {r['predicted']} | {r['measured']} "
                     f"| {r['below_bound']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("figures"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--samples", type=int, default=40, help="rows per client")
    parser.add_argument("--rounds", type=int, default=1000, help="rounds of the full-gradient runs")
    parser.add_argument("--horizons", default="64,128,256,512,1024,2048",
                        help="comma-separated horizons T of the tuned-step sweeps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sampled", type=int, default=2, help="clients per round in the sampling sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated problems")
    args = parser.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    ls = make_least_squares(args.clients, args.samples, random_state=args.seed)
    logit = make_logistic(args.clients, args.samples, random_state=args.seed)
    det = deterministic(ls, args.rounds)
    det_logit = deterministic(logit, args.rounds)
    minibatch = tuned_sweep(ls, horizons, args.seeds, batch_size=args.batch_size)
    sampling = tuned_sweep(ls, horizons, args.seeds, clients_per_round=args.sampled)

    rows = []
    for name, d in (("least squares", det), ("logistic", det_logit)):
        for alg in ALGORITHMS:
            r = d[alg]
            rows.append({"problem": name, "setting": f"full gradients, all clients, eta={r['eta']:.3f}; slope of "
                         f"the average over T in [{args.rounds // 10}, {args.rounds}]", "algorithm": NAMES[alg],
                         "predicted": f"{PREDICTED_SLOPES['deterministic']:+.2f}", "measured": f"{r['slope']:+.3f}",
                         "below_bound": "yes" if np.all(r["running_mean"] <= r["bound"]) else "NO"})
    for alg in ALGORITHMS:
        r = det[alg]
        rows.append({"problem": "least squares", "setting": "same runs, last iterate: rate per round",
                     "algorithm": NAMES[alg], "predicted": f"{r['rho_predicted']:.5f}",
                     "measured": f"{r['rho_measured']:.5f}", "below_bound": "-"})
    for sweep, setting in ((minibatch, f"minibatch {args.batch_size}, all clients"),
                           (sampling, f"full gradients, {args.sampled} of {args.clients} clients")):
        for alg in ALGORITHMS:
            r = sweep[alg]
            below = "n/a (not proven)" if not np.all(np.isfinite(r["bound"])) else (
                "yes" if np.all(r["mean"] <= r["bound"]) else "NO")
            rows.append({"problem": "least squares",
                         "setting": f"{setting}, step tuned to T, T in {horizons[0]}..{horizons[-1]}, "
                                    f"{args.seeds} seed(s)",
                         "algorithm": NAMES[alg], "predicted": f"{PREDICTED_SLOPES['stochastic']:+.2f}",
                         "measured": f"{r['slope']:+.3f}", "below_bound": below})
    print(table(rows))
    path = args.out_dir / "convergence_rates.png"
    plot(det, minibatch, sampling, ls, args, path)
    print(f"\nsaved {path} ({time.perf_counter() - tic:.0f} s)")
    return {"rows": rows, "deterministic": det, "deterministic_logistic": det_logit, "minibatch": minibatch,
            "sampling": sampling, "figure": path}


if __name__ == "__main__":
    main()
