"""Tests of pfedest.core.compiling: compile="auto", bucketed chunk sizes, one cache per compiled step."""

import math

import numpy as np
import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters

from pfedest.core import compiling
from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.core.compiling import AUTO_COMPILE_MIN_STEPS, bucket_size, choose_compile, pad_clients
from pfedest.core.engine import make_engine
from pfedest.core.model import linear_loss

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@settings(max_examples=200, deadline=None, database=None)
@given(n=st.integers(1, 10**6))
def test_bucket_holds_the_chunk_with_at_most_a_quarter_of_padding(n):
    b = bucket_size(n)
    assert n <= b <= max(8, math.ceil(1.25 * n))
    assert bucket_size(b) == b  # a bucket is its own bucket: full chunks of a bucket size are not padded


def test_buckets_are_few_per_octave():
    for top in (100, 1000, 10_000):
        assert len({bucket_size(n) for n in range(1, top + 1)}) <= 4 * math.log2(top) + 8
    assert sorted({bucket_size(n) for n in range(1, 65)}) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32,
                                                              40, 48, 56, 64]


def test_auto_compiles_only_long_fits_on_cuda_with_vmap():
    assert choose_compile("auto", "vmap", CUDA, AUTO_COMPILE_MIN_STEPS)
    assert not choose_compile("auto", "vmap", CUDA, AUTO_COMPILE_MIN_STEPS - 1)
    assert not choose_compile("auto", "loop", CUDA, 10**9)
    assert not choose_compile("auto", "vmap", CPU, 10**9)
    assert choose_compile(True, "vmap", CPU, 1) and not choose_compile(True, "loop", CPU, 10**9)
    assert not choose_compile(False, "vmap", CUDA, 10**9)


def test_padding_trains_nothing():
    """Padded clients change nothing and the real clients' results are those of the unpadded chunk."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, generator=g), torch.randn(40, generator=g)
    loss, engine = linear_loss(X, y), make_engine("vmap", linear_loss(X, y), {"w": torch.zeros(3)})
    idx = torch.randint(0, 40, (3, 4, 5), generator=g)
    streams = {"personal": (idx, torch.ones(3, 4, 5)), "shared": (idx.flip(1), torch.ones(3, 4, 5))}
    personal = {"b": torch.randn(3, generator=g)}
    args = (ALGORITHMS["fedalt"], {"w": torch.randn(3, generator=g)})
    plain = engine.local_updates(*args, personal, streams, StepSizes(0.1, 0.1))
    padded_personal, padded_streams = pad_clients(personal, streams, 7)
    padded = engine.local_updates(*args, padded_personal, padded_streams, StepSizes(0.1, 0.1))
    torch.testing.assert_close(padded[1]["b"][:3], plain[1]["b"])
    torch.testing.assert_close(padded[0]["w"][:3], plain[0]["w"])
    assert torch.equal(padded[1]["b"][3:], personal["b"][:1].expand(4))  # the padding did not move
    assert float(padded[2][1][3:].sum()) == 0.0  # and counted no row


@pytest.mark.slow
def test_a_compiled_engine_compiles_a_bounded_number_of_shapes(monkeypatch):
    """Chunks of 1..12 clients compile one graph per bucket (10 of them, past dynamo's recompile
    limit of 8 per function, without falling back to eager) and give the loop engine's results."""
    monkeypatch.setitem(compiling.COMPILE_OPTIONS, "backend", "eager")  # dynamo's graphs, no inductor: fast
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(200, 3, generator=g), torch.randn(200, generator=g)
    loss, shared = linear_loss(X, y), {"w": torch.randn(3, generator=g)}
    compiled, loop = make_engine("vmap", loss, shared, compile=True), make_engine("loop", loss, shared)
    sizes = range(1, 13)
    for n in sizes:  # FedSim, one step: one kind of step (u enters unbatched, both blocks trained)
        streams = {"joint": (torch.randint(0, 200, (n, 1, 4), generator=g), torch.ones(n, 1, 4))}
        personal = {"b": torch.randn(n, generator=g)}
        got = compiled.local_updates(ALGORITHMS["fedsim"], shared, personal, streams, StepSizes(0.1, 0.1))
        want = loop.local_updates(ALGORITHMS["fedsim"], shared, personal, streams, StepSizes(0.1, 0.1))
        torch.testing.assert_close(got[0]["w"], want[0]["w"])
        torch.testing.assert_close(got[1]["b"], want[1]["b"])
    buckets = len({bucket_size(n) for n in sizes})
    assert buckets == 10 < len(sizes)
    assert counters["stats"]["unique_graphs"] == buckets
    assert counters["frames"]["ok"] == counters["frames"]["total"] == buckets


def test_auto_does_not_compile_on_the_cpu(federated):
    from pfedest import PartialPersonalizedClassifier

    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=2, tol=None, engine="vmap", device="cpu", random_state=0)
    est.fit(X, y, client_ids=c)
    assert est.compile is not True and est.compile_ is False
