"""The callback interface: hooks at the start and end of training and of every round.

A callback is a small scikit-learn estimator (its settings are parameters, so ``clone`` and
``get_params`` work, and ``GridSearchCV`` reaches them by the callback's name:
``callbacks__earlystopping__patience``) with no-op hooks to override. The estimator clones its
callbacks at the start of each ``fit``, so state a callback keeps (a best score) never leaks between
fits; the live copies are ``estimator.callbacks_``.

A callback that keeps state across rounds returns it from ``state_dict`` (JSON-able: numbers,
strings, lists and dicts, no tensors) and takes it back in ``load_state_dict``; the estimator's
own ``state_dict`` holds it, so a :class:`~pfedest.callbacks.Checkpoint` saves it with the model
and a resumed fit continues with it instead of starting it afresh.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator


class Callback(BaseEstimator):
    """Base class: override any of the hooks.

    Parameters
    ----------
    None
        The base class takes no parameters; a subclass's ``__init__`` arguments are its settings.

    Examples
    --------
    >>> class PrintLoss(Callback):
    ...     def on_round_end(self, estimator, record):
    ...         print(record["round"], round(record["train_loss"], 2))
    >>> PrintLoss().on_round_end(None, {"round": 1, "train_loss": 0.6931})
    1 0.69
    """

    def on_train_begin(self, estimator) -> None:
        """Before the first round of a ``fit``."""

    def on_round_begin(self, estimator, round_number: int, stage: str) -> None:
        """Before round ``round_number`` (counted over the estimator's whole history, from 1)."""

    def on_round_end(self, estimator, record: dict) -> None:
        """After a round; ``record`` is the round's row of ``history_`` and may be extended."""

    def on_train_end(self, estimator) -> None:
        """After the last round of a ``fit`` (also when a callback stopped it early)."""

    def state_dict(self) -> dict:
        """The state this callback keeps across rounds, as JSON-able values (empty: none).

        :class:`Checkpoint` saves it after each round it writes and, on resuming, hands it to
        :meth:`load_state_dict` after this callback's ``on_train_begin`` has run.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back a ``state_dict()``; raise ``ValueError`` if it does not fit this callback."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but was given {sorted(state)}.")


def keeps_state(callback) -> bool:
    """Whether ``callback`` has state to checkpoint: it overrides :meth:`Callback.state_dict`.

    Parameters
    ----------
    callback : object
        A callback (one without ``state_dict`` keeps none).

    Returns
    -------
    bool

    Examples
    --------
    >>> from pfedest.callbacks import Checkpoint, EarlyStopping, EvaluateClients
    >>> keeps_state(EarlyStopping()), keeps_state(EvaluateClients()), keeps_state(Checkpoint("ckpts"))
    (True, False, False)
    """
    return getattr(type(callback), "state_dict", Callback.state_dict) is not Callback.state_dict


def named_callbacks(callbacks) -> list:
    """``(name, callback)`` pairs of an estimator's ``callbacks``.

    A ``(name, callback)`` item keeps its name; a bare callback is named after its class in lower
    case, with ``-1``, ``-2`` ... when several share a class (as scikit-learn's ``make_pipeline``).

    Examples
    --------
    >>> class Log(Callback):
    ...     pass
    >>> [name for name, _ in named_callbacks([Log(), ("valid", Log()), Log()])]
    ['log-1', 'valid', 'log-2']
    """
    items = [cb if isinstance(cb, tuple) else (None, cb) for cb in (callbacks or [])]
    for item in items:
        if len(item) != 2 or (item[0] is not None and not isinstance(item[0], str)) or "__" in (item[0] or ""):
            raise ValueError(f"callbacks takes callbacks and (name, callback) pairs with names without '__', "
                             f"got {item!r}.")
    auto = [type(cb).__name__.lower() for name, cb in items if name is None]
    repeated = {n for n in auto if auto.count(n) > 1}
    seen: dict = {}
    named = []
    for name, cb in items:
        if name is None:
            name = type(cb).__name__.lower()
            if name in repeated:
                seen[name] = seen.get(name, 0) + 1
                name = f"{name}-{seen[name]}"
        named.append((name, cb))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"Callback names must be unique, got {names}.")
    return named


def callback_params(callbacks, prefix: str = "callbacks") -> dict:
    """Each named callback and its parameters, as ``<prefix>__<name>`` and ``<prefix>__<name>__<param>``.

    Examples
    --------
    >>> class Every(Callback):
    ...     def __init__(self, every=1):
    ...         self.every = every
    >>> callback_params([Every(3)])["callbacks__every__every"]
    3
    """
    params = {}
    for name, cb in named_callbacks(callbacks):
        params[f"{prefix}__{name}"] = cb
        params.update({f"{prefix}__{name}__{k}": v for k, v in cb.get_params(deep=True).items()})
    return params


def set_callback_params(callbacks, params: dict) -> list:
    """Apply ``{"<name>__<param>": value}`` (a callback's setting) or ``{"<name>": callback}`` (replace it).

    Settings are set on the callbacks themselves, as scikit-learn sets those of a pipeline's steps;
    returns the list of callbacks, with the replaced ones as ``(name, callback)`` pairs.

    Examples
    --------
    >>> class Every(Callback):
    ...     def __init__(self, every=1):
    ...         self.every = every
    >>> callbacks = [Every()]
    >>> set_callback_params(callbacks, {"every__every": 5})[0].every
    5
    """
    callbacks = list(callbacks or [])
    for key, value in params.items():
        named = dict(named_callbacks(callbacks))
        name, _, rest = key.partition("__")
        if name not in named:
            raise ValueError(f"Invalid parameter 'callbacks__{key}': the callbacks are named {sorted(named)}.")
        if rest:
            named[name].set_params(**{rest: value})
        else:
            callbacks = [(n, value) if n == name else item
                         for (n, _), item in zip(named_callbacks(callbacks), callbacks)]
    return callbacks
