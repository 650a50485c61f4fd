"""The calibration suite of benchmarks/calibrate_defaults.py: its data sets and a tiny run of the script."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_defaults.py"


@pytest.fixture(scope="module")
def calibration():
    spec = importlib.util.spec_from_file_location("calibrate_defaults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_suite_has_six_data_sets_or_more_each_shift_and_every_client_in_training_and_test(calibration):
    suite = calibration.SUITE
    assert len(suite) >= 6
    shifts = " ".join(d.shifts for d in suite.values())
    for kind in ("concept", "covariate", "label skew", "unequal sizes", "of 4 rows"):
        assert kind in shifts, kind
    for name in suite:
        (X, y, c), (X_te, y_te, c_te) = calibration.held_out(name, seed=0)
        assert X.dtype == np.float32 and len(X) == len(y) == len(c)
        assert set(c_te) <= set(c)  # every tested client trained
        assert np.abs(X).max() < 20  # scaled features
        assert set(calibration.held_out(name, seed=1)[0][2]) == set(c)


def test_params_are_parsed_as_python_values(calibration):
    assert calibration.parse_params(["lr=0.3", "tol=None", "split=head", "hidden_layer_sizes=(8,)"]) == {
        "lr": 0.3, "tol": None, "split": "head", "hidden_layer_sizes": (8,)}


def test_a_tiny_run_prints_the_table_with_reference_default_and_ratio(calibration, capsys, tmp_path):
    cache = tmp_path / "reference.json"
    argv = ["--datasets", "iris-permuted", "--splits", "head", "--lrs", "0.3", "--seeds", "1", "--max-rounds", "4",
            "--every", "2", "--cache", str(cache), "--params", "n_rounds=2", "hidden_layer_sizes=(8,)"]
    rows = calibration.main(argv)
    out = capsys.readouterr().out
    assert [(r["data set"], r["split"]) for r in rows] == [("iris-permuted", "head")]
    assert "| iris-permuted | head | " in out and "(0.3, " in out and "data sets meet the goal" in out
    assert rows[0]["ratio"] == pytest.approx(rows[0]["default"] / rows[0]["reference"])
    assert cache.exists() and len(calibration.Cache(cache).data) == 2  # head and FedAvg, one lr, one seed
