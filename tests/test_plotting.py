"""Figures: grid-search curves, per-client changes; the examples that save them; no matplotlib in the core."""

import ast
from pathlib import Path

import numpy as np
import pytest

from pfedest import AdapterSplit, HeadSplit, PartialPersonalizedClassifier
from pfedest.evaluation.report import client_report

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pfedest.evaluation.plotting import plot_client_change, plot_client_scatter, plot_grid_search, split_name  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_core_modules_import_matplotlib_only_inside_functions():
    """A static check (a fresh interpreter importing torch costs seconds): no module-level matplotlib import."""
    package = Path(__file__).resolve().parents[1] / "pfedest"
    for name in ("evaluation/plotting", "evaluation/report", "evaluation/model_selection", "datasets"):
        tree = ast.parse((package / f"{name}.py").read_text())
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        imported = [alias.name for node in top_level for alias in node.names] + \
            [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "matplotlib"], name


def masked(values):
    """A cv_results_ param column as GridSearchCV builds it: an object masked array."""
    column = np.ma.MaskedArray(np.empty(len(values), dtype=object), mask=[v is None for v in values])
    for i, v in enumerate(values):
        if v is not None:
            column[i] = v
    return column


PARAMS = ([{"split": "none"}, {"split": "full"}]
          + [{"split": AdapterSplit(), "split__fraction": f} for f in (0.4, 0.05, 0.1)]
          + [{"split": HeadSplit(), "split__fraction": f} for f in (0.05, 0.3)])
RESULTS = {
    "params": PARAMS,
    "param_split": masked([p["split"] for p in PARAMS]),
    "param_split__fraction": masked([p.get("split__fraction") for p in PARAMS]),
    "mean_test_score": np.array([0.60, 0.50, 0.66, 0.63, 0.67, 0.75, 0.68]),
    "std_test_score": np.full(7, 0.01),
    "rank_test_score": np.array([6, 7, 4, 5, 3, 1, 2]),
}


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_grid_search_draws_a_line_per_split_kind_and_references_for_the_ends():
    ax = plot_grid_search(RESULTS)
    lines = lines_by_label(ax)
    adapters = lines["adapters"]
    np.testing.assert_allclose(adapters.get_xdata(), [0.05, 0.1, 0.4])  # sorted by fraction
    np.testing.assert_allclose(adapters.get_ydata(), [0.63, 0.67, 0.66])
    np.testing.assert_allclose(lines["head"].get_ydata(), [0.75, 0.68])
    assert lines["none (FedAvg): 0.600"].get_ydata()[0] == pytest.approx(0.60)
    assert lines["full (local only): 0.500"].get_ydata()[0] == pytest.approx(0.50)
    assert (lines["best"].get_xdata()[0], lines["best"].get_ydata()[0]) == pytest.approx((0.05, 0.75))
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["adapters", "head"]


def test_grid_search_takes_positions_a_data_frame_and_a_fixed_split():
    pd = pytest.importorskip("pandas")
    shares = np.array([0.0, 1.0, 0.40, 0.04, 0.09, 0.072, 0.536])
    ax = plot_grid_search(pd.DataFrame(RESULTS), x=shares, log_x=False)
    np.testing.assert_allclose(lines_by_label(ax)["head"].get_xdata(), [0.072, 0.536])
    assert ax.get_xlabel() == "share of parameters that are personal"

    class Search:  # the grid only over the fraction: the estimator's split names the line
        estimator = PartialPersonalizedClassifier(split=AdapterSplit())
        cv_results_ = {"mean_test_score": np.array([0.5, 0.7]), "param_split__fraction": masked([0.1, 0.2]),
                       "rank_test_score": np.array([2, 1])}

    assert "adapters" in lines_by_label(plot_grid_search(Search()))


def test_grid_search_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="mean_train_score"):
        plot_grid_search(RESULTS, score="train_score")
    with pytest.raises(ValueError, match="sets 'lr'"):
        plot_grid_search(RESULTS, param="lr")
    with pytest.raises(ValueError, match="one position per candidate"):
        plot_grid_search(RESULTS, x=[0.1, 0.2])


class Fixed:
    def __init__(self, predictions):
        self.predictions = np.asarray(predictions)

    def predict(self, X, client_ids=None):
        return self.predictions


