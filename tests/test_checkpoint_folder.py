"""A checkpoint folder belongs to one run: a second fit on it, in another thread or process, is
refused before its first round; pruning deletes only the run's own files; a file that fails the
``weights_only`` load is skipped; Checkpoint's arguments and the folder are checked before round 1."""

import gc
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedest import Callback, Checkpoint, PartialPersonalizedClassifier
from pfedest._files import FolderLock
from pfedest.checkpoint import (LOCK_FILE, MAGIC, FolderInUseError, list_checkpoints, load_checkpoint, read_owners,
                                save_checkpoint)

from test_checkpoint import PARAMS, CrashAt  # 9 rounds: 2 pre-training, 6 training, 1 fine-tuning


class Rounds(Callback):
    """Records the rounds that ran."""

    def on_train_begin(self, estimator):
        self.ran_ = []

    def on_round_end(self, estimator, record):
        self.ran_.append(record["round"])


def fit(federated, directory, *extra, **checkpoint):
    X, y, c = federated
    est = PartialPersonalizedClassifier(**PARAMS, callbacks=[Rounds(), *extra, Checkpoint(directory, **checkpoint)])
    return est.fit(X, y, client_ids=c)


def names(directory):
    return [p.name for p in list_checkpoints(directory)]


# ------------------------------------------------------------------ item 6: a file that fails to load
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_fails_the_weights_only_load_is_skipped_for_the_previous_one(federated, tmp_path):
    """Before: UnpicklingError out of the fit."""
    with pytest.raises(KeyboardInterrupt):
        fit(federated, tmp_path, CrashAt(5), every=2)
    newest = list_checkpoints(tmp_path)[0]
    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    payload = buffer.getvalue()
    newest.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)  # checksum fits
    with pytest.warns(UserWarning, match=r"Skipping checkpoint .*round-000004\.ckpt: .* weights_only load refused"):
        est = fit(federated, tmp_path, every=2)
    assert est.callbacks_[-1].resumed_from_.endswith("round-000002.ckpt")
    assert est.callbacks_[0].ran_ == list(range(3, 10))
    buffer = io.BytesIO()
    torch.save(torch.zeros(2), buffer)  # loads, but is no saved state
    payload = buffer.getvalue()
    bad = tmp_path / "tensor.ckpt"
    bad.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(Exception, match="holds a Tensor, not the dict of a saved state"):
        load_checkpoint(bad)


# ----------------------------------------------------------------------- item 9: the arguments
@pytest.mark.parametrize("arguments, shown", [
    (dict(every=0), "every must be an integer >= 1, got 0"),
    (dict(every=-1), "every must be an integer >= 1, got -1"),
    (dict(every=2.5), "every must be an integer >= 1, got 2.5"),
    (dict(every=True), "every must be an integer >= 1, got True"),
    (dict(keep=0), "keep must be an integer >= 1, got 0"),
    (dict(resume="yes"), "resume must be True or False, got 'yes'"),
])
def test_checkpoint_arguments_are_checked_before_the_first_round(federated, tmp_path, arguments, shown):
    """Before: every=0 failed with ZeroDivisionError after round 1; every=-1 was accepted."""
    rounds = Rounds()
    X, y, c = federated
    est = PartialPersonalizedClassifier(**PARAMS, callbacks=[rounds, Checkpoint(tmp_path, **arguments)])
    with pytest.raises(ValueError, match=shown):
        est.fit(X, y, client_ids=c)
    assert est.callbacks_[0].ran_ == []


def writable(folder) -> bool:
    try:
        fd, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path)
    return True


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if writable(folder):  # root ignores the mode; /sys refuses even root
        folder.chmod(0o755)
        if not Path("/sys").is_dir() or writable("/sys"):
            pytest.skip("no folder here that this user cannot write to")
        folder = Path("/sys")
    yield folder
    if folder != Path("/sys"):
        folder.chmod(0o755)


def test_a_read_only_folder_fails_before_the_first_round(federated, read_only_folder):
    """Before: found only at the first save, `every` rounds in."""
    X, y, c = federated
    est = PartialPersonalizedClassifier(**PARAMS, callbacks=[Rounds(), Checkpoint(read_only_folder, every=3)])
    with pytest.raises(ValueError, match=f"Checkpoint cannot write to '{read_only_folder}'"):
        est.fit(X, y, client_ids=c)
    assert est.callbacks_[0].ran_ == []


# ---------------------------------------------------------------- item 7: one run per folder
EVENTS = {"started": threading.Event(), "go": threading.Event()}  # callbacks are cloned: no events as params


class Hold(Callback):
    """Waits in round 1 until ``EVENTS["go"]`` is set, after setting ``EVENTS["started"]``."""

    def on_round_end(self, estimator, record):
        if record["round"] == 1:
            EVENTS["started"].set()
            assert EVENTS["go"].wait(300), "the test never let the first fit go on"


