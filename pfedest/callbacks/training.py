"""Callbacks that steer training: stop it early, save it to resume later."""

from __future__ import annotations

import numbers
import os
import tempfile
import uuid
from pathlib import Path

from .._files import FolderLock
from ..core.stopping import Plateau
from ..checkpoint import (LOCK_FILE, OtherFitCheckpoint, checkpoint_path, latest_checkpoint, list_checkpoints,
                          read_owners, save_checkpoint, write_owners)
from .base import Callback, keeps_state


class EarlyStopping(Callback):
    """Stop the current stage when ``monitor`` has not improved for ``patience`` evaluations.

    Each stage of the plan (pre-training, training, fine-tuning) is watched on its own: its first
    evaluation starts a fresh best and wait, so a stop in training does not cut fine-tuning short.

    Parameters
    ----------
    monitor : str, default="valid_mean"
        A key of the round records (rounds where it is NaN or missing are not evaluations).
    patience : int, default=5
    mode : {"max", "min"}, default="max"
    min_delta : float, default=0.0

    Examples
    --------
    >>> from pfedest import EvaluateClients, PartialPersonalizedClassifier
    >>> from pfedest.datasets import make_shifted_clients
    >>> X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=20, random_state=0)
    >>> est = PartialPersonalizedClassifier(
    ...     n_rounds=10, hidden_layer_sizes=(8,), random_state=0,
    ...     callbacks=[EvaluateClients(X, y, c), EarlyStopping(patience=1, mode="min")]).fit(X, y, c)
    >>> len(est.history_) < 10
    True
    """

    def __init__(self, monitor: str = "valid_mean", patience: int = 5, mode: str = "max", min_delta: float = 0.0):
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta

    def on_train_begin(self, estimator):
        self._start_stage(None)

    def _start_stage(self, stage):
        # the estimator's own stopping rule (tol, n_iter_no_change) is the same Plateau
        self.rule_ = Plateau(self.mode, self.patience, self.min_delta)
        self.stage_ = stage  # None: whatever stage the next record has

    @property
    def best_(self):
        return self.rule_.best

    @property
    def best_round_(self):
        return self.rule_.best_round

    @property
    def waited_(self):
        return self.rule_.waited

    def on_round_end(self, estimator, record):
        stage = record.get("stage")
        if self.stage_ is not None and stage != self.stage_:
            self._start_stage(stage)
        self.stage_ = stage
        self.rule_.update(record.get(self.monitor), record["round"])
        if self.rule_.reached:
            estimator.request_stop(f"{self.monitor} has not improved for {self.patience} evaluations "
                                   f"(best {self.best_:.4g} in round {self.best_round_}).")

    def state_dict(self) -> dict:
        """The stage, its best value and round, and the evaluations waited since (empty before training).

        Examples
        --------
        >>> stopper = EarlyStopping(patience=3)
        >>> stopper.on_train_begin(None)
        >>> stopper.on_round_end(None, {"round": 1, "valid_mean": 0.8})
        >>> stopper.on_round_end(None, {"round": 2, "valid_mean": 0.7})
        >>> state = stopper.state_dict()
        >>> state["best"], state["best_round"], state["waited"]
        (0.8, 1, 1)
        >>> resumed = EarlyStopping(patience=3)
        >>> resumed.on_train_begin(None)
        >>> resumed.load_state_dict(state)
        >>> resumed.waited_
        1
        """
        if not hasattr(self, "rule_"):
            return {}
        # monitor and mode say what best means; load_state_dict checks them
        return {"monitor": self.monitor, "mode": self.mode, **self.rule_.state_dict(), "stage": self.stage_}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``; refuse one that tracked another value or direction."""
        if not state:
            return
        if (state["monitor"], state["mode"]) != (self.monitor, self.mode):
            raise ValueError(f"The saved EarlyStopping state tracks monitor={state['monitor']!r}, "
                             f"mode={state['mode']!r}; this one monitor={self.monitor!r}, mode={self.mode!r}.")
        self.rule_.load_state_dict(state)
        self.stage_ = state["stage"]


class Checkpoint(Callback):
    """Save everything needed to continue training every ``every`` rounds; resume from it.

    With ``resume=True``, a ``fit`` that finds a valid checkpoint of the same run in ``directory``
    continues from it instead of starting over, and ends with the same parameters as a run that
    was never interrupted. Broken files (truncated, corrupted) are skipped for the previous good one.
    The other callbacks' ``state_dict()`` is saved too (an :class:`EarlyStopping`'s best score and
    wait) and restored after their ``on_train_begin``, so a resumed run stops where the uninterrupted
    one does; a checkpoint whose callbacks with state differ from this fit's is refused, and so is
    one written with other training settings (``lr``, ``algorithm``, ``weighting``, ...; not
    ``engine``, ``device`` or ``verbose``). The estimator runs Checkpoint after every other callback,
    wherever it is listed, so that it saves their state of the round.

    The folder belongs to one run at a time. At the start of ``fit`` the arguments are checked,
    the folder is created and checked to be writable, and its lock
    (:data:`pfedest.checkpoint.LOCK_FILE`) is taken for the fit: a second fit on the same folder,
    in another process or another thread, is refused with a
    :class:`~pfedest.checkpoint.FolderInUseError` that names the holder, before its first round.
    The lock is let go at the end of the fit, and by the operating system when the process ends
    (even by ``SIGKILL``); a fit that failed holds it until the next fit in the same thread, or
    until its estimator is deleted. Each run has an id (``run_id_``; a resumed fit keeps the id of
    the run it continues), the folder records which run wrote each file
    (:data:`pfedest.checkpoint.OWNERS_FILE`), and ``keep`` deletes only the run's own files: those
    of another run, or written before owners were recorded, stay.

    Parameters
    ----------
    directory : str or Path
    every : int, default=10
        Save after every ``every`` rounds (an integer >= 1).
    keep : int, default=2
        How many of the run's newest checkpoints to keep (its older ones are deleted; an integer >= 1).
    resume : bool, default=True

    Attributes
    ----------
    resumed_from_ : str or None
        The checkpoint the fit continued from.
    run_id_ : str
        The run's id in the folder's record of owners.

    Examples
    --------
    >>> import tempfile
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.checkpoint import list_checkpoints
    >>> from pfedest.datasets import make_shifted_clients
    >>> X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=20, random_state=0)
    >>> folder = tempfile.mkdtemp()
    >>> est = PartialPersonalizedClassifier(n_rounds=4, hidden_layer_sizes=(8,), random_state=0,
    ...                                     callbacks=[Checkpoint(folder, every=2)]).fit(X, y, c)
    >>> [p.name for p in list_checkpoints(folder)]
    ['round-000004.ckpt', 'round-000002.ckpt']
    """

    #: Saved after the other callbacks have added their entries to the round's record.
    run_last = True

    def __init__(self, directory=None, every: int = 10, keep: int = 2, resume: bool = True):
        self.directory = directory
        self.every = every
        self.keep = keep
        self.resume = resume

    def on_train_begin(self, estimator):
        self._check_params()
        directory = Path(self.directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".pfedest-write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ValueError(f"Checkpoint cannot write to {str(self.directory)!r} ({type(exc).__name__}: {exc}); "
                             "give it a folder it can create and write to.") from exc
        self._lock = FolderLock(directory, LOCK_FILE)
        self._lock.acquire(self, f"a fit checkpointing every {self.every} rounds")
        try:
            self._begin(estimator)
        except BaseException:
            self._lock.release(self)
            raise

    def _check_params(self) -> None:
        if self.directory is None:
            raise ValueError("Checkpoint needs a directory.")
        if not isinstance(self.directory, (str, os.PathLike)):
            raise TypeError(f"Checkpoint directory must be a str or a path, got {self.directory!r}.")
        for name in ("every", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"Checkpoint {name} must be an integer >= 1, got {value!r}.")
        if not isinstance(self.resume, bool):
            raise ValueError(f"Checkpoint resume must be True or False, got {self.resume!r}.")

    def _begin(self, estimator) -> None:
        # A callback after this one would update its state after the save of each round, and its
        # on_train_begin would reset it after the restore: its checkpointed state would be wrong.
        # The estimator runs Checkpoint last; this catches another Checkpoint (a subclass with
        # state) after this one, or callbacks ordered by other code.
        later = [type(cb).__name__ for cb in _callbacks_after(estimator, self) if keeps_state(cb)]
        if later:
            raise ValueError(f"Checkpoint must run after every callback that keeps state, but {', '.join(later)} "
                             "runs after it: run Checkpoint last.")
        self.resumed_from_ = None
        self.run_id_ = uuid.uuid4().hex[:12]
        if self.resume:
            found = latest_checkpoint(self.directory)
            if found is not None:
                path, state = found
                try:
                    estimator.load_state_dict(state)
                except OtherFitCheckpoint:
                    # an earlier fit's: a warm start continues from the model and writes its own files
                    return
                self.resumed_from_ = str(path)
                # the run continues: its files written before the interruption are its own
                self.run_id_ = read_owners(self.directory).get(path.name, self.run_id_)

    def on_round_end(self, estimator, record):
        if record["round"] % self.every == 0:
            self.save(estimator, record["round"])

    def on_train_end(self, estimator):
        self._lock.release(self)

    def save(self, estimator, round_number: int) -> Path:
        """Write a checkpoint of ``estimator`` now, and drop all but the ``keep`` newest of this run's."""
        if getattr(self, "run_id_", None) is None:  # called outside a fit: a run of its own
            self.run_id_ = uuid.uuid4().hex[:12]
        path = save_checkpoint(estimator.state_dict(), checkpoint_path(self.directory, round_number))
        owners = read_owners(self.directory)
        owners[path.name] = self.run_id_
        own = [p for p in list_checkpoints(self.directory) if owners.get(p.name) == self.run_id_]
        for old in own[self.keep:]:
            old.unlink(missing_ok=True)
        present = {p.name for p in list_checkpoints(self.directory)}
        write_owners(self.directory, {name: run for name, run in owners.items() if name in present})
        return path


def _callbacks_after(estimator, callback) -> list:
    callbacks = list(getattr(estimator, "callbacks_", []))
    position = next((i for i, cb in enumerate(callbacks) if cb is callback), len(callbacks))
    return callbacks[position + 1:]
