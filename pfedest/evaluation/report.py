"""Per-client evaluation: every client scored on its own rows, and the summaries that matter."""

from __future__ import annotations

import numpy as np
from sklearn.base import is_regressor as _sklearn_is_regressor


def _is_regressor(estimator) -> bool:
    """scikit-learn's answer; an object without its tags (any model with ``predict``) is a classifier."""
    try:
        return _sklearn_is_regressor(estimator)
    except (AttributeError, TypeError):
        return False


def client_scores(estimator, X, y, client_ids):
    """Each client's score on its own rows: accuracy for a classifier, :math:`R^2` for a regressor.

    The regressor's score is scikit-learn's ``r2_score`` of the client's rows (outputs averaged with
    equal weights, as ``RegressorMixin.score``); a client whose ``y`` is constant scores 1.0 if
    predicted exactly and 0.0 otherwise, as ``r2_score`` does.

    Returns
    -------
    clients, counts, scores : ndarray
        As :func:`client_accuracies`.
    metric : {"accuracy", "r2"}

    Examples
    --------
    >>> from sklearn.linear_model import LinearRegression
    >>> X, y, c = [[0], [1], [2], [3]], [0.0, 1.0, 2.0, 4.0], [0, 0, 1, 1]
    >>> clients, counts, r2, metric = client_scores(LinearRegression().fit(X, y), X, y, c)
    >>> metric, [round(v, 2) for v in r2.tolist()]
    ('r2', [0.9, 0.88])
    """
    if not _is_regressor(estimator):
        return (*client_accuracies(estimator, X, y, client_ids), "accuracy")
    from sklearn.metrics import r2_score

    y, client_ids = np.asarray(y), np.asarray(client_ids)
    predicted = _predict(estimator, X, client_ids)
    clients, inverse, counts = np.unique(client_ids, return_inverse=True, return_counts=True)
    scores = np.array([r2_score(y[inverse == k], predicted[inverse == k]) if counts[k] > 1 else np.nan
                       for k in range(len(clients))])
    return clients, counts, scores, "r2"


def client_accuracies(estimator, X, y, client_ids):
    """Accuracy of ``estimator`` on each client's own rows.

    Parameters
    ----------
    estimator : fitted classifier
        A :class:`~pfedest.PartialPersonalizedClassifier`, or any fitted classifier whose
        ``predict`` takes no client ids.
    X, y, client_ids : array-like
        Rows to evaluate; every client present is evaluated.

    Returns
    -------
    clients : ndarray of shape (n_clients,)
        The client ids, sorted.
    counts : ndarray of shape (n_clients,)
        Rows per client.
    accuracy : ndarray of shape (n_clients,)

    Examples
    --------
    >>> from sklearn.dummy import DummyClassifier
    >>> X, y, c = [[0], [1], [2], [3]], [0, 0, 0, 1], ["a", "a", "b", "b"]
    >>> clients, counts, accuracy = client_accuracies(DummyClassifier().fit(X, y), X, y, c)
    >>> clients.tolist(), counts.tolist(), accuracy.tolist()
    (['a', 'b'], [2, 2], [1.0, 0.5])
    """
    y = np.asarray(y)
    client_ids = np.asarray(client_ids)
    correct = _predict(estimator, X, client_ids) == y
    clients, inverse, counts = np.unique(client_ids, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=correct, minlength=len(clients))
    return clients, counts, hits / counts


def summarize(counts, accuracy) -> dict:
    """Mean, sample-weighted mean and worst client of per-client accuracies.

    Parameters
    ----------
    counts : array-like of shape (n_clients,)
        Rows per client (the weights).
    accuracy : array-like of shape (n_clients,)
        Accuracy of each client.

    Returns
    -------
    dict
        ``mean``, ``weighted_mean`` and ``worst``, as floats.

    Examples
    --------
    >>> summarize([10, 30], [0.5, 1.0])
    {'mean': 0.75, 'weighted_mean': 0.875, 'worst': 0.5}
    """
    full = summary_statistics(np.asarray(accuracy, dtype=float), np.asarray(counts, dtype=float))
    return {k: full[k] for k in ("mean", "weighted_mean", "worst")}


