"""The convergence examples run at small sizes, save their figures, and report what they claim."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402


def assert_figure(path, min_width=800):
    assert path.exists()
    image = matplotlib.image.imread(path)
    assert image.shape[1] >= min_width and image.std() > 0.01  # a drawn figure, not a blank canvas


def test_convergence_rates_example(tmp_path, capsys, load_example):
    out = load_example("plot_convergence_rates").main(
        ["--out-dir", str(tmp_path / "figs"), "--clients", "4", "--samples", "16", "--rounds", "120",
         "--horizons", "20,40", "--seeds", "4", "--sampled", "2", "--floor-rounds", "150"])
    assert_figure(out["figure"])
    printed = capsys.readouterr().out
    assert "| problem | setting | algorithm | predicted | measured | bounds hold |" in printed
    assert "could not be read here" in printed  # where the predictions come from, beside them
    full_gradient_rows = [r for r in out["rows"] if r["setting"].startswith("full gradients, all clients")]
    assert len(full_gradient_rows) == 6  # three problems, two algorithms
    for row in full_gradient_rows:
        assert float(row["measured"]) == pytest.approx(-1.0, abs=0.12)  # the separable problem: -0.9 at T = 120
        assert row["below_bound"] == "yes"
    assert any(r["below_bound"] == "n/a (not proven)" for r in out["rows"])  # FedAlt, clients sampled
    for alg in ("fedalt", "fedsim"):
        r = out["deterministic"][alg]
        assert r["rho_measured"] == pytest.approx(r["rho_predicted"], abs=0.01) and r["between"]
        assert out["sublinear"][alg]["total"][-1] <= out["sublinear"][alg]["cap"]
        assert "control" in out["minibatch"][alg] and out["minibatch"][alg]["slope"].n_seeds == 4
        assert out["floors"][alg]["noise"].value == pytest.approx(1.0, abs=1e-6)  # linear in the noise scale
    assert "control" in out["sampling"]["fedsim"] and "control" not in out["sampling"]["fedalt"]


def test_fedalt_vs_fedsim_example(tmp_path, load_example):
    out = load_example("plot_fedalt_vs_fedsim").main(
        ["--out-dir", str(tmp_path), "--clients", "4", "--samples", "16", "--couplings", "0,0.8", "--etas", "1.5",
         "--rounds", "60", "--noises", "1,4", "--noise-couplings", "0,0.8", "--noise-rounds", "200", "--seeds", "8"])
    assert_figure(out["figure"])
    separable, coupled = out["coupling"]
    assert separable["fedalt_predicted"] == pytest.approx(separable["fedsim_predicted"], abs=1e-10)
    assert coupled["fedsim_predicted"] > 1 > coupled["fedalt_predicted"]  # eta = 1.5 > 2 / (1 + chi)
    for row in out["coupling"]:
        for alg in ("fedalt", "fedsim"):
            assert row[f"{alg}_measured"] == pytest.approx(row[f"{alg}_predicted"], abs=0.02)
    # The direction the theory gives: FedSim's extra floor grows with chi and with the personal noise.
    gap = {(r["coupling"], r["personal_noise"]): r["difference"].mean() for r in out["noise"]}
    assert gap[0.8, 4.0] > gap[0.8, 1.0] and gap[0.8, 4.0] > gap[0.0, 4.0] + 0.5 * abs(gap[0.8, 4.0])
    assert len(out["noise"]) == 4 and all(len(r["fedalt_shared"]) == 8 for r in out["noise"])


def test_training_curves_example(tmp_path, load_example):
    out = load_example("plot_training_curves").main(
        ["--out-dir", str(tmp_path), "--clients", "6", "--per-round", "3", "--rounds", "4", "--every", "2"])
    assert_figure(out["figure"])
    results = out["results"]
    for split in ("head", "input", "adapters"):
        for alg in ("fedalt", "fedsim"):
            (run,) = results[split][alg]
            assert len(run["loss"]) == 4 and np.all(np.isfinite(run["loss"]))
            np.testing.assert_array_equal(run["rounds"], [2, 4])
            assert np.all((run["accuracy"] >= 0) & (run["accuracy"] <= 1))
    assert results["fedavg"][0]["personal_fraction"] == 0.0