def test_a_second_fit_in_another_thread_is_refused_before_its_first_round(federated, tmp_path):
    """Before: both fits wrote to the folder, and each one's pruning deleted the other's files."""
    started, go, outcome = EVENTS["started"], EVENTS["go"], {}
    started.clear()
    go.clear()

    def first():
        try:
            outcome["first"] = fit(federated, tmp_path, Hold(), every=1, keep=2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["first"] = exc

    thread = threading.Thread(target=first, name="first-fit")
    thread.start()
    try:
        assert started.wait(300)
        X, y, c = federated
        second = PartialPersonalizedClassifier(**PARAMS, callbacks=[Rounds(), Checkpoint(tmp_path, every=1)])
        with pytest.raises(FolderInUseError, match=r"in use by a fit checkpointing every 1 rounds \(process "
                                                   rf"{os.getpid()} .*thread 'first-fit'.*another thread"):
            second.fit(X, y, client_ids=c)
        assert second.callbacks_[0].ran_ == []
    finally:
        go.set()
        thread.join(300)
    first_fit = outcome["first"]
    assert isinstance(first_fit, PartialPersonalizedClassifier), first_fit
    assert names(tmp_path) == ["round-000009.ckpt", "round-000008.ckpt"]
    # the first fit is over: the folder is free again, here too
    again = fit(federated, tmp_path, every=1)
    assert again.callbacks_[-1].resumed_from_.endswith("round-000009.ckpt")


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from pfedest import Callback, Checkpoint, PartialPersonalizedClassifier

    class Wait(Callback):  # in round 2, before Checkpoint (which runs last) saves it
        def on_round_end(self, estimator, record):
            if record["round"] == 2:
                Path(sys.argv[2]).write_text("ready")
                while not Path(sys.argv[3]).exists():
                    time.sleep(0.05)

    d = np.load(sys.argv[1])
    est = PartialPersonalizedClassifier(**{params!r}, callbacks=[Wait(), Checkpoint(sys.argv[4], every=1)])
    est.fit(d["X"], d["y"], client_ids=d["c"])
""")


def test_a_second_process_is_refused_and_a_killed_one_frees_the_folder(federated, tmp_path):
    X, y, c = federated
    np.savez(tmp_path / "data.npz", X=X, y=y, c=c)
    script = tmp_path / "hold.py"
    script.write_text(HOLDER.format(params=PARAMS))
    folder, ready, go = tmp_path / "ckpt", tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data.npz"), str(ready), str(go),
                               str(folder)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        est = PartialPersonalizedClassifier(**PARAMS, callbacks=[Rounds(), Checkpoint(folder, every=1)])
        with pytest.raises(FolderInUseError, match=rf"in use by .*\(process {holder.pid} on "):
            est.fit(X, y, client_ids=c)
        assert est.callbacks_[0].ran_ == []
        holder.send_signal(signal.SIGKILL)  # round 1 saved, round 2 not; the OS lets its lock go
        holder.wait(60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(60)
    assert names(folder) == ["round-000001.ckpt"]
    resumed = fit(federated, folder, every=1)
    assert resumed.callbacks_[-1].resumed_from_.endswith("round-000001.ckpt")
    assert resumed.callbacks_[0].ran_ == list(range(2, 10))


def test_pruning_deletes_only_the_runs_own_files(federated, tmp_path):
    """Before: a second run's first save deleted the older run's files, and its own new one."""
    first = fit(federated, tmp_path, every=4, keep=2)
    assert names(tmp_path) == ["round-000008.ckpt", "round-000004.ckpt"]
    second = fit(federated, tmp_path, every=3, keep=1, resume=False)
    assert second.callbacks_[-1].run_id_ != first.callbacks_[-1].run_id_
    assert names(tmp_path) == ["round-000009.ckpt", "round-000008.ckpt", "round-000004.ckpt"]
    owners = read_owners(tmp_path)
    assert owners["round-000009.ckpt"] == second.callbacks_[-1].run_id_
    assert owners["round-000004.ckpt"] == owners["round-000008.ckpt"] == first.callbacks_[-1].run_id_
    # a file written before owners were recorded (or by hand) is nobody's: never pruned
    save_checkpoint({"round": 100}, tmp_path / "round-000100.ckpt")
    third = fit(federated, tmp_path, every=9, keep=1, resume=False)
    assert names(tmp_path) == ["round-000100.ckpt", "round-000009.ckpt", "round-000008.ckpt", "round-000004.ckpt"]
    assert read_owners(tmp_path)["round-000009.ckpt"] == third.callbacks_[-1].run_id_
    assert "round-000100.ckpt" not in read_owners(tmp_path)


def test_a_resumed_run_prunes_the_files_it_wrote_before_the_interruption(federated, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(federated, tmp_path, CrashAt(5), every=2, keep=2)
    crashed_run = set(read_owners(tmp_path).values())
    resumed = fit(federated, tmp_path, every=2, keep=2)
    assert {resumed.callbacks_[-1].run_id_} == crashed_run
    assert names(tmp_path) == ["round-000008.ckpt", "round-000006.ckpt"]


def test_a_failed_fit_holds_the_folder_until_its_estimator_goes_or_its_thread_fits_again(federated, tmp_path):
    X, y, c = federated
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=[CrashAt(3), Checkpoint(tmp_path, every=1)])
    with pytest.raises(KeyboardInterrupt):  # no on_train_end: the lock stays with the failed fit
        crashing.fit(X, y, client_ids=c)
    assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()  # the note says who holds it
    refused = []
    other = threading.Thread(target=lambda: refused.append(FolderLock(tmp_path, LOCK_FILE).try_acquire(Rounds())))
    other.start()
    other.join()
    assert refused == [False]  # another thread is kept out while the failed fit's estimator exists
    del crashing
    gc.collect()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # let go with it
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=[CrashAt(3), Checkpoint(tmp_path, every=1)])
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    est = fit(federated, tmp_path, every=1)  # the failed fit's own thread takes the folder over
    assert est.callbacks_[-1].resumed_from_.endswith("round-000002.ckpt")
    assert (tmp_path / LOCK_FILE).read_text() == ""  # let go at the end of the fit
