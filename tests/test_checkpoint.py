"""Checkpoints: atomic, checksummed, weights-only files; a killed fit resumes bit-identically."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pfedest import Callback, Checkpoint, PartialPersonalizedClassifier
from pfedest.checkpoint import (MAGIC, CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                save_checkpoint)

PARAMS = dict(n_rounds=6, clients_per_round=3, pretrain_rounds=2, finetune_epochs=1, server_optimizer="adam",
              server_lr=0.01, random_state=0)


class CrashAt(Callback):
    def __init__(self, round_number=0):
        self.round_number = round_number

    def on_round_end(self, estimator, record):
        if record["round"] == self.round_number:
            raise KeyboardInterrupt("simulated crash")


def same_model(a, b):
    for k in a.shared_params_:
        assert torch.equal(a.shared_params_[k], b.shared_params_[k]), k
    for k in a.personal_params_:
        assert torch.equal(a.personal_params_[k], b.personal_params_[k]), k
    assert a.history_[:, "train_loss"] == b.history_[:, "train_loss"]
    assert a.history_[:, "clients"] == b.history_[:, "clients"]


def test_an_interrupted_fit_resumes_to_the_same_model(federated, tmp_path):
    X, y, c = federated
    reference = PartialPersonalizedClassifier(**PARAMS).fit(X, y, client_ids=c)
    crashing = PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path, every=2), CrashAt(6)])
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    # the crash came from a callback before Checkpoint's turn in round 6 (Checkpoint runs last)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-000004.ckpt", "round-000002.ckpt"]
    resumed = PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path, every=2)])
    resumed.fit(X, y, client_ids=c)
    assert resumed.callbacks_[0].resumed_from_.endswith("round-000004.ckpt")
    same_model(reference, resumed)


def test_a_sigkilled_process_resumes_bit_identically(federated, tmp_path):
    X, y, c = federated
    np.savez(tmp_path / "data.npz", X=X, y=y, c=c)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, numpy as np, torch
        from pfedest import Callback, Checkpoint, PartialPersonalizedClassifier
        class KillAt(Callback):
            def __init__(self, round_number=0):
                self.round_number = round_number
            def on_round_end(self, estimator, record):
                if record["round"] == self.round_number:
                    os.kill(os.getpid(), signal.SIGKILL)
        d = np.load({str(tmp_path / 'data.npz')!r})
        kill = int(sys.argv[1])
        callbacks = [Checkpoint({str(tmp_path / 'ckpt')!r}, every=3)] + ([KillAt(kill)] if kill else [])
        est = PartialPersonalizedClassifier(**{PARAMS!r}, callbacks=callbacks)
        est.fit(d["X"], d["y"], client_ids=d["c"])
        torch.save({{"shared": est.shared_params_, "personal": est.personal_params_,
                    "loss": est.history_[:, "train_loss"]}}, {str(tmp_path / 'result.pt')!r})
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), "7"], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (tmp_path / "result.pt").exists()
    finished = subprocess.run([sys.executable, str(script), "0"], env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    resumed = torch.load(tmp_path / "result.pt", weights_only=True)
    torch.set_num_threads(1)
    reference = PartialPersonalizedClassifier(**PARAMS).fit(X, y, client_ids=c)
    for k, v in reference.shared_params_.items():
        assert torch.equal(resumed["shared"][k], v), k
    for k, v in reference.personal_params_.items():
        assert torch.equal(resumed["personal"][k], v), k
    assert resumed["loss"] == reference.history_[:, "train_loss"]


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(federated, tmp_path):
    X, y, c = federated
    est = PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path, every=2, keep=3)])
    est.fit(X, y, client_ids=c)
    newest, previous = list_checkpoints(tmp_path)[:2]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="truncated or corrupted"):
        path, _ = latest_checkpoint(tmp_path)
    assert path == previous
    flipped = bytearray(previous.read_bytes())
    flipped[-10] ^= 0xFF
    previous.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(previous)


def test_checkpoints_of_another_version_or_model_are_refused(federated, tmp_path):
    X, y, c = federated
    PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path, every=4)]).fit(X, y, client_ids=c)
    path = list_checkpoints(tmp_path)[0]
    state = load_checkpoint(path)
    meta = json.loads(state["meta"])
    meta["pfedest_version"] = "0.0.1"
    save_checkpoint({**state, "meta": json.dumps(meta)}, path)
    with pytest.raises(CheckpointError, match="written by pfedest 0.0.1"):
        PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path)]).fit(X, y, client_ids=c)
    other = tmp_path / "other"
    PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(other, every=4)]).fit(X, y, client_ids=c)
    wider = PartialPersonalizedClassifier(**PARAMS, hidden_layer_sizes=(32,), callbacks=[Checkpoint(other)])
    with pytest.raises(CheckpointError, match="for a model with parameters"):
        wider.fit(X, y, client_ids=c)
    longer = PartialPersonalizedClassifier(**{**PARAMS, "n_rounds": 9}, callbacks=[Checkpoint(other)])
    with pytest.raises(CheckpointError, match="training plan"):
        longer.fit(X, y, client_ids=c)


def test_files_are_weights_only_and_written_atomically(tmp_path):
    path = save_checkpoint({"w": torch.ones(3), "meta": "{}"}, tmp_path / "round-000001.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["round-000001.ckpt"]  # no temporary file left
    assert path.read_bytes().startswith(MAGIC)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    payload = buffer.getvalue()
    bad = tmp_path / "round-000002.ckpt"
    bad.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not a pfedest checkpoint"):
        (tmp_path / "junk").write_bytes(b"hello")
        load_checkpoint(tmp_path / "junk")


def test_keep_limits_the_number_of_files(federated, tmp_path):
    X, y, c = federated
    PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(tmp_path, every=1, keep=2)]).fit(
        X, y, client_ids=c)
    assert len(list_checkpoints(tmp_path)) == 2
