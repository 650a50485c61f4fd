"""Convergence rates of FedAlt and FedSim on problems whose constants are known: measured against predicted.

FedAlt and FedSim run on personalized least squares, logistic regression and a separable logistic
regression (no minimizer), and the average over ``T`` rounds of the stationarity measure the
theory bounds is set next to what the theory predicts (``docs/theory.md`` says where each
prediction comes from: proven here, or recalled from the paper, whose theorem statements could not
be read):

- full gradients, all clients, constant step: the average falls like 1/T and lies between the
  convexity and the descent bounds every round (``pfedest.theory.rates.round_bounds``); the last
  iterate of least squares converges at the spectral radius of the round;
- the separable problem, where the measure itself decays like a power of T: the sum of the
  measure keeps growing, between ``(F_0 - F_T) / eta`` and the descent bound's cap;
- noise, step tuned to T (``pfedest.theory.rates.tuned_eta``): slope -1/2, estimated over seeds
  with a 95 % bootstrap interval, beside a noise-free control at the same steps (which falls like
  ``T^(-1/2)`` by itself) and the slope of what the noise adds;
- constant steps: the noise floor's exponents in ``eta`` and in the noise variance.

The tuned-step sweeps and the floors run on ``pfedest.theory.simulate`` (the same rounds in NumPy,
many seeds at once; equal to the engine on the same draws); the full-gradient runs on the engine
(``pfedest.theory.run``). It prints the tables and saves ``convergence_rates.png``.

Run: ``python examples/plot_convergence_rates.py --out-dir figures`` (a few minutes; running times
in ``docs/theory.md``), or ``--horizons 50,100,200 --seeds 4 --rounds 400`` for a quick look.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pfedest.theory import (PREDICTED_FLOOR_EXPONENTS, PREDICTED_SLOPES, bootstrap_fit,  # noqa: E402
                            bootstrap_slope, descent_bound, fit_linear_rate, fit_slope, linear_rate,
                            make_coupled_least_squares, make_least_squares, make_logistic, make_separable_logistic,
                            round_bounds, run, simulate, theory_step_sizes, trajectory_bound, tuned_eta)

ALGORITHMS = ("fedalt", "fedsim")
NAMES = {"fedalt": "FedAlt", "fedsim": "FedSim"}
COLORS = {"fedalt": "tab:blue", "fedsim": "tab:orange"}


def deterministic(problem, n_rounds):
    """One full-gradient engine run per algorithm at the prescribed constant step (eta = 1 / kappa)."""
    out = {}
    for alg in ALGORITHMS:
        eta = tuned_eta(problem, alg, n_rounds)
        lr_u, lr_v = theory_step_sizes(problem, eta)
        traj = run(problem, alg, n_rounds, lr_shared=lr_u, lr_personal=lr_v)
        mean = traj.running_mean()
        T = np.arange(1, n_rounds + 1)
        window = T >= max(2, n_rounds // 10)
        lower, upper = round_bounds(problem, traj)
        # D_t = F_t - F_{t+1}, each F rounded to about 1e-16 |F*|: compare where D_t is resolved to 1e-6.
        live = -np.diff(traj.objective_gap) > 1e-9 * max(1.0, abs(problem.optimum[2]))
        out[alg] = {"eta": eta, "traj": traj, "running_mean": mean, "bound": trajectory_bound(problem, traj),
                    "slope": fit_slope(T[window], mean[window]),
                    "between": bool(np.all(lower[live] <= traj.measured[live] * (1 + 1e-6))
                                    and np.all(traj.measured[live] <= upper[live] * (1 + 1e-6))),
                    "rho_predicted": linear_rate(problem, alg, lr_u, lr_v)}
        try:
            out[alg]["rho_measured"] = fit_linear_rate(traj.distance, low=1e-11, high=traj.distance[0] * 1e-2)
        except ValueError:  # too few rounds to leave the transient (or no minimizer)
            out[alg]["rho_measured"] = float("nan")
    return out


def sublinear(problem, n_rounds, eta=0.5):
    """Full-gradient runs on a problem without a minimizer: the sum of the measure and its two bounds."""
    out = {}
    T = np.arange(1, n_rounds + 1)
    window = T >= max(2, n_rounds // 10)
    for alg in ALGORITHMS:
        lr_u, lr_v = theory_step_sizes(problem, eta)
        runs = simulate(problem, alg, n_rounds, lr_shared=lr_u, lr_personal=lr_v)
        mean, gap = runs.running_mean()[0], runs.objective_gap[0]
        kappa = 1.0 + problem.constants.chi if alg == "fedsim" else 1.0
        out[alg] = {"eta": eta, "running_mean": mean, "total": T * mean, "floor": (gap[0] - gap[1:]) / eta,
                    "cap": gap[0] / (eta * (1.0 - kappa * eta / 2.0)), "slope": fit_slope(T[window], mean[window]),
                    "decay": fit_slope(T[window], runs.measured[0][window])}
    return out


def tuned_sweep(problem, horizons, seeds, seed, batch_size=None, clients_per_round=None):
    """Runs of T rounds with the step tuned to T, over seeds (the same seeds at every T), and a control.

    The control is the noise-free mean of the round at the same steps: full gradients for
    minibatch noise; for client sampling, FedSim with all clients and the personal step scaled by
    ``m/n`` (a personal vector moves with probability ``m/n``), measured with the ``m/n`` weight.
    FedAlt's mean round under sampling is not a FedAlt round: no control.
    """
    n = problem.n_clients
    m = n if clients_per_round is None else clients_per_round
    out = {}
    for alg in ALGORITHMS:
        finals, controls, bounds = [], [], []
        for T in horizons:
            eta = tuned_eta(problem, alg, T, batch_size=batch_size, clients_per_round=clients_per_round)
            lr_u, lr_v = theory_step_sizes(problem, eta)
            runs = simulate(problem, alg, T, lr_shared=lr_u, lr_personal=lr_v, batch_size=batch_size,
                            clients_per_round=clients_per_round, n_seeds=seeds, random_state=seed, noise=True)
            finals.append(runs.running_mean()[:, -1])
            try:
                bounds.append(descent_bound(problem, alg, lr_u, lr_v, T, initial_gap=float(runs.objective_gap[0, 0]),
                                            clients_per_round=clients_per_round, noise_shared=runs.noise_shared.mean(0),
                                            noise_personal=runs.noise_personal.mean(0))[-1])
            except NotImplementedError:  # FedAlt with clients sampled: no bound proven here
                bounds.append(np.nan)
            if m == n:
                controls.append(simulate(problem, alg, T, lr_shared=lr_u, lr_personal=lr_v).running_mean()[0, -1])
            elif alg == "fedsim":
                mean_round = simulate(problem, alg, T, lr_shared=lr_u, lr_personal=lr_v * m / n)
                measure = mean_round.stationarity_shared + (m / n) * (mean_round.stationarity
                                                                      - mean_round.stationarity_shared)
                controls.append(measure[0, :T].mean())
        values = np.array(finals).T
        r = {"T": np.array(horizons), "values": values, "mean": values.mean(0),
             "sem": values.std(0, ddof=1) / np.sqrt(seeds) if seeds > 1 else np.zeros(len(horizons)),
             "bound": np.array(bounds), "slope": _estimate(bootstrap_slope, horizons, values)}
        if controls:
            r["control"] = np.array(controls)
            r["control_slope"] = fit_slope(horizons, controls)
            r["excess"] = _estimate(bootstrap_slope, horizons, values, control=controls)
        out[alg] = r
    return out


def _estimate(fit, *args, **kw):
    """A fit, or ``None`` where it cannot be made (a mean minus its control not positive: too few seeds)."""
    try:
        return fit(*args, **kw)
    except ValueError:
        return None


def floors(etas, scales, seeds, seed, rounds=600):
    """Constant-step noise floors from the optimum on the coupled family, and their fitted exponents."""
    out = {}
    for alg in ALGORITHMS:
        settings, values = [], []
        for s in scales:
            problem = make_coupled_least_squares(4, 16, 3, 2, chi=0.4, mu=0.5, shared_noise=s, personal_noise=s,
                                                 random_state=seed)
            u, V, _ = problem.optimum
            for eta in etas:
                lr_u, lr_v = theory_step_sizes(problem, eta)
                runs = simulate(problem, alg, rounds, lr_shared=lr_u, lr_personal=lr_v, batch_size=4, n_seeds=seeds,
                                random_state=seed + 1, init=(u, V))
                values.append(runs.measured[:, rounds // 5:].mean(1))
                settings.append((eta, s ** 2))
        values = np.array(values).T
        e_eta, e_noise = bootstrap_fit(settings, values)
        out[alg] = {"settings": settings, "floors": values.mean(0), "eta": e_eta, "noise": e_noise}
    return out


def _reference(ax, x, y0, slope, label):
    x = np.asarray([x[0], x[-1]], dtype=float)
    ax.plot(x, y0 * (x / x[0]) ** slope, color="0.55", ls=":", lw=1.5, label=label)


def plot(det, sub, minibatch, sampling, floor, problem, args, path):
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
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
           title="Least squares: full gradients, all clients, constant step")
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
    reach = max(np.argmax(det[alg]["traj"].distance[0] * det[alg]["rho_predicted"] ** np.arange(10**6) < 1e-15)
                for alg in ALGORITHMS)
    ax.set_xlim(0, min(len(det["fedalt"]["traj"].distance) - 1, int(1.3 * reach) + 1))
    ax.set(xlabel="round t", ylabel=r"$\|x_t - x^\star\|$ (distance to the closed-form optimum)",
           title="Same runs, last iterate: linear convergence")
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    for alg in ALGORITHMS:
        r = sub[alg]
        T = np.arange(1, len(r["total"]) + 1)
        ax.semilogx(T, r["total"], color=COLORS[alg], lw=2,
                    label=f"{NAMES[alg]}: $\\sum_{{t<T}}\\Phi_t$ (avg slope {r['slope']:.3f}, "
                          f"$\\Phi_T \\sim T^{{{r['decay']:.2f}}}$)")
        ax.semilogx(T, r["floor"], color=COLORS[alg], ls=":", lw=1.2, label=f"{NAMES[alg]}: $(F_0 - F_T)/\\eta$")
        ax.axhline(r["cap"], color=COLORS[alg], ls="--", lw=1.2, label=f"{NAMES[alg]}: descent cap $K(F_0 - F^*)$")
    ax.set(xlabel="rounds T", ylabel="sum of the measure over T rounds",
           title=f"Separable logistic (no minimizer), eta={sub['fedalt']['eta']:g}: O(1/T), both sides")
    ax.legend(fontsize=7)

    for ax, sweep, title in ((axes[1, 0], minibatch, f"Minibatches of {args.batch_size}, all clients, "
                              r"step $\propto 1/\sqrt{T}$"),
                             (axes[1, 1], sampling, f"Full gradients, {args.sampled} of {problem.n_clients} clients, "
                              r"step $\propto 1/\sqrt{T}$")):
        for alg in ALGORITHMS:
            r = sweep[alg]
            slope = r["slope"]
            ax.errorbar(r["T"], r["mean"], yerr=r["sem"], color=COLORS[alg], marker="o", lw=2, capsize=3,
                        label=f"{NAMES[alg]} measured (slope {slope if slope else 'n/a'})")
            if "control" in r:
                ax.plot(r["T"], r["control"], color=COLORS[alg], marker="x", ls="-.", lw=1,
                        label=f"{NAMES[alg]} noise-free control (slope {r['control_slope']:+.3f})")
            if np.all(np.isfinite(r["bound"])):
                ax.plot(r["T"], r["bound"], color=COLORS[alg], ls="--", lw=1.2, label=f"{NAMES[alg]} descent bound")
        r = sweep["fedalt"]
        _reference(ax, r["T"], r["mean"][0] * 0.6, -0.5, "slope -1/2 (theory)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="horizon T (one run per T and seed)",
               ylabel=r"average stationarity (mean over seeds $\pm$ s.e.)", title=title)
        ax.legend(fontsize=7)

    ax = axes[1, 2]
    for alg in ALGORITHMS:
        r = floor[alg]
        settings = np.array(r["settings"])
        for s2, marker in zip(sorted(set(settings[:, 1])), ("o", "s", "^")):
            rows = settings[:, 1] == s2
            ax.loglog(settings[rows, 0], r["floors"][rows], color=COLORS[alg], marker=marker,
                      label=f"{NAMES[alg]}, noise variance x{s2:g}")
    for alg in ALGORITHMS:
        e = floor[alg]["eta"]
        ax.plot([], [], " ", label=f"{NAMES[alg]} exponents: eta {e}, noise {floor[alg]['noise']}")
    ax.set(xlabel=r"step scale $\eta$ (constant)", ylabel="noise floor of the measure",
           title=r"Noise floor $\propto \eta^a (\sigma^2)^b$: predicted a = b = 1 as $\eta \to 0$")
    ax.legend(fontsize=7)

    k = problem.constants
    fig.suptitle(f"Least squares: n={problem.n_clients} clients, d_u={problem.dim_shared}, d_v={problem.dim_personal}, "
                 f"L_u={k.L_u:.2f}, L_v={k.L_v:.2f}, chi={k.chi:.2f}, mu={k.mu:.2f}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows):
    lines = ["| problem | setting | algorithm | predicted | measured | bounds hold |", "|---|---|---|---|---|---|"]
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
    parser.add_argument("--seeds", type=int, default=32, help="seeds per horizon (the same at every horizon)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sampled", type=int, default=2, help="clients per round in the sampling sweep")
    parser.add_argument("--floor-etas", default="0.05,0.1,0.2", help="constant steps of the noise-floor fit")
    parser.add_argument("--floor-rounds", type=int, default=600, help="rounds of each noise-floor run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated problems and of the runs")
    args = parser.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    ls = make_least_squares(args.clients, args.samples, random_state=args.seed)
    logit = make_logistic(args.clients, args.samples, random_state=args.seed)
    separable = make_separable_logistic(args.clients, args.samples, random_state=args.seed)
    det = deterministic(ls, args.rounds)
    det_logit = deterministic(logit, args.rounds)
    sub = sublinear(separable, args.rounds)
    minibatch = tuned_sweep(ls, horizons, args.seeds, args.seed + 1, batch_size=args.batch_size)
    sampling = tuned_sweep(ls, horizons, args.seeds, args.seed + 1, clients_per_round=args.sampled)
    floor = floors([float(e) for e in args.floor_etas.split(",")], (1.5, 3.0), args.seeds, args.seed, args.floor_rounds)

    rows = []
    for name, d in (("least squares", det), ("logistic", det_logit)):
        for alg in ALGORITHMS:
            r = d[alg]
            rows.append({"problem": name, "setting": f"full gradients, all clients, eta={r['eta']:.3f}; slope of "
                         f"the average over T in [{args.rounds // 10}, {args.rounds}]", "algorithm": NAMES[alg],
                         "predicted": f"{PREDICTED_SLOPES['deterministic']:+.2f}", "measured": f"{r['slope']:+.3f}",
                         "below_bound": "yes" if np.all(r["running_mean"] <= r["bound"]) and r["between"] else "NO"})
    for alg in ALGORITHMS:
        r = sub[alg]
        holds = np.all(r["floor"] <= r["total"] * (1 + 1e-9)) and np.all(r["total"] <= r["cap"])
        rows.append({"problem": "separable logistic", "setting": f"full gradients, all clients, eta={r['eta']:g}; "
                     f"slope of the average over T in [{args.rounds // 10}, {args.rounds}] (the measure decays like "
                     f"T^{r['decay']:.2f}; sum at T = {args.rounds}: {r['total'][-1] / r['cap']:.2f} of the cap)",
                     "algorithm": NAMES[alg], "predicted": f"{PREDICTED_SLOPES['deterministic']:+.2f}",
                     "measured": f"{r['slope']:+.3f}", "below_bound": "yes" if holds else "NO"})
    for alg in ALGORITHMS:
        r = det[alg]
        rows.append({"problem": "least squares", "setting": "same runs as the first rows, last iterate: rate per round",
                     "algorithm": NAMES[alg], "predicted": f"{r['rho_predicted']:.5f}",
                     "measured": f"{r['rho_measured']:.5f}", "below_bound": "-"})
    for sweep, setting in ((minibatch, f"minibatch {args.batch_size}, all clients"),
                           (sampling, f"full gradients, {args.sampled} of {args.clients} clients")):
        for alg in ALGORITHMS:
            r = sweep[alg]
            below = "n/a (not proven)" if not np.all(np.isfinite(r["bound"])) else (
                "yes" if np.all(r["mean"] <= r["bound"]) else "NO")
            where = f"{setting}, step tuned to T, T in {horizons[0]}..{horizons[-1]}, {args.seeds} seed(s)"
            rows.append({"problem": "least squares", "setting": where, "algorithm": NAMES[alg],
                         "predicted": f"{PREDICTED_SLOPES['stochastic']:+.2f}", "measured": str(r["slope"]),
                         "below_bound": below})
            if "control" in r:
                rows.append({"problem": "least squares", "setting": f"{where}: noise-free control at the same steps",
                             "algorithm": NAMES[alg],  # dF0 / (eta T) with eta ~ T^(-1/2)
                             "predicted": f"{PREDICTED_SLOPES['deterministic'] - (-0.5):+.2f}",
                             "measured": f"{r['control_slope']:+.3f}", "below_bound": "-"})
                rows.append({"problem": "least squares", "setting": f"{where}: what the noise adds (mean - control)",
                             "algorithm": NAMES[alg], "predicted": f"{-0.5 * PREDICTED_FLOOR_EXPONENTS['eta']:+.2f}",
                             "measured": str(r["excess"]), "below_bound": "-"})
    for alg in ALGORITHMS:
        for key in ("eta", "noise"):
            rows.append({"problem": "coupled least squares (chi 0.4, mu 0.5)",
                         "setting": f"constant step eta in {args.floor_etas}, minibatch 4, from the optimum: floor's "
                                    f"exponent in {'eta' if key == 'eta' else 'the noise variance'}",
                         "algorithm": NAMES[alg], "predicted": f"{PREDICTED_FLOOR_EXPONENTS[key]:+.2f}",
                         "measured": str(floor[alg][key]), "below_bound": "-"})
    print(table(rows))
    print("\n(predicted: from the descent bound proven in docs/theory.md, as T -> oo or eta -> 0; the -1/2 is also "
          "the recalled shape of the paper's rate, whose theorems could not be read here; measured with noise: "
          "mean over seeds [95 % bootstrap interval])")
    path = args.out_dir / "convergence_rates.png"
    plot(det, sub, minibatch, sampling, floor, ls, args, path)
    print(f"\nsaved {path} ({time.perf_counter() - tic:.0f} s)")
    return {"rows": rows, "deterministic": det, "deterministic_logistic": det_logit, "sublinear": sub,
            "minibatch": minibatch, "sampling": sampling, "floors": floor, "figure": path}


if __name__ == "__main__":
    main()
