"""CUDA: training stays on the GPU, results come back as NumPy, models load on a CPU-only machine."""

import pickle

import numpy as np
import pytest
import torch

from pfedest import Checkpoint, PartialPersonalizedClassifier

from test_checkpoint import CrashAt  # raises at the end of a round, before Checkpoint saves it

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_auto_device_trains_on_the_gpu(federated, engine):
    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=3, engine=engine, random_state=0).fit(X, y, client_ids=c)
    assert est.device_.type == "cuda"
    assert all(v.is_cuda for v in est.shared_params_.values())
    assert all(v.is_cuda for v in est.personal_params_.values())
    proba = est.predict_proba(X, client_ids=c)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(X), 3)


def test_gpu_and_cpu_runs_agree(federated):
    X, y, c = federated
    gpu = PartialPersonalizedClassifier(n_rounds=3, device="cuda", random_state=0).fit(X, y, client_ids=c)
    cpu = PartialPersonalizedClassifier(n_rounds=3, device="cpu", random_state=0).fit(X, y, client_ids=c)
    for k in cpu.shared_params_:
        torch.testing.assert_close(gpu.shared_params_[k].cpu(), cpu.shared_params_[k], rtol=1e-3, atol=1e-4)


def test_pickle_holds_cpu_tensors(federated):
    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=2, device="cuda", random_state=0).fit(X, y, client_ids=c)
    state = est.__getstate__()
    assert all(not v.is_cuda for v in state["shared_params_"].values())
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(loaded.predict_proba(X, client_ids=c), est.predict_proba(X, client_ids=c), rtol=1e-5)


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu(federated, tmp_path):
    X, y, c = federated
    params = dict(n_rounds=6, clients_per_round=3, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        PartialPersonalizedClassifier(**params, device="cuda", callbacks=[Checkpoint(tmp_path, every=2), CrashAt(5)]).fit(
            X, y, client_ids=c)
    reference = PartialPersonalizedClassifier(**params, device="cuda").fit(X, y, client_ids=c)
    resumed = PartialPersonalizedClassifier(**params, device="cpu", callbacks=[Checkpoint(tmp_path, every=2)]).fit(
        X, y, client_ids=c)
    assert resumed.callbacks_[0].resumed_from_.endswith("round-000004.ckpt") and resumed.device_.type == "cpu"
    assert resumed.history_[:, "clients"] == reference.history_[:, "clients"]
    for k in reference.shared_params_:  # float rounding differs between the devices: test_gpu_and_cpu_runs_agree's tolerance
        torch.testing.assert_close(resumed.shared_params_[k], reference.shared_params_[k].cpu(), rtol=1e-3, atol=1e-4)
    for k in reference.personal_params_:
        torch.testing.assert_close(resumed.personal_params_[k], reference.personal_params_[k].cpu(), rtol=1e-3, atol=1e-4)


def test_compiled_rounds_on_cuda_agree_with_eager_ones(federated):
    """compile=True on the GPU (bucketed chunk sizes, draws made on the device) trains the eager model."""
    X, y, c = federated
    params = dict(n_rounds=3, tol=None, engine="vmap", device="cuda", random_state=0)
    eager = PartialPersonalizedClassifier(**params, compile=False).fit(X, y, client_ids=c)
    compiled = PartialPersonalizedClassifier(**params, compile=True).fit(X, y, client_ids=c)
    assert compiled.compile_ and not eager.compile_
    for k in eager.shared_params_:
        torch.testing.assert_close(compiled.shared_params_[k], eager.shared_params_[k], rtol=1e-4, atol=1e-5)
    for k in eager.personal_params_:
        torch.testing.assert_close(compiled.personal_params_[k], eager.personal_params_[k], rtol=1e-4, atol=1e-5)


def test_bf16_on_cuda_stays_within_its_tolerance(federated):
    X, y, c = federated
    params = dict(n_rounds=1, tol=None, engine="vmap", device="cuda", random_state=0)
    fp32 = PartialPersonalizedClassifier(**params).fit(X, y, client_ids=c)
    bf16 = PartialPersonalizedClassifier(**params, precision="bf16").fit(X, y, client_ids=c)
    for k in fp32.shared_params_:
        diff = float((bf16.shared_params_[k] - fp32.shared_params_[k]).norm() / fp32.shared_params_[k].norm())
        assert diff < 1e-2