#: Rows of :attr:`ClientReport.summary`, in order.
SUMMARY_ROWS = ("mean", "weighted_mean", "std", "10%", "50%", "90%", "worst")


def summary_statistics(values, counts) -> dict:
    """Every summary row (:data:`SUMMARY_ROWS`) of per-client ``values`` weighted by row ``counts``.

    Examples
    --------
    >>> summary_statistics([0.5, 1.0], [10, 30])["weighted_mean"]
    0.875
    """
    values, counts = np.asarray(values, dtype=float), np.asarray(counts, dtype=float)
    # a client without a score (R^2 of a single row) is left out of the summaries
    scored = ~np.isnan(values)
    values, counts = values[scored], counts[scored]
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {
        "mean": float(values.mean()),
        "weighted_mean": float(np.average(values, weights=counts)),
        "std": float(values.std()),
        "10%": float(q10),
        "50%": float(q50),
        "90%": float(q90),
        "worst": float(values.min()),
    }


def _pandas(as_frame):
    if as_frame is False:
        return None
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise ImportError("as_frame=True needs pandas (pip install pandas); as_frame=None falls back to "
                              "dicts of arrays without it.") from None
        return None
    return pandas


class ClientReport:
    """Per-client accuracy (or :math:`R^2`) of a model, against a baseline when one is given, and its summaries.

    Made by :func:`client_report`; not meant to be built by hand.

    Parameters
    ----------
    clients : pandas.DataFrame or dict of str to ndarray
        The per-client table (see Attributes).
    summary : pandas.DataFrame or dict of str to dict
        The summaries (see Attributes).
    n_clients : int
        Number of clients evaluated.
    hurt : dict
        ``n_hurt``, ``fraction_hurt``, ``mean_change_hurt``, ``fraction_improved`` and
        ``worst_client``; empty without a baseline.
    metric : {"accuracy", "r2"}, default="accuracy"
        The score, and the name of its columns (``r2`` and ``baseline_r2`` for a regressor).

    Attributes
    ----------
    clients : pandas.DataFrame or dict of str to ndarray
        One row per client, sorted by client id, with columns ``client``, ``n_samples``,
        ``accuracy`` and, with a baseline, ``baseline_accuracy`` and ``change`` (model minus
        baseline). With a model fitted with ``guard``, also the guard's ``guard_weight`` (1: the
        client keeps its personal part, 0: the fallback answers it), ``guard_n_valid``,
        ``guard_gain`` and ``guard_gain_se`` (:func:`guard_columns`). A dict of equal-length
        arrays, keyed by the same column names, without pandas.
    summary : pandas.DataFrame or dict of str to dict
        Rows ``mean``, ``weighted_mean`` (by rows per client), ``std`` (over clients, ddof=0), ``10%``,
        ``50%``, ``90%`` (quantiles over clients) and ``worst`` (the minimum), for each of the
        columns ``accuracy`` and, with a baseline, ``baseline_accuracy`` and ``change``. Without
        pandas, a dict ``{column: {row: value}}``; ``summary["change"]["mean"]`` reads the same
        number either way.
    n_clients : int
    n_hurt : int or None
        Clients whose accuracy is lower than the baseline's (``None`` without a baseline).
    fraction_hurt : float or None
        ``n_hurt / n_clients``.
    mean_change_hurt : float or None
        Mean change over the hurt clients (negative; NaN when no client is hurt).
    fraction_improved : float or None
        Share of clients whose accuracy is higher than the baseline's.
    worst_client : object or None
        The client with the largest drop (the most negative change).

    Examples
    --------
    >>> from sklearn.dummy import DummyClassifier
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> X, y, c = [[0], [1], [2], [3]], [0, 0, 1, 1], [0, 0, 1, 1]
    >>> report = client_report(DecisionTreeClassifier(random_state=0).fit(X, y), X, y, c,
    ...                        baseline=DummyClassifier().fit(X, y), as_frame=False)
    >>> report.has_baseline, report.n_hurt, report.fraction_improved
    (True, 0, 0.5)
    """

    def __init__(self, clients, summary, n_clients, hurt, metric="accuracy"):
        self.metric = metric
        self.clients = clients
        self.summary = summary
        self.n_clients = n_clients
        self.n_hurt = hurt.get("n_hurt")
        self.fraction_hurt = hurt.get("fraction_hurt")
        self.mean_change_hurt = hurt.get("mean_change_hurt")
        self.fraction_improved = hurt.get("fraction_improved")
        self.worst_client = hurt.get("worst_client")

    @property
    def has_baseline(self) -> bool:
        """Whether the report compares against a baseline."""
        return self.n_hurt is not None

    def _column(self, name) -> np.ndarray:
        return np.asarray(self.clients[name])

    def _summary_value(self, column, row) -> float:
        return float(self.summary[column][row])

    def hurt_text(self) -> str:
        """One sentence on the clients made worse (changes in accuracy points), e.g. for a figure title."""
        if not self.has_baseline:
            return "no baseline"
        if self.n_hurt == 0:
            return f"no client of {self.n_clients} made worse"
        if self.metric != "accuracy":  # R^2 has no points: its change as it is
            return (f"{self.n_hurt} of {self.n_clients} clients ({self.fraction_hurt:.0%}) made worse, by "
                    f"{-self.mean_change_hurt:.3f} {self.metric} on average (worst: client {self.worst_client}, "
                    f"{self._summary_value('change', 'worst'):+.3f})")
        return (f"{self.n_hurt} of {self.n_clients} clients ({self.fraction_hurt:.0%}) made worse, by "
                f"{-100 * self.mean_change_hurt:.1f} points on average (worst: client {self.worst_client}, "
                f"{100 * self._summary_value('change', 'worst'):+.1f})")

    def _columns(self) -> list:
        return [self.metric] + ([f"baseline_{self.metric}", "change"] if self.has_baseline else [])

    def __str__(self) -> str:
        columns = self._columns()
        lines = [f"{'':<14}" + "".join(f"{c:>18}" for c in columns)]
        for row in SUMMARY_ROWS:
            lines.append(f"{row:<14}" + "".join(f"{self._summary_value(c, row):>18.4f}" for c in columns))
        lines.append(f"{self.n_clients} clients; " + self.hurt_text())
        if "guard_weight" in self.clients:
            kept = np.asarray(self.clients["guard_weight"])
            lines.append(f"guard: {int(np.nansum(kept))} of {self.n_clients} clients keep their personal part, "
                         f"{int(np.sum(kept == 0))} use the fallback")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<ClientReport of {self.n_clients} clients; {self.hurt_text()}>"

    def _repr_html_(self) -> str:
        import html

        columns = self._columns()
        head = "".join(f"<th>{c}</th>" for c in columns)
        body = "".join(
            f"<tr><th>{row}</th>" + "".join(f"<td>{self._summary_value(c, row):.4f}</td>" for c in columns) + "</tr>"
            for row in SUMMARY_ROWS)
        return (f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p>{self.n_clients} clients; {html.escape(self.hurt_text())}</p>")


def _predict(estimator, X, client_ids):
    """``predict`` with client ids when the estimator takes them (any fitted classifier may be a baseline)."""
    import inspect

    try:
        takes_ids = "client_ids" in inspect.signature(estimator.predict).parameters
    except (TypeError, ValueError):
        takes_ids = False
    return estimator.predict(X, client_ids=client_ids) if takes_ids else estimator.predict(X)


def guard_columns(estimator, clients) -> dict:
    """The guard's decision and evidence for each of ``clients``: empty unless ``estimator`` was fitted
    with ``guard`` (its ``guard_weights_`` and ``guard_evidence_``).

    ``guard_weight`` is 1 where the client keeps its personal part, 0 where the fallback answers it;
    ``guard_n_valid`` its held-out rows; ``guard_gain`` the fallback's mean per-row loss minus the
    personal model's on them, and ``guard_gain_se`` its standard error. A client the model does not
    know gets NaN.
    """
    weights = getattr(estimator, "guard_weights_", None)
    if weights is None:
        return {}
    index = {c: i for i, c in enumerate(np.asarray(estimator.clients_).tolist())}
    rows = np.array([index.get(c, -1) for c in np.asarray(clients).tolist()])
    known = rows >= 0

    def take(values):
        out = np.full(len(rows), np.nan)
        out[known] = np.asarray(values, dtype=float)[rows[known]]
        return out

    evidence = estimator.guard_evidence_
    return {"guard_weight": take(weights), "guard_n_valid": take(evidence["n_valid"]),
            "guard_gain": take(evidence["gain"]), "guard_gain_se": take(evidence["gain_se"])}


def client_report(estimator, X, y, client_ids, baseline=None, *, as_frame: bool | None = None) -> ClientReport:
    """Evaluate every client on its own rows, against a baseline: who gains, who loses, by how much.

    Personalization can lower some clients' accuracy while the mean rises (Pillutla et al., 2022);
    this report shows both.

    Parameters
    ----------
    estimator : fitted classifier or regressor
        Typically a :class:`~pfedest.PartialPersonalizedClassifier` (scored by accuracy) or a
        :class:`~pfedest.PartialPersonalizedRegressor` (scored by :math:`R^2`, :func:`client_scores`);
        ``predict`` is called with ``client_ids`` when it accepts them.
    X : array-like of shape (n_samples, ...)
    y : array-like of shape (n_samples,) or (n_samples, n_outputs) for a regressor
    client_ids : array-like of shape (n_samples,)
        Every client present here is evaluated (not only those of some round).
    baseline : fitted classifier or regressor, default=None
        What to compare with: e.g. the same model fitted with ``split="none"`` (FedAvg), or any
        fitted estimator of the same kind (``predict(X)`` is used if it takes no client ids).
    as_frame : bool or None, default=None
        Return pandas DataFrames (``True``), dicts of arrays (``False``), or DataFrames when pandas
        is installed (``None``).

    Returns
    -------
    ClientReport
        ``.clients`` (one row per client), ``.summary`` (mean, weighted mean, standard deviation
        over clients, 10/50/90 % quantiles, worst) and the share of clients made worse.

    Examples
    --------
    Any fitted classifiers work; with pfedest, pass a personalized model and its FedAvg twin
    (``split="none"``):

    >>> from sklearn.dummy import DummyClassifier
    >>> from sklearn.linear_model import LogisticRegression
    >>> from pfedest.datasets import make_shifted_clients
    >>> X, y, c = make_shifted_clients(n_clients=4, n_samples_per_client=30, random_state=0)
    >>> model = LogisticRegression().fit(X, y)
    >>> report = client_report(model, X, y, c, baseline=DummyClassifier().fit(X, y), as_frame=False)
    >>> report.n_clients, sorted(report.clients)
    (4, ['accuracy', 'baseline_accuracy', 'change', 'client', 'n_samples'])
    """
    pandas = _pandas(as_frame)
    y = np.asarray(y)
    client_ids = np.asarray(client_ids)
    if y.ndim != 1 + (_is_regressor(estimator) and y.ndim == 2) or client_ids.ndim != 1 or len(y) != len(client_ids):
        raise ValueError(f"y and client_ids must be 1-D (y 2-D for a multi-output regressor) with one entry per row; "
                         f"got shapes {y.shape} and {client_ids.shape}.")
    if len(y) == 0:
        raise ValueError("client_report needs at least one row to evaluate.")
    clients, counts, accuracy, metric = client_scores(estimator, X, y, client_ids)
    columns = {"client": clients, "n_samples": counts, metric: accuracy}
    summary = {metric: summary_statistics(accuracy, counts)}
    hurt: dict = {}
    if baseline is not None:
        base = client_scores(baseline, X, y, client_ids)[2]
        change = accuracy - base
        columns.update({f"baseline_{metric}": base, "change": change})
        summary.update({f"baseline_{metric}": summary_statistics(base, counts), "change": summary_statistics(change, counts)})
        worse = change < 0
        hurt = {
            "n_hurt": int(worse.sum()),
            "fraction_hurt": float(worse.mean()),
            "mean_change_hurt": float(change[worse].mean()) if worse.any() else float("nan"),
            "fraction_improved": float((change > 0).mean()),
            "worst_client": clients[np.argmin(change)].item(),
        }
    columns.update(guard_columns(estimator, clients))
    if pandas is not None:
        table = pandas.DataFrame(columns)
        summary_table = pandas.DataFrame(summary).loc[list(SUMMARY_ROWS)]
    else:
        table, summary_table = columns, summary
    return ClientReport(table, summary_table, len(clients), hurt, metric=metric)