Y = np.array([0, 1, 0, 1, 1, 1, 0, 0, 1, 1])
C = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
REPORT = client_report(Fixed([0, 1, 0, 0, 1, 1, 1, 1, 1, 1]), np.zeros((10, 1)), Y, C,
                       baseline=Fixed([0, 1, 0, 1, 0, 1, 0, 1, 1, 1]), as_frame=False)  # -25, +50, -50, 0


def test_client_change_bars_are_sorted_and_the_losers_are_red():
    ax = plot_client_change(REPORT)
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([-50, -25, 0, 50])
    red = [bar for bar in ax.patches if matplotlib.colors.to_hex(bar.get_facecolor()) == "#c0392b"]
    assert len(red) == REPORT.n_hurt == 2
    assert "2 of 4 clients (50%) made worse" in ax.get_title()
    assert lines_by_label(ax)["mean -6.2 pts"].get_ydata()[0] == pytest.approx(-6.25)


def test_client_scatter_puts_each_client_at_baseline_and_model_accuracy():
    ax = plot_client_scatter(REPORT)
    better, worse = ax.collections
    assert len(worse.get_offsets()) == 2
    np.testing.assert_allclose(sorted(map(tuple, worse.get_offsets())), [(50, 0), (100, 75)])


def test_plots_of_a_report_without_baseline_are_refused():
    bare = client_report(Fixed(Y), np.zeros((10, 1)), Y, C, as_frame=False)
    with pytest.raises(ValueError, match="no baseline"):
        plot_client_change(bare)


def test_split_names():
    assert [split_name(s) for s in (HeadSplit(), AdapterSplit(), "full", ["*.bias"])] == \
        ["head", "adapters", "full", "list"]


# ------------------------------------------------------------------ examples
def test_grid_search_example_saves_its_figure(tmp_path, capsys, load_example):
    out = tmp_path / "grid.png"
    search, report = load_example("plot_grid_search").main(["--clients", "6", "--rounds", "2", "--folds", "2", "--n-jobs",
                                                    "2", "--out", str(out)])  # workers already started
    assert out.stat().st_size > 10_000
    assert len(search.cv_results_["params"]) == 8 and np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    text = capsys.readouterr().out
    assert "chosen: split=" in text and ("made worse" in text or "no client" in text)
    assert report.n_clients == 6


def test_client_report_example_saves_its_figure(tmp_path, capsys, load_example):
    out = tmp_path / "report.png"
    report = load_example("plot_client_report").main(["--clients", "6", "--rounds", "2", "--out", str(out)])
    assert out.stat().st_size > 10_000
    assert report.has_baseline and report.n_clients == 6
    assert "weighted_mean" in capsys.readouterr().out


def test_a_regressors_report_is_drawn_in_r2_not_in_accuracy_points():
    from sklearn.metrics import r2_score

    y = np.array([0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0])
    c = np.array([0, 0, 0, 0, 1, 1, 1, 1])

    from sklearn.base import BaseEstimator, RegressorMixin

    class Fixed(RegressorMixin, BaseEstimator):
        def __init__(self, predictions):
            self.predictions = np.asarray(predictions, dtype=float)

        def predict(self, X, client_ids=None):
            return self.predictions

    model = Fixed([0.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    base = Fixed([0.5, 1.0, 1.5, 3.0, 0.0, 1.0, 2.0, 4.0])
    report = client_report(model, np.zeros((8, 1)), y, c, baseline=base, as_frame=False)
    assert report.metric == "r2"
    change = [r2_score(y[c == k], model.predictions[c == k]) - r2_score(y[c == k], base.predictions[c == k])
              for k in (0, 1)]
    ax = plot_client_change(report)
    assert [bar.get_height() for bar in ax.patches] == pytest.approx(sorted(change))
    assert "R² change" in ax.get_ylabel() and "points" not in ax.get_ylabel()
    assert f"mean {np.mean(change):+.3f}" in lines_by_label(ax)
    ax = plot_client_scatter(report)
    offsets = np.concatenate([col.get_offsets() for col in ax.collections])
    expected = [(r2_score(y[c == k], base.predictions[c == k]), r2_score(y[c == k], model.predictions[c == k]))
                for k in (0, 1)]
    np.testing.assert_allclose(sorted(map(tuple, offsets)), sorted(expected))
    assert ax.get_xlabel() == "baseline R²" and ax.get_xlim()[0] < min(min(e) for e in expected)
