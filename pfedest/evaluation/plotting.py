"""Figures for choosing what to personalize: grid-search curves and per-client changes.

matplotlib is imported inside each function, so ``import pfedest`` never needs it
(``pip install pfedest[examples]`` brings it). Every function draws on ``ax`` (a new figure when
``None``) and returns the axes.
"""

from __future__ import annotations

import numpy as np

# Display names of the split kinds; strings given as split= are already these names.
_SPLIT_NAMES = {"HeadSplit": "head", "InputSplit": "input", "AdapterSplit": "adapters", "FullSplit": "full",
                "NoSplit": "none"}
_REFERENCE_LABELS = {"none": "none (FedAvg)", "full": "full (local only)"}


def _axes(ax, figsize=(6.4, 4.2)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _missing(value) -> bool:
    return value is None or value is np.ma.masked or (isinstance(value, float) and np.isnan(value))


def _column(results, key, n):
    """Values of a ``cv_results_`` column as a list, ``None`` where the candidate has no such param."""
    if key not in results:
        return [None] * n
    column = results[key]
    mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else np.zeros(n, dtype=bool)
    values = list(np.ma.getdata(column)) if isinstance(column, np.ma.MaskedArray) else list(column)
    return [None if m or _missing(v) else v for v, m in zip(values, mask)]


def split_name(split) -> str:
    """A short display name for a ``split=`` value: ``"head"``, ``"adapters"``, a class name, ...

    Parameters
    ----------
    split : str or Split
        A ``split=`` value of the estimator.

    Returns
    -------
    str
        The name itself for a string; a short name for a known split class, else the class name.

    Examples
    --------
    >>> from pfedest import AdapterSplit
    >>> split_name(AdapterSplit(0.2)), split_name("none")
    ('adapters', 'none')
    """
    if isinstance(split, str):
        return split
    name = type(split).__name__
    return _SPLIT_NAMES.get(name, name)


def plot_grid_search(search, *, param: str = "split__fraction", group: str = "split", x=None,
                     score: str = "test_score", ax=None, log_x: bool = True, title: str | None = None,
                     ylabel: str | None = None):
    """Cross-validated score against a parameter, one line per value of another (e.g. the split kind).

    Made for ``GridSearchCV(est, [{"split": [AdapterSplit()], "split__fraction": [...]}, {"split":
    ["none", "full"]}, ...])``: each split kind with a fraction is a line (mean over folds, with a
    band of one standard deviation), each candidate without one (FedAvg, local training) a
    horizontal reference line. The candidate ranked first is starred.

    Parameters
    ----------
    search : fitted GridSearchCV (or any search with ``cv_results_``), or its ``cv_results_``
        As a dict or a pandas DataFrame.
    param : str, default="split__fraction"
        The parameter on the x-axis; candidates that do not set it are reference lines.
    group : str, default="split"
        The parameter whose values make separate lines; when the grid does not vary it, all
        candidates are one line.
    x : array-like of shape (n_candidates,), default=None
        Positions on the x-axis instead of the values of ``param``, e.g. the share of parameters
        each candidate really makes personal, from :func:`pfedest.evaluation.model_selection.personal_fractions`
        (``split__fraction`` is a request: a head split moves in whole layers).
    score : str, default="test_score"
        Which score: ``mean_<score>`` is plotted, ``std_<score>`` shaded, ``rank_<score>`` starred.
    ax : matplotlib Axes, default=None
    log_x : bool, default=True
    title : str, default=None
    ylabel : str, default=None
        Defaults to naming ``score``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    A ``cv_results_``-like dict stands in for a fitted search:

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> results = {
    ...     "params": [{"split": "head", "split__fraction": 0.1},
    ...                {"split": "head", "split__fraction": 0.5}, {"split": "none"}],
    ...     "param_split": ["head", "head", "none"], "param_split__fraction": [0.1, 0.5, None],
    ...     "mean_test_score": [0.6, 0.7, 0.5], "std_test_score": [0.02, 0.03, 0.01],
    ...     "rank_test_score": [2, 1, 3]}
    >>> ax = plot_grid_search(results)
    >>> ax.get_xlabel()
    'split__fraction (requested share of personal parameters)'
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    results = getattr(search, "cv_results_", search)
    if f"mean_{score}" not in results:
        raise ValueError(f"cv_results_ has no 'mean_{score}' column; pass score= one of "
                         f"{sorted(k[5:] for k in results if str(k).startswith('mean_') and 'time' not in k)}.")
    means = np.asarray(results[f"mean_{score}"], dtype=float)
    n = len(means)
    stds = np.asarray(results[f"std_{score}"], dtype=float) if f"std_{score}" in results else np.zeros(n)
    ranks = np.asarray(results[f"rank_{score}"]) if f"rank_{score}" in results else np.full(n, 0)
    requested = _column(results, f"param_{param}", n)
    if not any(v is not None for v in requested):
        raise ValueError(f"No candidate of the search sets {param!r}; pass param= one of "
                         f"{sorted(k[6:] for k in results if str(k).startswith('param_'))}.")
    if x is None:
        xs = [None if v is None else float(v) for v in requested]
    else:
        x = np.asarray(x, dtype=float)
        if x.shape != (n,):
            raise ValueError(f"x must give one position per candidate ({n}), got shape {x.shape}.")
        xs = [None if v is None else float(p) for v, p in zip(requested, x)]
    default_group = split_name(search.estimator.split) if hasattr(search, "estimator") and group == "split" \
        else param
    groups = [default_group if g is None else (split_name(g) if group == "split" else str(g))
              for g in _column(results, f"param_{group}", n)]
    ax = _axes(ax)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(groups))
    lines = [g for g in names if any(v is not None for v, h in zip(xs, groups) if h == g)]
    for i, name in enumerate(lines):
        rows = sorted((v, m, s) for v, h, m, s in zip(xs, groups, means, stds) if h == name and v is not None)
        px, pm, ps = map(np.asarray, zip(*rows))
        color = colors[i % len(colors)]
        ax.plot(px, pm, "o-", color=color, label=name, lw=1.8, ms=5)
        ax.fill_between(px, pm - ps, pm + ps, color=color, alpha=0.15, lw=0)
    styles = iter(["--", ":", "-."] * n)
    for h, m in zip(groups, means):
        if h not in lines:
            ax.axhline(m, color="0.3", ls=next(styles), lw=1.2, label=f"{_REFERENCE_LABELS.get(h, h)}: {m:.3f}")
    for k in range(n):
        if ranks[k] == 1 and xs[k] is not None:
            ax.plot(xs[k], means[k], "*", ms=16, color="gold", mec="black", mew=0.8, zorder=5, label="best")
    if log_x:
        ax.set_xscale("log")
        shown = [v for v in xs if v is not None and v > 0]
        low, high = min(shown), max(shown)
        ticks = [t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0) if low / 1.6 <= t <= high * 1.6]
        ax.set_xlim(low / 1.3, high * 1.3)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1%}" if v < 0.01 else f"{v:.0%}"))
    if x is not None:
        ax.set_xlabel("share of parameters that are personal")
    elif param == "split__fraction":
        ax.set_xlabel("split__fraction (requested share of personal parameters)")
    else:
        ax.set_xlabel(param)
    ax.set_ylabel(ylabel or f"{score.replace('_', ' ')} (mean ± std over folds)")
    ax.margins(y=0.08)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return ax


#: How each metric of a report is drawn: its name on the axes, the factor to its unit, the unit.
_METRIC_SCALES = {"accuracy": ("accuracy", 100.0, "points"), "r2": ("R²", 1.0, "")}


def _report_columns(report):
    if not report.has_baseline:
        raise ValueError("This report has no baseline to compare with; make it with client_report(..., baseline=...).")
    metric = getattr(report, "metric", "accuracy")
    if metric not in _METRIC_SCALES:
        raise ValueError(f"These plots draw {sorted(_METRIC_SCALES)}; this report scores {metric!r}: plot its "
                         f"columns {metric!r}, 'baseline_{metric}' and 'change' directly.")
    return (np.asarray(report.clients["client"]), np.asarray(report.clients["n_samples"]),
            np.asarray(report.clients[metric]), np.asarray(report.clients[f"baseline_{metric}"]),
            np.asarray(report.clients["change"]), _METRIC_SCALES[metric])


def plot_client_change(report, *, ax=None, title: str | None = None, label: str = "model",
                       baseline_label: str = "baseline"):
    """Each client's change in score against the baseline, sorted: who loses, who gains.

    Bars below zero are the clients the model made worse; the dashed line is the mean change. The
    y-axis is in accuracy points (0.05 accuracy = 5 points) for a classifier's report, in R² for a
    regressor's.

    Parameters
    ----------
    report : ClientReport
        From :func:`pfedest.evaluation.report.client_report` with a baseline.
    ax : matplotlib Axes, default=None
    title : str, default=None
        Defaults to the report's sentence on the clients made worse.
    label, baseline_label : str
        Names of the two models, for the axis label.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.dummy import DummyClassifier
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from pfedest.evaluation.report import client_report
    >>> X, y, c = [[0], [1], [2], [3], [4], [5]], [0, 0, 1, 1, 0, 1], [0, 0, 1, 1, 2, 2]
    >>> report = client_report(DecisionTreeClassifier(random_state=0).fit(X, y), X, y, c,
    ...                        baseline=DummyClassifier().fit(X, y), as_frame=False)
    >>> ax = plot_client_change(report)
    >>> len(ax.patches)  # one bar per client
    3
    """
    from matplotlib.ticker import FuncFormatter

    _, _, _, _, change, (name, scale, unit) = _report_columns(report)
    order = np.argsort(change, kind="stable")
    ordered = change[order] * scale
    digits = 1 if unit else 3
    colors = np.where(ordered < 0, "#c0392b", np.where(ordered > 0, "#2e86c1", "0.6"))
    ax = _axes(ax)
    ax.bar(np.arange(len(ordered)), ordered, width=0.85, color=colors)
    ax.axhline(0, color="black", lw=0.8)
    mean_label = f"mean {ordered.mean():+.{digits}f}" + (" pts" if unit == "points" else "")
    ax.axhline(ordered.mean(), color="black", ls="--", lw=1, label=mean_label)
    ax.set_xlim(-0.7, len(ordered) - 0.3)
    ax.set_xticks([])
    ax.set_xlabel(f"clients, sorted by change ({report.n_clients})")
    ax.set_ylabel(f"{name} change" + (f" ({unit})" if unit else "") + f"\n{label} − {baseline_label}")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: (f"{v:+.0f}" if unit else f"{v:+.2g}") if v else "0"))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    ax.set_title(title if title is not None else report.hurt_text(), fontsize="medium")
    return ax


def plot_client_scatter(report, *, ax=None, title: str | None = None, label: str = "model",
                        baseline_label: str = "baseline"):
    """Each client's score under the model against the baseline (accuracy in %, or R²); marker area
    grows with its rows.

    Points below the diagonal are clients the model made worse (drawn in red).

    Parameters
    ----------
    report, ax, title, label, baseline_label
        As in :func:`plot_client_change` (``title`` defaults to none here).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.dummy import DummyClassifier
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from pfedest.evaluation.report import client_report
    >>> X, y, c = [[0], [1], [2], [3]], [0, 1, 1, 1], ["a", "a", "b", "b"]
    >>> tree, majority = DecisionTreeClassifier(random_state=0).fit(X, y), DummyClassifier().fit(X, y)
    >>> report = client_report(tree, X, y, c, baseline=majority, as_frame=False)
    >>> ax = plot_client_scatter(report, label="tree", baseline_label="majority")
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('majority accuracy', 'tree accuracy')
    """
    from matplotlib.ticker import PercentFormatter

    _, counts, score, base, change, (name, scale, unit) = _report_columns(report)
    score, base = score * scale, base * scale
    ax = _axes(ax, figsize=(4.6, 4.4))
    area = 12 + 140 * counts / counts.max()
    hurt = change < 0
    ax.scatter(base[~hurt], score[~hurt], s=area[~hurt], color="#2e86c1", alpha=0.7,
               edgecolor="white", lw=0.5, label="not worse")
    ax.scatter(base[hurt], score[hurt], s=area[hurt], color="#c0392b", alpha=0.8,
               edgecolor="white", lw=0.5, label="worse")
    top = scale  # a perfect score: accuracy 100 %, R² 1
    finite = np.concatenate([base, score])
    finite = finite[np.isfinite(finite)]
    low = min(finite.min(), top) if len(finite) else 0.0
    low = max(0.0, low - 0.05 * scale) if unit else low - 0.05 * max(top - low, 1e-9)  # R² can fall below 0
    pad = 0.04 * (top - low)  # room for markers on the edges (0 % and 100 % are common on small clients)
    ax.plot([low - pad, top + pad], [low - pad, top + pad], color="0.5", lw=0.8, zorder=0)
    ax.set_xlim(low - pad, top + pad)
    ax.set_ylim(low - pad, top + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{baseline_label} {name}")
    ax.set_ylabel(f"{label} {name}")
    if unit:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", frameon=False, title="marker area: rows",
              title_fontsize="x-small")
    if title:
        ax.set_title(title, fontsize="medium")
    return ax
