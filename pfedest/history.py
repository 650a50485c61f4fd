"""``history_``: one dict per round, sliceable like skorch's ``History``."""

from __future__ import annotations


class History(list):
    """A list of per-round records (dicts) with column access.

    Parameters
    ----------
    iterable : iterable of dict, optional
        The records, as for :class:`list`.

    Examples
    --------
    >>> h = History([{"round": 1, "train_loss": 0.9}, {"round": 2, "train_loss": 0.7}])
    >>> h[:, "train_loss"]
    [0.9, 0.7]
    >>> h[-1, "round"]
    2
    """

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, column = key
            selected = list.__getitem__(self, rows)
            if isinstance(rows, slice):
                return [row[column] for row in selected]
            return selected[column]
        result = list.__getitem__(self, key)
        return History(result) if isinstance(key, slice) else result
