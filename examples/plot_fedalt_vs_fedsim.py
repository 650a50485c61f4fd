"""When does FedAlt beat FedSim? Sweeps over the two knobs the theory names: coupling and personal noise.

Personalized least squares in which only the coupling moves
(``pfedest.theory.generators.make_coupled_least_squares``: every client's Hessian has ``L_u = L_v =
1`` and strong convexity ``mu`` whatever ``chi`` is, and the noise at the optimum is the same for
every ``chi``), one local step per block:

1. **Coupling ``chi``, full gradients** (the engine, ``pfedest.theory.run``). The round is then an
   affine map whose spectral radius (``pfedest.theory.rates.linear_rate``) is the per-round
   convergence factor. FedSim's descent lemma needs ``eta < 2 / (1 + chi)``, FedAlt's only ``eta <
   2`` (``docs/theory.md``): as ``chi`` grows FedSim slows down and, at a large step, diverges,
   while FedAlt does not; at ``chi = 0`` the two are the same method. Predicted curves, measured
   markers.
2. **Personal-gradient noise, minibatches** (``pfedest.theory.simulate``, many seeds; equal to the
   engine on the same draws). The paper's FedSim bound carries an extra ``chi^2 sigma_v^2 / L_v``
   (recalled, not read: shape only), the descent bound proven here a factor ``1 + chi`` on
   FedSim's noise term: personal noise leaks into the shared update when ``chi > 0``. Measured:
   the noise floor of the shared stationarity ``||grad_u F||^2 / L_u`` at a constant step from the
   optimum, swept over ``chi`` and ``personal_noise`` (noise in ``grad_v`` alone), the FedSim -
   FedAlt gap paired by seed, and the exponents of what the coupling adds to it (the gap minus
   the gap at ``chi = 0``) in ``chi`` and ``sigma_v^2``.

Saves ``fedalt_vs_fedsim.png`` and prints the numbers behind it.

Run: ``python examples/plot_fedalt_vs_fedsim.py --out-dir figures`` (about a minute of CPU on 2 cores; running times in
``docs/theory.md``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pfedest.theory import (bootstrap_fit, linear_rate, make_coupled_least_squares, run, simulate,  # noqa: E402
                            theory_step_sizes)

ALGORITHMS = ("fedalt", "fedsim")
NAMES = {"fedalt": "FedAlt", "fedsim": "FedSim"}
COLORS = {"fedalt": "tab:blue", "fedsim": "tab:orange"}


def measured_rate(distance):
    """Per-round factor of ``||x_t - x*||``, fitted past the transient and above the float floor.

    Converging runs: the rounds where the distance is between 1e-12 and 1/100 of the start;
    diverging runs: the second half of the run.
    """
    d = np.asarray(distance)
    d = d[np.isfinite(d)]
    if d[-1] < d[0]:
        t = np.flatnonzero((d > 1e-12) & (d < d[0] * 1e-2))
    else:
        t = np.arange(len(d) // 2, len(d))
    if len(t) < 3:
        return float("nan")
    return float(np.exp(np.polyfit(t, np.log(d[t]), 1)[0]))


def family(args, coupling, personal_noise=0.0, shared_noise=0.0):
    """The problem at a coupling knob in [0, 1]: ``chi`` = knob times its largest value at this ``mu``."""
    chi = coupling * (1.0 - args.mu)
    return make_coupled_least_squares(args.clients, args.samples, args.dim_shared, args.dim_personal, chi=chi,
                                      mu=args.mu, shared_noise=shared_noise, personal_noise=personal_noise,
                                      random_state=args.seed)


def coupling_sweep(couplings, etas, n_rounds, args):
    rows = []
    for c in couplings:
        problem = family(args, c)
        for eta in etas:
            lr_u, lr_v = theory_step_sizes(problem, eta)
            row = {"coupling": c, "chi": problem.constants.chi, "eta": eta}
            for alg in ALGORITHMS:
                row[f"{alg}_predicted"] = linear_rate(problem, alg, lr_u, lr_v)
                traj = run(problem, alg, n_rounds, lr_shared=lr_u, lr_personal=lr_v)
                row[f"{alg}_measured"] = measured_rate(traj.distance)
            rows.append(row)
    return rows


def noise_sweep(couplings, noises, n_rounds, seeds, args):
    """Constant-step floors from the optimum, FedAlt and FedSim, over seeds (the same draws everywhere)."""
    rows = []
    for c in couplings:
        for s in noises:
            problem = family(args, c, personal_noise=s, shared_noise=args.shared_noise)
            summary = problem.summary(args.batch_size)
            u, V, _ = problem.optimum
            lr_u, lr_v = theory_step_sizes(problem, args.eta)
            row = {"coupling": c, "chi": summary["chi"], "personal_noise": s,
                   "sigma2_v_over_L_v": summary["sigma2_v_at_optimum"] / summary["L_v"]}
            burn_in = n_rounds // 5
            for alg in ALGORITHMS:
                runs = simulate(problem, alg, n_rounds, lr_shared=lr_u, lr_personal=lr_v, batch_size=args.batch_size,
                                n_seeds=seeds, random_state=args.seed + 1, init=(u, V))
                row[f"{alg}_shared"] = runs.stationarity_shared[:, burn_in:].mean(1)
                row[f"{alg}_full"] = float(runs.stationarity[:, burn_in:].mean())
                row[f"{alg}_gap"] = float(runs.objective_gap[:, burn_in:].mean())
            row["difference"] = row["fedsim_shared"] - row["fedalt_shared"]  # paired by seed
            rows.append(row)
    return rows


def coupling_exponents(noise_rows):
    """Exponents in ``chi`` and ``sigma_v^2`` of what the coupling adds to the gap, where that is clearly positive.

    The gap minus the gap at ``chi = 0`` and the same noise, paired by seed; settings where it is
    not at least three standard errors above 0 are left out (a log-log fit of resampled seeds
    needs positive values).
    """
    base = {r["personal_noise"]: r["difference"] for r in noise_rows if r["coupling"] == 0}
    keep = []
    for r in noise_rows:
        if r["coupling"] > 0 and r["sigma2_v_over_L_v"] > 0 and r["personal_noise"] in base:
            added = r["difference"] - base[r["personal_noise"]]
            if added.mean() > 3 * _sem(added):
                keep.append(r)
    if len({r["chi"] for r in keep}) < 2 or len({r["personal_noise"] for r in keep}) < 2:
        return None
    settings = [(r["chi"], r["sigma2_v_over_L_v"]) for r in keep]
    values = np.array([r["difference"] - base[r["personal_noise"]] for r in keep]).T
    try:
        return bootstrap_fit(settings, values)
    except ValueError:  # too few seeds for a positive mean in every resample
        return None


def _sem(x):
    x = np.asarray(x)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def plot(det_rows, noise_rows, etas, args, path):
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.2))
    ax = axes[0]
    styles = {eta: ls for eta, ls in zip(etas, ["-", "--", ":", "-."])}
    for eta in etas:
        rows = [r for r in det_rows if r["eta"] == eta]
        chi = np.array([r["chi"] for r in rows])
        order = np.argsort(chi)
        for alg in ALGORITHMS:
            pred = np.array([r[f"{alg}_predicted"] for r in rows])[order]
            meas = np.array([r[f"{alg}_measured"] for r in rows])[order]
            ax.plot(chi[order], pred, color=COLORS[alg], ls=styles[eta], lw=2,
                    label=f"{NAMES[alg]}, $\\eta$={eta:g}: predicted")
            ax.plot(chi[order], meas, color=COLORS[alg], ls="none", marker="o" if alg == "fedalt" else "s",
                    mfc="none", ms=8, label=f"{NAMES[alg]}, $\\eta$={eta:g}: measured")
        if eta > 1.0:  # where FedSim's descent condition eta < 2 / (1 + chi) stops holding
            ax.axvline(2.0 / eta - 1.0, color="0.5", ls=styles[eta], lw=1)
            ax.text(2.0 / eta - 1.0, 0.62, f" FedSim's descent\n condition fails\n ($\\eta$={eta:g})",
                    fontsize=8, color="0.3", va="top", transform=ax.get_xaxis_transform())
    ax.axhline(1.0, color="k", lw=0.8)
    ax.text(0.0, 1.0, " diverges above", fontsize=8, va="bottom")
    ax.set(xlabel=r"coupling $\chi = L_{uv} / \sqrt{L_u L_v}$ (computed from the data)",
           ylabel=r"convergence factor per round of $\|x_t - x^\star\|$",
           title="Full gradients, all clients: rate vs coupling")
    ax.legend(fontsize=7, ncol=2, loc="upper left")

    ax = axes[1]
    by_c = sorted({r["coupling"] for r in noise_rows})
    markers = ["o", "s", "^", "D"]
    for i, c in enumerate(by_c):
        rows = [r for r in noise_rows if r["coupling"] == c]
        x = np.array([r["sigma2_v_over_L_v"] for r in rows])
        for alg in ALGORITHMS:
            y = np.array([r[f"{alg}_shared"].mean() for r in rows])
            e = np.array([_sem(r[f"{alg}_shared"]) for r in rows])
            ax.errorbar(x, y, yerr=e, color=COLORS[alg], marker=markers[i], ls="-" if i else "--", capsize=3,
                        label=f"{NAMES[alg]}, $\\chi$={rows[0]['chi']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel=r"personal gradient noise $\sigma_v^2 / L_v$ at the optimum (minibatch of "
                  f"{args.batch_size})",
           ylabel=r"shared stationarity floor  $\|\nabla_u F\|^2 / L_u$  (last 4/5 of the run)",
           title=f"Minibatches, constant step $\\eta$={args.eta:g}: shared noise floor")
    ax.legend(fontsize=8)

    ax = axes[2]
    for i, c in enumerate(by_c):
        rows = [r for r in noise_rows if r["coupling"] == c]
        x = np.array([r["sigma2_v_over_L_v"] for r in rows])
        diff = [r["fedsim_shared"] - r["fedalt_shared"] for r in rows]  # paired by seed
        y = np.array([d.mean() for d in diff])
        e = np.array([_sem(d) for d in diff])
        ax.errorbar(x, y, yerr=e, color="k", marker=markers[i], ls="-" if i else "--", capsize=3,
                    label=f"$\\chi$={rows[0]['chi']:.2f}")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel=r"personal gradient noise $\sigma_v^2 / L_v$ at the optimum",
           ylabel="FedSim minus FedAlt, shared stationarity floor",
           title=r"FedSim $-$ FedAlt, paired by seed (mean $\pm$ s.e.)")
    ax.legend(fontsize=8)
    fig.suptitle(f"FedAlt vs FedSim on least squares whose coupling alone moves (L_u = L_v = 1, mu = {args.mu:g}): "
                 f"n={args.clients} clients, {args.samples} rows each, one local step per block", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("figures"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--samples", type=int, default=40, help="rows per client")
    parser.add_argument("--dim-shared", type=int, default=5)
    parser.add_argument("--dim-personal", type=int, default=3)
    parser.add_argument("--mu", type=float, default=0.1, help="strong convexity, the same at every chi")
    parser.add_argument("--couplings", default="0,0.2,0.4,0.6,0.8,0.9",
                        help="coupling knobs in [0, 1] of the chi sweep: chi = knob * (1 - mu), its largest value")
    parser.add_argument("--etas", default="1.0,1.5", help="step scales eta (gamma = eta / L) of the chi sweep")
    parser.add_argument("--rounds", type=int, default=200, help="rounds of the chi sweep's runs")
    parser.add_argument("--noises", default="1,2,4", help="personal_noise knobs of the noise sweep")
    parser.add_argument("--noise-couplings", default="0,0.4,0.8", help="coupling knobs of the noise sweep")
    parser.add_argument("--noise-rounds", type=int, default=400)
    parser.add_argument("--shared-noise", type=float, default=1.0, help="shared_noise of the noise sweep")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eta", type=float, default=0.3, help="step scale of the noise sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated problems")
    args = parser.parse_args(argv)
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    etas = floats(args.etas)

    det_rows = coupling_sweep(floats(args.couplings), etas, args.rounds, args)
    print("Full gradients, all clients: convergence factor per round (predicted = spectral radius of the round)")
    print("| coupling | chi | eta | FedAlt predicted | FedAlt measured | FedSim predicted | FedSim measured |")
    print("|---|---|---|---|---|---|---|")
    for r in det_rows:
        print(f"| {r['coupling']:.2f} | {r['chi']:.3f} | {r['eta']:g} | {r['fedalt_predicted']:.4f} | "
              f"{r['fedalt_measured']:.4f} | {r['fedsim_predicted']:.4f} | {r['fedsim_measured']:.4f} |")

    noise_rows = noise_sweep(floats(args.noise_couplings), floats(args.noises), args.noise_rounds, args.seeds, args)
    print(f"\nMinibatch {args.batch_size}, eta={args.eta:g}, {args.noise_rounds} rounds from the optimum, {args.seeds} "
          f"seed(s): floors = means over the last 4/5 of each run; L_u = L_v = 1, mu = {args.mu:g} at every chi")
    print("| chi | sigma_v^2/L_v | shared: FedAlt | shared: FedSim | FedSim - FedAlt [95 % interval] | FedSim/FedAlt "
          "| full measure: FedSim/FedAlt | F - F*: FedSim/FedAlt |")
    print("|---|---|---|---|---|---|---|---|")
    for r in noise_rows:
        a, s = r["fedalt_shared"].mean(), r["fedsim_shared"].mean()
        d, h = r["difference"].mean(), 1.96 * _sem(r["difference"])
        print(f"| {r['chi']:.3f} | {r['sigma2_v_over_L_v']:.2f} | {a:.4f} | {s:.4f} | {d:+.4f} [{d - h:+.4f}, "
              f"{d + h:+.4f}] | {s / a:.3f} | {r['fedsim_full'] / r['fedalt_full']:.3f} | "
              f"{r['fedsim_gap'] / r['fedalt_gap']:.3f} |")
    exponents = coupling_exponents(noise_rows)
    if exponents:
        print(f"\nWhat the coupling adds to the gap (gap minus the gap at chi = 0, same noise) ~ chi^a (sigma_v^2)^b: "
              f"a = {exponents[0]}, b = {exponents[1]} (recalled term chi^2 sigma_v^2 / L_v: a = 2, b = 1; the proven "
              f"bound's factor 1 + chi: a = 1)")
    path = args.out_dir / "fedalt_vs_fedsim.png"
    plot(det_rows, noise_rows, etas, args, path)
    print(f"\nsaved {path} ({time.perf_counter() - tic:.0f} s)")
    return {"coupling": det_rows, "noise": noise_rows, "exponents": exponents, "figure": path}


if __name__ == "__main__":
    main()
