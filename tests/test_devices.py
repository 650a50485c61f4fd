"""Tests of pfedest.core.devices: resolving ``device=`` and moving state."""

import collections
import warnings

import pytest
import torch

from pfedest.core.devices import resolve_device, to_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
mps = getattr(torch.backends, "mps", None)
no_accelerator = pytest.mark.skipif(torch.cuda.is_available() or (mps is not None and mps.is_available()),
                                    reason="needs a machine without CUDA or MPS")


@no_accelerator
def test_auto_is_cpu_here():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cpu") == torch.device("cpu")
        assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "auto:0", "", "cpu:x", 2.5])
def test_bad_device_raises_value_error(bad):
    with pytest.raises(ValueError, match="device must be"):
        resolve_device(bad)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_warns_and_falls_back(device):
    with pytest.warns(UserWarning, match="not available"):
        assert resolve_device(device) == torch.device("cpu")


def test_cuda_kept_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.skipif(mps is not None and mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_mps_warns():
    with pytest.warns(UserWarning):
        assert resolve_device("mps") == torch.device("cpu")


def test_to_device_nested():
    meta = torch.device("meta")
    obj = {"a": torch.zeros(2), "b": [torch.ones(3), (torch.arange(4), "x", 3)], "c": {"d": None, "e": 1.5}}
    out = to_device(obj, meta)
    assert out["a"].device == meta and out["a"].shape == (2,)
    assert isinstance(out["b"], list) and out["b"][0].device == meta
    assert isinstance(out["b"][1], tuple)
    assert out["b"][1][0].device == meta and out["b"][1][0].dtype == torch.int64
    assert out["b"][1][1:] == ("x", 3)
    assert out["c"] == {"d": None, "e": 1.5}
    assert obj["a"].device == torch.device("cpu")  # input not modified


def test_to_device_cpu_keeps_values():
    obj = {"w": [torch.randn(3, 2)], "n": 4}
    out = to_device(obj, torch.device("cpu"))
    assert torch.equal(out["w"][0], obj["w"][0]) and out["n"] == 4


def test_to_device_non_tensor_passthrough():
    assert to_device(5, torch.device("meta")) == 5
    assert to_device("s", torch.device("meta")) == "s"


def test_to_device_namedtuple():
    Pair = collections.namedtuple("Pair", "x y")
    out = to_device(Pair(torch.zeros(1), 2), torch.device("meta"))
    assert isinstance(out, Pair) and out.x.device == torch.device("meta") and out.y == 2
