"""Per-client report: every client's accuracy, the baseline's, the change and their summaries."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.dummy import DummyClassifier

from pfedest import PartialPersonalizedClassifier
from pfedest.evaluation.report import SUMMARY_ROWS, client_accuracies, client_report, summarize


class Fixed:
    """A 'fitted classifier' answering fixed predictions; takes client ids like pfedest's estimator."""

    def __init__(self, predictions):
        self.predictions = np.asarray(predictions)

    def predict(self, X, client_ids=None):
        assert client_ids is not None
        return self.predictions


# client a: 4 rows, b: 2 rows, c: 2 rows
Y = np.array([0, 1, 0, 1, 1, 1, 0, 0])
C = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
MODEL = Fixed([0, 1, 0, 0, 1, 1, 1, 1])     # a 3/4, b 2/2, c 0/2
BASE = Fixed([0, 1, 0, 1, 0, 1, 0, 1])      # a 4/4, b 1/2, c 1/2
X = np.zeros((8, 1))


@pytest.mark.parametrize("as_frame", [False, True])
def test_per_client_columns_and_hurt_statistics(as_frame):
    if as_frame:
        pytest.importorskip("pandas")
    report = client_report(MODEL, X, Y, C, baseline=BASE, as_frame=as_frame)
    clients = report.clients
    assert list(np.asarray(clients["client"])) == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(clients["n_samples"]), [4, 2, 2])
    np.testing.assert_allclose(np.asarray(clients["accuracy"]), [0.75, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(clients["baseline_accuracy"]), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(np.asarray(clients["change"]), [-0.25, 0.5, -0.5])
    assert report.n_clients == 3
    assert report.n_hurt == 2
    assert report.fraction_hurt == pytest.approx(2 / 3)
    assert report.mean_change_hurt == pytest.approx(-0.375)
    assert report.fraction_improved == pytest.approx(1 / 3)
    assert report.worst_client == "c"
    assert "2 of 3 clients (67%) made worse, by 37.5 points on average (worst: client c, -50.0)" in report.hurt_text()


def test_summary_rows_match_numpy_over_clients():
    report = client_report(MODEL, X, Y, C, baseline=BASE, as_frame=False)
    change = np.array([-0.25, 0.5, -0.5])
    counts = np.array([4, 2, 2])
    s = report.summary["change"]
    assert list(s) == list(SUMMARY_ROWS)
    assert s["mean"] == pytest.approx(change.mean())
    assert s["weighted_mean"] == pytest.approx(np.average(change, weights=counts))
    assert s["std"] == pytest.approx(change.std())
    assert [s["10%"], s["50%"], s["90%"]] == pytest.approx(np.quantile(change, [0.1, 0.5, 0.9]).tolist())
    assert s["worst"] == -0.5
    # weighted mean of per-client accuracy is the accuracy over all rows
    assert report.summary["accuracy"]["weighted_mean"] == pytest.approx(np.mean(MODEL.predictions == Y))


def test_frame_and_dicts_hold_the_same_numbers():
    pytest.importorskip("pandas")
    frame = client_report(MODEL, X, Y, C, baseline=BASE, as_frame=True)
    plain = client_report(MODEL, X, Y, C, baseline=BASE, as_frame=False)
    for column in ("accuracy", "baseline_accuracy", "change"):
        for row in SUMMARY_ROWS:
            assert frame.summary[column][row] == pytest.approx(plain.summary[column][row])
    assert list(frame.summary.index) == list(SUMMARY_ROWS)


def test_as_frame_true_without_pandas_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="as_frame=True needs pandas"):
        client_report(MODEL, X, Y, C, as_frame=True)
    report = client_report(MODEL, X, Y, C)  # as_frame=None falls back to dicts
    assert isinstance(report.clients, dict)


def test_without_baseline_there_is_no_change_column():
    report = client_report(MODEL, X, Y, C, as_frame=False)
    assert not report.has_baseline
    assert set(report.clients) == {"client", "n_samples", "accuracy"}
    assert report.n_hurt is None
    assert "baseline" not in str(report).splitlines()[0]


def test_no_client_hurt_is_said_plainly():
    report = client_report(BASE, X, Y, C, baseline=BASE, as_frame=False)
    assert report.n_hurt == 0
    assert np.isnan(report.mean_change_hurt)
    assert report.hurt_text() == "no client of 3 made worse"


def test_baseline_may_be_any_fitted_classifier_without_client_ids():
    majority = DummyClassifier(strategy="constant", constant=1).fit(X, Y)
    report = client_report(MODEL, X, Y, C, baseline=majority, as_frame=False)
    np.testing.assert_allclose(report.clients["baseline_accuracy"], [0.5, 1.0, 0.0])


def test_text_and_html_show_every_summary_row():
    report = client_report(MODEL, X, Y, C, baseline=BASE, as_frame=False)
    text, html = str(report), report._repr_html_()
    for row in SUMMARY_ROWS:
        assert row in text and f"<th>{row}</th>" in html
    assert "made worse" in repr(report)


@pytest.mark.parametrize("y, c, match", [(Y[:3], C, "one entry per row"), (Y[:0], C[:0], "at least one row")])
def test_bad_input_is_refused(y, c, match):
    with pytest.raises(ValueError, match=match):
        client_report(MODEL, X, y, c)


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_weighted_mean_is_overall_accuracy_and_fraction_hurt_counts_drops(data, n):
    y = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    c = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    pred = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    base = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    report = client_report(Fixed(pred), np.zeros((n, 1)), y, c, baseline=Fixed(base), as_frame=False)
    assert report.summary["accuracy"]["weighted_mean"] == pytest.approx(np.mean(pred == y))
    assert report.summary["change"]["weighted_mean"] == pytest.approx(np.mean(pred == y) - np.mean(base == y))
    per_client = [np.mean(pred[c == k] == y[c == k]) - np.mean(base[c == k] == y[c == k]) for k in np.unique(c)]
    assert report.n_hurt == sum(d < 0 for d in per_client)
    assert report.summary["change"]["worst"] == pytest.approx(min(per_client))


def test_report_of_a_fitted_model_agrees_with_its_score_and_covers_every_client(federated):
    X_, y_, c_ = federated
    est = PartialPersonalizedClassifier(n_rounds=3, clients_per_round=2, hidden_layer_sizes=(8,),
                                        random_state=0).fit(X_, y_, client_ids=c_)
    fedavg = PartialPersonalizedClassifier(split="none", n_rounds=3, hidden_layer_sizes=(8,),
                                           random_state=0).fit(X_, y_, client_ids=c_)
    report = client_report(est, X_, y_, c_, baseline=fedavg, as_frame=False)
    assert report.n_clients == len(np.unique(c_))  # every client, though only 2 trained per round
    for client, accuracy in zip(report.clients["client"], report.clients["accuracy"]):
        rows = c_ == client
        assert accuracy == pytest.approx(est.score(X_[rows], y_[rows], c_[rows]))


def test_the_older_helpers_still_work():
    clients, counts, accuracy = client_accuracies(MODEL, X, Y, C)
    assert clients.tolist() == ["a", "b", "c"]
    assert summarize(counts, accuracy) == pytest.approx({"mean": 0.5833333, "weighted_mean": 0.625, "worst": 0.0})
