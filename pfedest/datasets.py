"""Federated data sets that need no download, a way to deal any data set to clients, and the LEAF reader."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state


def make_shifted_clients(n_clients: int = 20, n_samples_per_client=(20, 80), n_features: int = 20,
                         n_classes: int = 5, class_sep: float = 1.0, label_shift: float = 0.5,
                         feature_shift: float = 1.0, shuffle: bool = True, random_state=None):
    """Gaussian classes shared by all clients, with a per-client shift that personalization can fix.

    Every class has one mean shared by all clients. Each client then (a) adds its own offset to the
    features, of scale ``feature_shift``, and (b) with probability ``label_shift`` relabels the
    classes with its own random permutation. A shared model cannot serve clients that disagree
    on labels; a personal output layer can, while the features are learned from everyone's rows.

    Parameters
    ----------
    n_clients : int, default=20
    n_samples_per_client : int or (int, int), default=(20, 80)
        Rows per client, or the range ``[low, high]`` they are drawn from uniformly.
    n_features : int, default=20
    n_classes : int, default=5
    class_sep : float, default=1.0
        Scale of the class means; the within-class noise is standard normal.
    label_shift : float in [0, 1], default=0.5
        Probability that a client permutes the labels.
    feature_shift : float, default=1.0
        Scale of each client's feature offset.
    shuffle : bool, default=True
        Return the rows in random order (as ``make_classification`` does), so that scikit-learn's
        plain ``cv=5`` folds hold rows of every client; ``False`` groups them by client.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,), int
    client_ids : ndarray of shape (n_samples,), int
        The same rows whatever ``shuffle`` says; only their order differs.

    Examples
    --------
    >>> X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=10, random_state=0)
    >>> X.shape, sorted(set(c.tolist()))
    ((30, 20), [0, 1, 2])
    """
    if n_clients < 1 or n_classes < 2 or n_features < 1:
        raise ValueError("need n_clients >= 1, n_classes >= 2 and n_features >= 1.")
    if not 0 <= label_shift <= 1:
        raise ValueError(f"label_shift must be in [0, 1], got {label_shift!r}.")
    rng = check_random_state(random_state)
    low, high = (n_samples_per_client, n_samples_per_client) if np.isscalar(n_samples_per_client) \
        else n_samples_per_client
    if not 1 <= low <= high:
        raise ValueError(f"n_samples_per_client must be positive with low <= high, got {n_samples_per_client!r}.")
    means = rng.standard_normal((n_classes, n_features)) * class_sep
    Xs, ys, cs = [], [], []
    for client in range(n_clients):
        n = int(rng.randint(low, high + 1))
        latent = rng.randint(n_classes, size=n)
        offset = rng.standard_normal(n_features) * feature_shift
        labels = rng.permutation(n_classes) if rng.rand() < label_shift else np.arange(n_classes)
        Xs.append(means[latent] + rng.standard_normal((n, n_features)) + offset)
        ys.append(labels[latent])
        cs.append(np.full(n, client))
    return _in_order(rng, shuffle, np.concatenate(Xs).astype(np.float32), np.concatenate(ys), np.concatenate(cs))


def _in_order(rng, shuffle: bool, *arrays):
    """``arrays`` with their rows in one random order (``shuffle``) or as they are.

    The permutation is drawn after everything else, so the rows themselves do not depend on
    ``shuffle``.
    """
    if not shuffle:
        return arrays
    order = rng.permutation(len(arrays[0]))
    return tuple(a[order] for a in arrays)


def _power_law_sizes(rng, n_clients: int, n_samples_per_client) -> np.ndarray:
    """Sizes fixed (an int) or drawn from p(n) ~ n^-2 on [low, high] (a pair), by inverting its CDF."""
    if np.isscalar(n_samples_per_client):
        low = high = n_samples_per_client
    else:
        low, high = n_samples_per_client
    if not 1 <= low <= high:
        raise ValueError(f"n_samples_per_client must be positive with low <= high, got {n_samples_per_client!r}.")
    u = rng.uniform(size=n_clients)
    sizes = 1.0 / (1.0 / low - u * (1.0 / low - 1.0 / high))
    return np.clip(np.floor(sizes), low, high).astype(int)


def make_federated_classification(n_clients: int = 30, alpha: float = 1.0, beta: float = 1.0, *,
                                  n_samples_per_client=(50, 1000), n_features: int = 60, n_classes: int = 10,
                                  iid: bool = False, shuffle: bool = True, random_state=None):
    """The Synthetic(alpha, beta) benchmark of FedProx: per-client linear models and input distributions.

    Client ``k`` labels its rows with its own softmax-linear model, ``y = argmax(W_k x + b_k)``, where
    ``W_k`` and ``b_k`` have entries drawn from ``N(u_k, 1)`` around a client mean
    ``u_k ~ N(0, alpha)``; its inputs are ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal,
    ``Sigma_jj = j^-1.2``, and each entry of ``v_k`` drawn from ``N(B_k, 1)`` around a client mean
    ``B_k ~ N(0, beta)``. So ``alpha`` sets how much the clients' labelling models differ and
    ``beta`` how much their inputs differ (Li et al., "Federated Optimization in Heterogeneous
    Networks", MLSys 2020, section 5.1; implemented from that description).

    Parameters
    ----------
    n_clients : int, default=30
    alpha : float, default=1.0
        Variance of the client means ``u_k`` of the model entries (model heterogeneity).
    beta : float, default=1.0
        Variance of the client means ``B_k`` of the input means (input heterogeneity).
    n_samples_per_client : int or (int, int), default=(50, 1000)
        Rows per client, or the range they are drawn from with a power law ``p(n) ~ n^-2``: many
        small clients, a few large ones.
    n_features : int, default=60
    n_classes : int, default=10
    iid : bool, default=False
        The paper's IID control: one model ``W, b`` with standard normal entries for all clients,
        and inputs ``N(0, Sigma)`` everywhere; ``alpha`` and ``beta`` are then ignored.
    shuffle : bool, default=True
        Rows in random order; ``False`` groups them by client.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,), int
        Labels in ``0 .. n_classes - 1``; a client may not use all of them.
    client_ids : ndarray of shape (n_samples,), int

    Notes
    -----
    The paper writes ``N(0, alpha)``; it is read here as variance ``alpha`` (standard deviation
    ``sqrt(alpha)``). Its settings are Synthetic(0, 0), (0.5, 0.5) and (1, 1) with 30 clients.

    Examples
    --------
    >>> X, y, c = make_federated_classification(n_clients=4, alpha=0.5, beta=0.5, random_state=0)
    >>> X.shape[1], len(set(c.tolist()))
    (60, 4)
    """
    if n_clients < 1 or n_classes < 2 or n_features < 1:
        raise ValueError(f"need n_clients >= 1, n_classes >= 2 and n_features >= 1; got n_clients={n_clients!r}, "
                         f"n_classes={n_classes!r}, n_features={n_features!r}.")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value >= 0:
            raise ValueError(f"{name} is a variance and must be >= 0, got {value!r}.")
    rng = check_random_state(random_state)
    sizes = _power_law_sizes(rng, n_clients, n_samples_per_client)
    scale = np.arange(1, n_features + 1) ** -0.6  # the standard deviations: Sigma_jj = j^-1.2
    if iid:
        W_all = rng.standard_normal((n_features, n_classes))
        b_all = rng.standard_normal(n_classes)
    Xs, ys, cs = [], [], []
    for client, n in enumerate(sizes):
        if iid:
            W, b, mean = W_all, b_all, np.zeros(n_features)
        else:
            u = rng.normal(0.0, np.sqrt(alpha))
            W = rng.normal(u, 1.0, (n_features, n_classes))
            b = rng.normal(u, 1.0, n_classes)
            mean = rng.normal(rng.normal(0.0, np.sqrt(beta)), 1.0, n_features)
        X = mean + rng.standard_normal((n, n_features)) * scale
        Xs.append(X)
        ys.append(np.argmax(X @ W + b, axis=1))
        cs.append(np.full(n, client))
    return _in_order(rng, shuffle, np.concatenate(Xs).astype(np.float32), np.concatenate(ys), np.concatenate(cs))


def load_federated_digits(n_clients: int = 30, *, label_shift: float = 0.5, rotation_shift: float = 0.0,
                          min_samples_per_client: int = 10, size_concentration: float = 1.0,
                          as_images: bool = False, shuffle: bool = True, random_state=None):
    """scikit-learn's bundled handwritten digits, dealt to clients that each see them their own way.

    The 1,797 8x8 digit images (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
    download) are shuffled and dealt to ``n_clients`` clients of unequal sizes. Then two shifts
    that no shared model can undo, because the same image means different things on different
    clients:

    - **labels**: a share ``label_shift`` of the clients relabel the ten digits with their own
      random permutation. A personal output layer (``split="head"``) can learn the relabelling;
      the features stay shared.
    - **pixels**: a share ``rotation_shift`` of the clients see their images rotated by 90, 180 or
      270 degrees (one angle per client). A rotation permutes pixels, so a personal input layer
      (``split="input"``) can undo it exactly; a shared model would have to learn every digit
      four ways and still confuse 6 and 9.

    Parameters
    ----------
    n_clients : int, default=30
        At most ``1797 // min_samples_per_client``.
    label_shift : float in [0, 1], default=0.5
        Share of clients (rounded to the nearest count) that permute the labels.
    rotation_shift : float in [0, 1], default=0.0
        Share of clients (rounded) whose images are rotated; chosen independently of the
        relabelling clients.
    min_samples_per_client : int, default=10
        Every client gets at least this many rows.
    size_concentration : float, default=1.0
        The rows beyond the minimum are dealt in proportions drawn from a symmetric Dirichlet
        distribution with this concentration: small values make a few large clients and many
        small ones, large values make the sizes nearly equal.
    as_images : bool, default=False
        Return ``X`` of shape ``(n_samples, 8, 8)`` (the estimator then builds a small CNN)
        instead of 64 flat features.
    shuffle : bool, default=True
        Rows in random order; ``False`` groups them by client.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, 64) or (n_samples, 8, 8), float32
        Pixel intensities scaled to [0, 1].
    y : ndarray of shape (n_samples,), int
        The digit as each client labels it.
    client_ids : ndarray of shape (n_samples,), int

    Examples
    --------
    >>> X, y, c = load_federated_digits(n_clients=10, random_state=0)
    >>> X.shape, X.dtype, len(set(c.tolist()))
    ((1797, 64), dtype('float32'), 10)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, target = digits.images / 16.0, digits.target
    n_rows = len(target)
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}.")
    if min_samples_per_client < 1 or n_clients * min_samples_per_client > n_rows:
        raise ValueError(f"{n_clients} clients of at least {min_samples_per_client} rows need more than the "
                         f"{n_rows} digits; lower n_clients or min_samples_per_client.")
    for name, value in (("label_shift", label_shift), ("rotation_shift", rotation_shift)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    if not size_concentration > 0:
        raise ValueError(f"size_concentration must be > 0, got {size_concentration!r}.")
    rng = check_random_state(random_state)
    extra = rng.multinomial(n_rows - n_clients * min_samples_per_client,
                            rng.dirichlet(np.full(n_clients, float(size_concentration))))
    sizes = min_samples_per_client + extra
    order = rng.permutation(n_rows)
    relabelled = set(rng.choice(n_clients, int(round(label_shift * n_clients)), replace=False).tolist())
    rotated = set(rng.choice(n_clients, int(round(rotation_shift * n_clients)), replace=False).tolist())
    Xs, ys = [], []
    for client, rows in enumerate(np.split(order, np.cumsum(sizes)[:-1])):
        labels = rng.permutation(10) if client in relabelled else np.arange(10)
        quarter_turns = rng.randint(1, 4) if client in rotated else 0
        Xs.append(np.rot90(images[rows], k=quarter_turns, axes=(1, 2)))
        ys.append(labels[target[rows]])
    X = np.concatenate(Xs).astype(np.float32)
    return _in_order(rng, shuffle, X if as_images else X.reshape(n_rows, 64), np.concatenate(ys),
                     np.repeat(np.arange(n_clients), sizes))


_FEATURE_TRANSFORMS = ("affine", "permute")


def federate(X, y, n_clients: int = 20, *, label_shift: float = 0.0, feature_shift: float = 0.0,
             feature_transform="affine", label_skew: float | None = None, size_concentration: float | None = None,
             min_samples_per_client: int = 2, n_small_clients: int = 0, small_client_size: int = 3,
             shuffle: bool = True, target_shift: float = 0.0, random_state=None):
    """Deal a data set's rows to clients, with the shifts that personalization is for.

    Every row goes to exactly one client. How many rows each client gets, which classes, and how
    it sees them are set by independent options; with their defaults the rows are dealt at random
    in (near) equal shares and no client differs from another.

    - **Sizes** (unequal clients): ``size_concentration`` draws the shares of the rows beyond
      ``min_samples_per_client`` from a symmetric Dirichlet distribution (small values: a few
      large clients, many small ones); ``n_small_clients`` clients get only
      ``small_client_size`` rows each.
    - **Label skew**: ``label_skew`` draws each client's class proportions from a symmetric
      Dirichlet distribution with that concentration (0.1: one or two classes per client; 10:
      nearly the overall mix) and deals its rows by them, as far as the classes' rows last.
    - **Concept shift**: a share ``label_shift`` of the clients relabel the classes with their own
      permutation (never the identity): the same input, another label. A personal output layer
      (``split="head"``) can learn it.
    - **Covariate shift**: a share ``feature_shift`` of the clients (chosen independently) see
      their features through their own transform: ``"affine"``, ``x * a + b`` per feature with
      ``log a ~ N(0, 0.5^2)`` and ``b ~ N(0, s^2)``, ``s`` the feature's standard deviation over
      all rows; ``"permute"``, the features in the client's own order (pixels shuffled one way per
      client); or a callable ``f(X_client, rng)`` returning the client's transformed rows. A
      personal input layer (``split="input"``) can undo the first two.
    - **Target shift** (regression): every client adds its own offset to ``y``, drawn from
      ``N(0, (target_shift * std(y))^2)``: the same input, a value shifted per client. A personal
      output layer (its bias) can learn it.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        Numeric rows (features, or images: transforms act on the flattened row).
    y : array-like of shape (n_samples,)
        Labels, of any type; a permutation maps the labels present in ``y`` onto themselves.
    n_clients : int, default=20
    label_shift : float in [0, 1], default=0.0
        Share of clients (rounded to the nearest count) that permute the labels.
    feature_shift : float in [0, 1], default=0.0
        Share of clients (rounded) whose features are transformed.
    feature_transform : {"affine", "permute"} or callable, default="affine"
    label_skew : float > 0 or None, default=None
        Dirichlet concentration of each client's class proportions; ``None`` deals the rows at
        random, whatever their class.
    size_concentration : float > 0 or None, default=None
        Dirichlet concentration of the client sizes; ``None``: equal sizes (up to one row).
    min_samples_per_client : int, default=2
        Rows every client other than the small ones gets at least.
    n_small_clients : int, default=0
        Clients that get only ``small_client_size`` rows.
    small_client_size : int, default=3
    shuffle : bool, default=True
        Rows in random order (scikit-learn's plain ``cv=5`` folds then hold rows of every client);
        ``False`` groups them by client.
    target_shift : float >= 0, default=0.0
        Scale of each client's offset to a numeric ``y``, in standard deviations of ``y``.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, ...)
        The rows, transformed where a client's features are (as floats); the input's dtype
        otherwise.
    y : ndarray of shape (n_samples,)
        Each row's label as its client names it (its value plus the client's offset, with
        ``target_shift``).
    client_ids : ndarray of shape (n_samples,), int
        Clients ``0 .. n_clients - 1``.

    Notes
    -----
    Scale the features before dealing them (digit pixels ``/ 16``, ``StandardScaler`` for tabular
    data): the affine transform is relative to each feature's spread, and the estimator's default
    learning rate assumes features of order one.

    Examples
    --------
    >>> from sklearn.datasets import load_wine
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_wine(return_X_y=True)
    >>> X, y, c = federate(StandardScaler().fit_transform(X), y, n_clients=6, label_shift=0.5,
    ...                    label_skew=1.0, random_state=0)
    >>> X.shape, sorted(set(c.tolist())), len(set(y.tolist()))
    ((178, 13), [0, 1, 2, 3, 4, 5], 3)
    """
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if X.ndim < 2 or y.shape != (n,):
        raise ValueError(f"X must have a row per sample (2 or more dimensions) and y one label per row; got X of "
                         f"shape {X.shape} and y of shape {y.shape}.")
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}.")
    for name, value in (("label_shift", label_shift), ("feature_shift", feature_shift)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} is a share of the clients and must be in [0, 1], got {value!r}.")
    if not target_shift >= 0 or (target_shift and y.dtype.kind not in "iuf"):
        raise ValueError(f"target_shift must be >= 0 and needs numeric y; got target_shift={target_shift!r} and y "
                         f"of dtype {y.dtype}.")
    for name, value in (("label_skew", label_skew), ("size_concentration", size_concentration)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} is a Dirichlet concentration and must be > 0 (or None), got {value!r}.")
    if not (callable(feature_transform) or feature_transform in _FEATURE_TRANSFORMS):
        raise ValueError(f"feature_transform must be one of {_FEATURE_TRANSFORMS} or a callable f(X_client, rng), "
                         f"got {feature_transform!r}.")
    if not 0 <= n_small_clients <= n_clients or small_client_size < 1 or min_samples_per_client < 1:
        raise ValueError(f"need 0 <= n_small_clients <= n_clients and positive sizes; got n_small_clients="
                         f"{n_small_clients!r}, small_client_size={small_client_size!r}, "
                         f"min_samples_per_client={min_samples_per_client!r}.")
    n_large = n_clients - n_small_clients
    rest = n - n_small_clients * small_client_size
    if rest < n_large * min_samples_per_client or (n_large == 0 and rest != 0):
        raise ValueError(f"{n} rows cannot give {n_small_clients} client(s) {small_client_size} rows and "
                         f"{n_large} more at least {min_samples_per_client}; lower n_clients or the sizes.")
    rng = check_random_state(random_state)
    sizes = np.full(n_clients, small_client_size)
    large = np.sort(rng.permutation(n_clients)[n_small_clients:])
    if n_large:
        extra = rest - n_large * min_samples_per_client
        if size_concentration is None:
            shares = np.full(n_large, extra // n_large) + (rng.permutation(n_large) < extra % n_large)
        else:
            shares = rng.multinomial(extra, rng.dirichlet(np.full(n_large, float(size_concentration))))
        sizes[large] = min_samples_per_client + shares
    classes, codes = np.unique(y, return_inverse=True)
    client = _deal(rng, codes, len(classes), sizes, label_skew)

    y_out, X_out = y.copy(), X.copy()
    relabelled = rng.choice(n_clients, int(round(label_shift * n_clients)), replace=False)
    transformed = rng.choice(n_clients, int(round(feature_shift * n_clients)), replace=False)
    if len(transformed) and X_out.dtype.kind not in "fc":
        X_out = X_out.astype(np.float64)
    flat = X_out.reshape(n, -1)
    spread = flat.std(axis=0) if len(transformed) else None
    for k in relabelled:
        rows = client == k
        permutation = np.arange(len(classes))
        while len(classes) > 1 and np.array_equal(permutation, np.arange(len(classes))):
            permutation = rng.permutation(len(classes))
        y_out[rows] = classes[permutation[codes[rows]]]
    for k in transformed:
        rows = client == k
        if callable(feature_transform):
            flat[rows] = np.asarray(feature_transform(X_out[rows], rng)).reshape(rows.sum(), -1)
        elif feature_transform == "affine":
            scale = np.exp(0.5 * rng.standard_normal(flat.shape[1]))
            flat[rows] = flat[rows] * scale + rng.standard_normal(flat.shape[1]) * spread
        else:
            flat[rows] = flat[rows][:, rng.permutation(flat.shape[1])]
    order = np.argsort(client, kind="stable")
    X_out, y_out, client = _in_order(rng, shuffle, flat.reshape(X_out.shape)[order], y_out[order], client[order])
    if target_shift:  # drawn last: the rows are dealt, shifted and shuffled as without it
        y_out = y_out.astype(np.float64) + (rng.standard_normal(n_clients) * target_shift * y.std())[client]
    return X_out, y_out, client


def _deal(rng, codes: np.ndarray, n_classes: int, sizes: np.ndarray, label_skew) -> np.ndarray:
    """The client of each row: ``sizes[k]`` rows to client ``k``, by class proportions if ``label_skew``.

    With label skew the clients take their rows one at a time, in a random interleaving, each
    drawing the class by its own proportions among the classes that still have rows left (so the
    last rows of a class go to whoever still wants them).
    """
    n = len(codes)
    client = np.empty(n, dtype=np.int64)
    if label_skew is None:
        client[rng.permutation(n)] = np.repeat(np.arange(len(sizes)), sizes)
        return client
    proportions = np.nan_to_num(rng.dirichlet(np.full(n_classes, float(label_skew)), size=len(sizes)))
    pools = [list(rng.permutation(np.flatnonzero(codes == c))) for c in range(n_classes)]
    left = np.array([len(p) for p in pools], dtype=float)
    for k in rng.permutation(np.repeat(np.arange(len(sizes)), sizes)):
        weights = proportions[k] * (left > 0)
        if not weights.sum() > 0:
            weights = left  # the client's own classes are used up: take what is left
        c = rng.choice(n_classes, p=weights / weights.sum())
        client[pools[c].pop()] = k
        left[c] -= 1
    return client


def load_leaf(path, *, max_clients: int | None = None, x_shape: tuple[int, ...] | None = None,
              dtype=np.float32):
    """Read a LEAF data set (FEMNIST, Shakespeare, Sent140, ...) from its JSON files on disk.

    LEAF (Caldas et al., 2018) stores each split as JSON files holding ``"users"`` (the client
    ids), ``"num_samples"`` (rows per user) and ``"user_data"``: for each user, ``{"x": [...],
    "y": [...]}``. This reads the files users downloaded and preprocessed with LEAF's scripts;
    nothing is downloaded.

    Parameters
    ----------
    path : str or os.PathLike
        A directory (every ``*.json`` file in it is read, in name order, e.g.
        ``"leaf/data/femnist/data/train"``) or one JSON file.
    max_clients : int, default=None
        Stop after this many users (in file order): a quick subset of a large data set.
    x_shape : tuple of int, default=None
        Reshape each numeric row, e.g. ``(28, 28)`` for FEMNIST images (then the estimator
        builds a CNN).
    dtype : numpy dtype, default=float32
        Type of numeric ``X``.

    Returns
    -------
    X : ndarray of shape (n_samples, ...)
        Numeric rows (FEMNIST's 784 pixels) as ``dtype``; other rows (Shakespeare's strings,
        Sent140's records) are returned as they are, as a string or object array, for the user
        to encode.
    y : ndarray of shape (n_samples,)
    client_ids : ndarray of shape (n_samples,), str
        The LEAF user of each row; rows are grouped by user. A user found in several files gets
        all their rows.

    Examples
    --------
    >>> import json, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> data = {"users": ["u1", "u2"], "num_samples": [2, 1],
    ...         "user_data": {"u1": {"x": [[0, 1], [1, 0]], "y": [1, 0]}, "u2": {"x": [[1, 1]], "y": [1]}}}
    >>> with open(os.path.join(d, "train.json"), "w") as f:
    ...     json.dump(data, f)
    >>> X, y, c = load_leaf(d)
    >>> X.shape, y.tolist(), c.tolist()
    ((3, 2), [1, 0, 1], ['u1', 'u1', 'u2'])
    """
    import json
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"No *.json file in {str(path)!r}; point load_leaf at a LEAF split "
                                    "directory such as 'data/femnist/data/train'.")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{str(path)!r} is neither a directory nor a file.")
    if max_clients is not None and (not isinstance(max_clients, (int, np.integer)) or max_clients < 1):
        raise ValueError(f"max_clients must be a positive integer or None, got {max_clients!r}.")
    rows: dict[str, tuple[list, list]] = {}
    for file in files:
        with open(file) as f:
            data = json.load(f)
        missing = {"users", "user_data"} - set(data)
        if missing:
            raise ValueError(f"{str(file)!r} is not a LEAF file: it lacks the key(s) {sorted(missing)}.")
        counts = data.get("num_samples", [None] * len(data["users"]))
        if len(counts) != len(data["users"]):
            raise ValueError(f"{str(file)!r} lists {len(data['users'])} users but {len(counts)} num_samples.")
        for user, count in zip(data["users"], counts):
            if user not in rows and max_clients is not None and len(rows) == max_clients:
                break
            if user not in data["user_data"]:
                raise ValueError(f"{str(file)!r} lists user {user!r} with no entry in user_data.")
            record = data["user_data"][user]
            xs, ys = record["x"], record["y"]
            if len(xs) != len(ys) or (count is not None and count != len(ys)):
                raise ValueError(f"{str(file)!r}: user {user!r} has {len(xs)} x, {len(ys)} y and num_samples "
                                 f"{count}; they must agree.")
            held_x, held_y = rows.setdefault(str(user), ([], []))
            held_x.extend(xs)
            held_y.extend(ys)
        if max_clients is not None and len(rows) == max_clients:
            break
    if not rows:
        raise ValueError(f"No user with data in {str(path)!r}.")
    all_x = [x for xs, _ in rows.values() for x in xs]
    try:
        X = np.asarray(all_x, dtype=dtype)
    except (TypeError, ValueError):
        try:
            X = np.asarray(all_x)
        except ValueError:  # ragged rows
            X = np.empty(len(all_x), dtype=object)
            X[:] = all_x
    if x_shape is not None:
        if X.dtype.kind not in "fiu":
            raise ValueError(f"x_shape={x_shape!r} needs numeric rows; these rows are {X.dtype}.")
        if int(np.prod(x_shape)) != int(np.prod(X.shape[1:])):
            raise ValueError(f"x_shape={x_shape!r} does not fit rows of {int(np.prod(X.shape[1:]))} values.")
        X = X.reshape(len(X), *x_shape)
    y = np.asarray([v for _, ys in rows.values() for v in ys])
    client_ids = np.repeat(np.array(list(rows), dtype=str), [len(ys) for _, ys in rows.values()])
    return X, y, client_ids
