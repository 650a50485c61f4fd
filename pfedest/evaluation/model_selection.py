"""Per-client cross-validation: every client keeps training rows in every fold.

A personalized model answers a row with its own client's personal part, so a test row is only
meaningful if its client was trained. ``KFold`` or ``GroupKFold`` over all rows can leave a client
without training rows (or hold out whole clients); :class:`ClientKFold` and
:func:`train_test_split` split each client's own rows instead.

``ClientKFold`` requests ``client_ids`` from ``split`` by default, so under
``sklearn.set_config(enable_metadata_routing=True)``::

    GridSearchCV(est, grid, cv=ClientKFold(3)).fit(X, y, client_ids=c)

routes ``client_ids`` to the splitter, to ``fit`` and to ``score`` with no ``set_*_request`` call.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import _safe_indexing, check_random_state, indexable
from sklearn.utils.validation import _num_samples


def _client_ids_for(n_samples: int, client_ids, groups=None) -> np.ndarray:
    """The client of each row, from ``client_ids`` (or ``groups`` when routing passes only that)."""
    ids = client_ids if client_ids is not None else groups
    if ids is None:
        raise ValueError("client_ids is required to split each client's rows: pass client_ids=... (with "
                         "sklearn.set_config(enable_metadata_routing=True) when the split is called by "
                         "GridSearchCV or cross_validate).")
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n_samples:
        raise ValueError(f"client_ids must be 1-D with one id per row of X ({n_samples} rows), got shape "
                         f"{ids.shape}.")
    return ids


def _rows_by_client(ids: np.ndarray) -> list[np.ndarray]:
    """Row indices of each client, clients in sorted order, rows in their original order."""
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    boundaries = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, boundaries)


class ClientKFold(BaseCrossValidator):
    """K-fold cross-validation inside each client: every fold trains on every client.

    Each client's rows are cut into folds of near-equal size, fold ``k`` of all clients together
    forms the ``k``-th test set, and the rest of every client's rows is the training set. So every
    test row's client also has rows in training, and the test score of a fold averages over
    (nearly) all clients, weighted by their sample counts.

    A client with fewer rows than ``n_splits`` has each of its rows tested in one fold (and
    none in the others), so it is tested with one row fewer in training; a client with a single
    row is never tested and always trains. Clients take turns (by rank) for the folds that get
    one row more, so folds stay balanced when many clients are small; a fold can only be empty
    (a ``ValueError``) when fewer than ``n_splits`` clients have two rows or more.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle each client's rows before cutting them into folds; otherwise folds are contiguous
        in the order the rows are given.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle (only used with ``shuffle=True``).

    See Also
    --------
    train_test_split : one per-client hold-out split.

    Notes
    -----
    ``split`` and ``get_n_splits`` take ``client_ids`` as metadata, requested by default: with
    ``sklearn.set_config(enable_metadata_routing=True)``, ``GridSearchCV(..., cv=ClientKFold())``
    and ``cross_validate(..., cv=ClientKFold(), params={"client_ids": c})`` route it to the
    splitter. ``groups``, if given instead, is read as the client ids.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.array([0, 0, 0, 1, 1, 1, 1])
    >>> for train, test in ClientKFold(n_splits=3).split(np.zeros((7, 1)), client_ids=c):
    ...     print(train, test)
    [1 2 3 4 5] [0 6]
    [0 2 5 6] [1 3 4]
    [0 1 3 4 6] [2 5]
    """

    # Requested by default, so metadata routing hands client_ids to split with no set_split_request
    # call; `groups` is an alias for users who route groups.
    __metadata_request__split = {"client_ids": True, "groups": True}

    def __init__(self, n_splits: int = 5, *, shuffle: bool = False, random_state=None):
        if not isinstance(n_splits, Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise ValueError(f"n_splits must be an integer of at least 2, got {n_splits!r}.")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False, got {shuffle!r}.")
        if not shuffle and random_state is not None:
            raise ValueError("random_state has no effect unless shuffle=True; set shuffle=True or leave "
                             "random_state=None.")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None, client_ids=None) -> int:
        """Number of folds (``n_splits``); the arguments are accepted for API compatibility."""
        return self.n_splits

    def split(self, X, y=None, groups=None, client_ids=None):
        """Yield ``(train, test)`` row indices, one pair per fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,), default=None
            Ignored.
        groups : array-like of shape (n_samples,), default=None
            Read as ``client_ids`` when those are not given.
        client_ids : array-like of shape (n_samples,)
            The client of each row.

        Yields
        ------
        train, test : ndarray of int
            Sorted row indices.
        """
        X, y = indexable(X, y)
        n_samples = _num_samples(X)
        folds = self._fold_of_rows(_client_ids_for(n_samples, client_ids, groups))
        rows = np.arange(n_samples)
        for k in range(self.n_splits):
            test = folds == k
            if not test.any():
                raise ValueError(f"Fold {k} of {self.n_splits} has no test row: too few clients have 2 rows or "
                                 "more. Lower n_splits.")
            yield rows[~test], rows[test]

    def _fold_of_rows(self, ids: np.ndarray) -> np.ndarray:
        """Fold of each row (-1: always in training)."""
        rng = check_random_state(self.random_state) if self.shuffle else None
        fold = np.full(len(ids), -1, dtype=np.int64)
        rank = 0
        for rows in _rows_by_client(ids):
            n = len(rows)
            if n < 2:
                continue  # its only row must train, or the client would be tested untrained
            if rng is not None:
                rows = rows[rng.permutation(n)]
            k = min(self.n_splits, n)
            sizes = np.full(k, n // k)
            sizes[: n % k] += 1
            # Rotating the folds by the client's rank spreads small clients and remainders evenly.
            fold[rows] = (np.repeat(np.arange(k), sizes) + rank) % self.n_splits
            rank += 1
        return fold


def train_test_split(X, y, client_ids, *, test_size: float | int = 0.25, shuffle: bool = True,
                     random_state=None):
    """Split each client's rows into training and test rows, so every tested client is trained.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
    y : array-like of shape (n_samples,)
    client_ids : array-like of shape (n_samples,)
        The client of each row.
    test_size : float in (0, 1) or int, default=0.25
        Share of each client's rows to test (rounded up, as scikit-learn does), or, as an int, the
        number of test rows per client. Either way each client keeps at least one training row, so
        a client with a single row is only in training.
    shuffle : bool, default=True
        Draw the test rows at random; otherwise each client's last rows are tested.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.

    Returns
    -------
    X_train, X_test, y_train, y_test, client_ids_train, client_ids_test
        Indexed like the inputs (arrays, DataFrames or lists), rows in their original order.

    Examples
    --------
    >>> import numpy as np
    >>> X, y = np.arange(10).reshape(5, 2), np.array([0, 1, 0, 1, 0])
    >>> c = np.array(["a", "a", "a", "a", "b"])
    >>> X_tr, X_te, y_tr, y_te, c_tr, c_te = train_test_split(X, y, c, test_size=0.5, random_state=0)
    >>> sorted(c_tr.tolist()), c_te.tolist()
    (['a', 'a', 'b'], ['a', 'a'])
    """
    X, y, client_ids = indexable(X, y, client_ids)
    n_samples = _num_samples(X)
    ids = _client_ids_for(n_samples, client_ids)
    if isinstance(test_size, bool) or not isinstance(test_size, (Integral, Real)):
        raise TypeError(f"test_size must be a float in (0, 1) or a positive int, got {test_size!r}.")
    if isinstance(test_size, Integral):
        if test_size < 1:
            raise ValueError(f"test_size as an int is the number of test rows per client, at least 1; got "
                             f"{test_size!r}.")
    elif not 0 < test_size < 1:
        raise ValueError(f"test_size as a float must be in (0, 1), got {test_size!r}.")
    rng = check_random_state(random_state)
    test = np.zeros(n_samples, dtype=bool)
    for rows in _rows_by_client(ids):
        n = len(rows)
        wanted = test_size if isinstance(test_size, Integral) else int(np.ceil(test_size * n))
        n_test = min(wanted, n - 1)
        chosen = rows[rng.permutation(n)[:n_test]] if shuffle else rows[n - n_test:]
        test[chosen] = True
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    out = []
    for array in (X, y, client_ids):
        out += [_safe_indexing(array, train_rows), _safe_indexing(array, test_rows)]
    return tuple(out)


def personal_fractions(search, X, y) -> np.ndarray:
    """The share of parameters each candidate of a fitted search makes personal.

    ``split__fraction`` is a request: a head or input split moves in whole layers, adapters in
    whole widths. This builds each candidate's network (``initialize``, no training) on one row of
    each class (its size depends only on the row shape and the classes) and reads its
    ``personal_fraction_``.

    Parameters
    ----------
    search : fitted GridSearchCV or RandomizedSearchCV
        Over a :class:`~pfedest.PartialPersonalizedClassifier`.
    X, y : array-like
        Rows of the search's data (only the row shape and the classes matter).

    Returns
    -------
    ndarray of shape (n_candidates,)
        In the order of ``search.cv_results_["params"]``; for ``plot_grid_search(..., x=...)``.

    Examples
    --------
    Only ``estimator`` and ``cv_results_["params"]`` of the search are read, so a stand-in works:

    >>> from types import SimpleNamespace
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.datasets import make_shifted_clients
    >>> X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=20, random_state=0)
    >>> search = SimpleNamespace(
    ...     estimator=PartialPersonalizedClassifier(hidden_layer_sizes=(8,), random_state=0),
    ...     cv_results_={"params": [{"split": "head"}, {"split": "full"}, {"split": "none"}]})
    >>> personal_fractions(search, X, y).round(3)
    array([0.211, 1.   , 0.   ])
    """
    from sklearn.base import clone

    y = np.asarray(y)
    _, first = np.unique(y, return_index=True)
    X_small, y_small = _safe_indexing(X, first), y[first]
    fractions = []
    for params in search.cv_results_["params"]:
        est = clone(search.estimator).set_params(**params)
        fractions.append(est.initialize(X_small, y_small).personal_fraction_)
    return np.asarray(fractions, dtype=float)
