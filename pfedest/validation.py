"""Checks of what users hand to the estimator (labels, client ids, row shapes), with errors that say what to do."""

from __future__ import annotations

import numpy as np

__all__ = ["encode_labels", "check_client_ids", "check_row_shape"]


def encode_labels(classes: np.ndarray, y) -> np.ndarray:
    """The index of each label of ``y`` in the sorted ``classes``; refuse labels not among them.

    Examples
    --------
    >>> encode_labels(np.array(["a", "b", "c"]), ["c", "a"]).tolist()
    [2, 0]
    >>> encode_labels(np.array([0, 1]), [2])
    Traceback (most recent call last):
    ...
    ValueError: y holds labels unseen when the model was fitted: [2]; known labels: [0, 1].
    """
    y = np.asarray(y)
    unknown = np.setdiff1d(np.unique(y), classes)
    if len(unknown):
        raise ValueError(f"y holds labels unseen when the model was fitted: {unknown.tolist()}; "
                         f"known labels: {np.asarray(classes).tolist()}.")
    return np.searchsorted(classes, y)


def check_row_shape(X, expected: tuple, owner: str) -> None:
    """Refuse rows of another shape than those ``owner`` was fitted on."""
    if X.shape[1:] != tuple(expected):
        raise ValueError(f"X has rows of shape {X.shape[1:]}, but {owner} was fitted on rows of shape "
                         f"{tuple(expected)}.")


def check_client_ids(client_ids, n_samples: int, known=None) -> np.ndarray:
    """Client ids as a 1-D array with one id per row; ``None`` means the model's one client.

    Parameters
    ----------
    client_ids : array-like of shape (n_samples,) or None
        The client of each row.
    n_samples : int
        Rows of ``X``.
    known : ndarray or None
        The model's clients (``None`` on a fresh fit: ``client_ids=None`` is then client 0).

    Returns
    -------
    ndarray of shape (n_samples,)

    Examples
    --------
    >>> check_client_ids(None, 3).tolist()
    [0, 0, 0]
    >>> check_client_ids(["a", "b"], 2, known=np.array([0, 1]))
    Traceback (most recent call last):
    ...
    TypeError: client_ids are strings (['a', 'b'] ...) but this model's clients are numbers ([0, 1] ...); pass ids of the same type.
    >>> check_client_ids(np.array([3.0]), 1, known=np.array([2**60])).dtype  # a whole float joins int ids
    dtype('int64')
    """
    if client_ids is None:
        if known is not None and len(known) > 1:
            raise ValueError(f"client_ids is required: this model was fitted on {len(known)} "
                             "clients and each row must say which one it belongs to.")
        return np.full(n_samples, known[0] if known is not None else 0)
    client_ids = np.asarray(client_ids)
    if client_ids.ndim != 1 or len(client_ids) != n_samples:
        raise ValueError(f"client_ids must be 1-D with one id per row of X ({n_samples} rows), got shape "
                         f"{client_ids.shape}.")
    if client_ids.dtype.kind == "f" and not np.all(np.isfinite(client_ids)):
        raise ValueError("client_ids contains NaN or infinity.")
    if client_ids.dtype.kind == "O":
        try:
            np.unique(client_ids)
        except TypeError as exc:
            raise TypeError("client_ids mixes types that cannot be compared (e.g. str and int); "
                            "use one type for all ids.") from exc
    if known is not None and len(client_ids) and _id_kind(client_ids) != _id_kind(known):
        # NumPy would compare "0" with 0 as different clients, or turn the known ids into text
        raise TypeError(f"client_ids are {_id_kind(client_ids)}s ({client_ids[:3].tolist()} ...) but this model's "
                        f"clients are {_id_kind(known)}s ({known[:3].tolist()} ...); pass ids of the same type.")
    if known is not None and len(client_ids) and _id_kind(known) == "number" and client_ids.dtype != known.dtype:
        client_ids = _as_dtype_of(client_ids, known)
    return client_ids


def _as_dtype_of(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Numeric ids in the dtype of the model's ids, if every one converts exactly; else a TypeError.

    Mixing dtypes would let NumPy promote the model's ids (int64 ids beside a float turn float64,
    and ``2**60`` and ``2**60 + 1`` become one number), so new ids take the known ids' dtype or are
    refused.
    """
    if known.dtype.kind == "O" or ids.dtype.kind == "O":
        return ids  # Python numbers compare exactly by value
    unique = np.unique(ids)
    with np.errstate(all="ignore"):
        converted = unique.astype(known.dtype)
    inexact = [a for a, b in zip(unique.tolist(), converted.tolist()) if a != b]
    if inexact:
        raise TypeError(f"client_ids {inexact[:3]} have no exact {known.dtype} value, and this model's client ids are "
                        f"{known.dtype}: mixing them would change the known ids. Pass ids of dtype {known.dtype}.")
    return ids.astype(known.dtype)


def _id_kind(ids: np.ndarray) -> str:
    """``"number"`` or ``"string"`` (``"other"`` for anything else): the kind of client ids."""
    if ids.dtype.kind in "iufb":
        return "number"
    if ids.dtype.kind in "US":
        return "string"
    values = ids.tolist()
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return "number"
    return "other"
