"""Checkpoints: atomic, checksummed, weights-only files; a killed fit resumes bit-identically."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pfedest import Callback, Checkpoint, HeadSplit, PartialPersonalizedClassifier
from pfedest.checkpoint import (MAGIC, CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                save_checkpoint)
from pfedest.nn.modules import MLP
from pfedest.core.schedules import ConstantLR
from pfedest.fit_state import describe_setting, training_settings
from pfedest.core.server import ServerOptimizer
from pfedest.settings import RESUME_CHECKED, SETTINGS

# On the CPU everywhere, so that bit-identical resumes are checked on GPU machines too; a checkpoint
# written on CUDA and resumed on the CPU is tests/test_cuda.py's.
PARAMS = dict(n_rounds=6, clients_per_round=3, pretrain_rounds=2, finetune_epochs=1, server_optimizer="adam",
              server_lr=0.01, device="cpu", random_state=0)


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


@pytest.fixture(scope="module")
def crashed(federated, tmp_path_factory):
    """A folder with the checkpoints of a PARAMS fit killed in round 5 (the newest: round 4)."""
    directory = tmp_path_factory.mktemp("crashed")
    X, y, c = federated
    with pytest.raises(KeyboardInterrupt):
        PartialPersonalizedClassifier(**PARAMS, callbacks=[Checkpoint(directory, every=2), CrashAt(5)]).fit(
            X, y, client_ids=c)
    return directory


def copy_of(directory, tmp_path):
    """A copy to resume from: a resumed fit writes its own checkpoints there."""
    return shutil.copytree(directory, tmp_path / "copy")


def resume(federated, directory, **changed):
    X, y, c = federated
    est = PartialPersonalizedClassifier(**{**PARAMS, **changed}, callbacks=[Checkpoint(directory, every=2)])
    return est.fit(X, y, client_ids=c)


@pytest.mark.parametrize("changed, shown", [
    ({"lr": 0.05}, ["lr=0.3 in the checkpoint, 0.05 in this fit"]),
    ({"weighting": "uniform"}, ["weighting='samples' in the checkpoint, 'uniform' in this fit"]),
    ({"algorithm": "fedsim"}, ["algorithm='fedalt' in the checkpoint, 'fedsim' in this fit"]),
    ({"server_lr": 0.02, "lr_schedule": "step", "random_state": 1, "batch_size": 8, "clip_grad_norm": 1.0},
     ["batch_size=32 in the checkpoint, 8 in this fit", "clip_grad_norm=None in the checkpoint, 1.0 in this fit",
      "lr_schedule='ConstantLR()' in the checkpoint, 'StepLR(gamma=0.5, step_rounds=10)' in this fit",
      "random_state=0 in the checkpoint, 1 in this fit",
      "kind='adam', lr=0.01, momentum=0.0)\" in the checkpoint, \"ServerOptimizer(betas=[0.9, 0.999], eps=1e-08, "
      "kind='adam', lr=0.02, momentum=0.0)\" in this fit"]),
])
def test_resuming_with_other_settings_is_refused_naming_each(federated, crashed, tmp_path, changed, shown):
    with pytest.raises(CheckpointError, match="other settings") as refused:
        resume(federated, copy_of(crashed, tmp_path), **changed)
    message = str(refused.value)
    for text in shown:
        assert text in message
    assert message.count(" in the checkpoint, ") == len(shown)  # only what changed
    assert "Checkpoint(resume=False) or another directory" in message


def test_a_server_optimizer_by_name_or_by_object_resumes_alike(federated, crashed, tmp_path):
    # server_optimizer="adam", server_lr=0.01 (the crashed run's) and the same optimizer as an object
    est = resume(federated, copy_of(crashed, tmp_path), server_optimizer=ServerOptimizer("adam", lr=0.01),
                 server_lr=1.0)
    assert est.callbacks_[0].resumed_from_ is not None


def test_resuming_on_other_rows_is_refused(federated, crashed, tmp_path):
    X, y, c = federated
    changed = X.copy()
    changed[7, 2] += 1.0
    with pytest.raises(CheckpointError, match="same row counts but other values"):
        resume((changed, y, c), copy_of(crashed, tmp_path / "values"))
    dropped = np.flatnonzero(c == c[0])[0]  # one row fewer for the first row's client
    keep = np.arange(len(y)) != dropped
    with pytest.raises(CheckpointError, match=rf"other row counts for clients {c[0]}\)"):
        resume((X[keep], y[keep], c[keep]), copy_of(crashed, tmp_path / "counts"))


def test_resuming_on_another_engine_device_or_verbosity_is_accepted(federated, tmp_path):
    X, y, c = federated
    # Server SGD, not PARAMS' Adam: loop and vmap sum in other orders, and Adam turns such rounding
    # differences into +-lr steps on coordinates whose pseudo-gradient is near zero (on a 16-core
    # machine, 199 of 4096 weights ended up to 0.016 apart), which would hide what is compared here.
    # (vmap named: with 3 clients a round "auto" picks the loop on a CPU)
    params = {**PARAMS, "server_optimizer": "sgd", "server_lr": 1.0, "engine": "vmap"}
    with pytest.raises(KeyboardInterrupt):
        PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=2), CrashAt(5)]).fit(
            X, y, client_ids=c)
    reference = PartialPersonalizedClassifier(**params).fit(X, y, client_ids=c)
    assert reference.engine_ == "vmap"
    # the same mathematics, also where the split and schedule are spelled as objects
    resumed = PartialPersonalizedClassifier(**{**params, "engine": "loop", "device": "cpu", "verbose": 1,
                                               "max_clients_per_batch": 2, "split": HeadSplit(),
                                               "lr_schedule": ConstantLR()},
                                            callbacks=[Checkpoint(tmp_path, every=2)]).fit(X, y, client_ids=c)
    assert resumed.callbacks_[0].resumed_from_.endswith("round-000004.ckpt")
    assert resumed.engine_ == "loop" and resumed.device_.type == "cpu"
    for k, v in reference.shared_params_.items():
        torch.testing.assert_close(resumed.shared_params_[k], v, rtol=1e-4, atol=1e-5)
    for k, v in reference.personal_params_.items():
        torch.testing.assert_close(resumed.personal_params_[k], v, rtol=1e-4, atol=1e-5)
    assert resumed.history_[:, "clients"] == reference.history_[:, "clients"]


@pytest.mark.parametrize("damage", ["settings", "fit", "personal_init"])
def test_a_checkpoint_missing_an_entry_is_refused_naming_it(federated, crashed, tmp_path, damage):
    # re-checksummed by hand: the file is whole, its content is not what state_dict() writes
    directory = copy_of(crashed, tmp_path)
    newest = list_checkpoints(directory)[0]
    state = load_checkpoint(newest)
    meta = json.loads(state.pop("meta"))
    if damage in meta:
        del meta[damage]
    else:
        del state[damage]
    save_checkpoint({**state, "meta": json.dumps(meta)}, newest)
    with pytest.raises(CheckpointError, match=f"lacks {damage}"):
        resume(federated, directory)


def test_a_checkpoint_missing_a_tensor_is_refused(federated, crashed, tmp_path):
    directory = copy_of(crashed, tmp_path)
    newest = list_checkpoints(directory)[0]
    state = load_checkpoint(newest)
    state["shared"].pop(sorted(state["shared"])[0])
    save_checkpoint(state, newest)
    with pytest.raises(CheckpointError, match="for a model with parameters"):
        resume(federated, directory)


def test_the_personal_anchor_of_an_unseeded_fit_is_restored(federated, tmp_path):
    # personal_l2_target="init" pulls towards the first personal part, drawn anew by an unseeded fit
    X, y, c = federated
    params = {**PARAMS, "random_state": None, "personal_l2": 1.0, "personal_l2_target": "init"}
    crashing = PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=2), CrashAt(5)])
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    resumed = PartialPersonalizedClassifier(**params, callbacks=[Checkpoint(tmp_path, every=2)]).fit(
        X, y, client_ids=c)
    assert resumed.callbacks_[0].resumed_from_ is not None
    for k, v in crashing.state_dict()["personal_init"].items():
        assert torch.equal(resumed.state_dict()["personal_init"][k], v), k
    # the unseeded run's draws go on: round 5, redone after the crash, is the crashed run's round 5
    assert resumed.history_[4]["clients"] == crashing.history_[4]["clients"]
    assert resumed.history_[4]["train_loss"] == crashing.history_[4]["train_loss"]


def test_every_estimator_parameter_is_in_the_registry_and_resumes_check_the_ones_that_change_rounds():
    # a new parameter must be in the registry with a role, or resumes would ignore it silently
    params = set(PartialPersonalizedClassifier().get_params(deep=False))
    assert params == {s.name for s in SETTINGS}
    assert set(RESUME_CHECKED) == {s.name for s in SETTINGS if s.role in ("model", "training")}
    assert {"lr", "algorithm", "split", "random_state", "weighting"} <= set(RESUME_CHECKED)
    assert not {"engine", "device", "verbose", "n_rounds", "callbacks"} & set(RESUME_CHECKED)


def test_settings_are_described_the_same_in_every_process():
    def make():  # new objects each time, as a resumed process builds them
        return PartialPersonalizedClassifier(module=MLP(5, 3, (4,)), split=lambda name, p: "2" in name,
                                             lr_schedule=lambda r, n: 0.5, hidden_layer_sizes=(7,),
                                             random_state=np.random.RandomState(0), clients_per_round=1.0)

    settings = training_settings(make().get_params(deep=False))
    assert json.dumps(settings) == json.dumps(training_settings(make().get_params(deep=False)))
    assert "0x" not in json.dumps(settings)  # no memory address
    assert settings["module"] == "pfedest.nn.modules.MLP instance"
    assert settings["split"].startswith("FunctionSplit(func='") and settings["split"].endswith("<lambda>')")
    assert settings["lr_schedule"].endswith("<lambda>")
    assert settings["hidden_layer_sizes"] is None  # unused with a module
    assert settings["random_state"] == "RandomState"
    # one client, or all of them: the same number, not the same setting
    assert json.dumps(describe_setting(1)) != json.dumps(describe_setting(1.0))


def without_setting(directory, name):
    """``directory``'s newest checkpoint rewritten as if pfedest had not had the setting ``name``."""
    path, state = latest_checkpoint(directory)
    meta = json.loads(state["meta"])
    removed = meta["settings"].pop(name)
    save_checkpoint({**state, "meta": json.dumps(meta)}, path)
    return removed


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_its_default(federated, crashed, tmp_path):
    # checkpoints written before `precision` existed lack it: they trained in float32, its default
    directory = copy_of(crashed, tmp_path)
    assert without_setting(directory, "precision") == "fp32"
    assert resume(federated, directory).callbacks_[0].resumed_from_ is not None
    # a fit that changes the setting is still refused, naming the default the checkpoint trained with
    again = shutil.copytree(crashed, tmp_path / "again")
    without_setting(again, "precision")
    with pytest.raises(CheckpointError, match="precision='fp32' in the checkpoint, 'bf16' in this fit"):
        resume(federated, again, precision="bf16")
