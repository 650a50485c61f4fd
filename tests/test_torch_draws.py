"""Tests of pfedest.core.torch_draws: the keyed draws in torch equal NumPy's, bit for bit."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.core import rounds
from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.core.engine import make_engine
from pfedest.core.model import linear_loss
from pfedest.core.rounds import draw_batches, run_round
from pfedest.core.sampling import RoundKeys
from pfedest.core.torch_draws import client_keys, draw_batches_torch, minibatch_stream_torch, use_torch_draws

FAST = settings(max_examples=40, deadline=None, database=None)
CPU = torch.device("cpu")
word = st.integers(0, 2**64 - 1)


def devices():
    return [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@FAST
@given(seed=word, round_number=word, stream=st.integers(0, 2**64 - 1),
       clients=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=20))
def test_client_keys_are_roundkeys_words(seed, round_number, stream, clients):
    keys = RoundKeys(seed, round_number)
    for device in devices():
        got = client_keys(keys, stream, torch.tensor(clients, device=device)).cpu().numpy().view(np.uint64)
        np.testing.assert_array_equal(got, keys.uniforms(stream, clients).keys)


@FAST
@given(seed=word, round_number=st.integers(0, 10**6), data=st.data(),
       batch=st.integers(1, 9), steps=st.one_of(st.none(), st.integers(1, 12)),
       algorithm=st.sampled_from(["fedalt", "fedsim", "personal_only"]))
def test_draws_equal_numpy(seed, round_number, data, batch, steps, algorithm):
    n = data.draw(st.integers(1, 12))
    counts = np.array(data.draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)))
    clients = np.array(sorted(data.draw(st.sets(st.integers(0, 2**40), min_size=n, max_size=n))))
    alg = ALGORITHMS[algorithm]
    stream_steps = {name: steps for name in alg.streams}
    ref = draw_batches(alg, RoundKeys(seed, round_number), counts, batch, stream_steps, keys=clients)
    for device in devices():
        got = draw_batches_torch(alg.streams, RoundKeys(seed, round_number), counts, batch, stream_steps, clients,
                                 device)
        for name, (idx, mask) in ref.items():
            assert got[name][0].dtype == torch.int64 and got[name][1].dtype == torch.float32
            np.testing.assert_array_equal(got[name][0].cpu().numpy(), idx)
            np.testing.assert_array_equal(got[name][1].cpu().numpy(), mask)


def test_draws_of_a_client_do_not_depend_on_the_others():
    keys, counts = RoundKeys(5, 3), np.array([7, 30, 12])
    together = minibatch_stream_torch(client_keys(keys, 1, torch.tensor([2, 8, 40])), counts, 4, 6)
    alone = minibatch_stream_torch(client_keys(keys, 1, torch.tensor([8])), counts[1:2], 4, 6)
    assert torch.equal(together[0][1], alone[0][0]) and torch.equal(together[1][1], alone[1][0])


def test_only_accelerators_draw_in_torch():
    assert not use_torch_draws(CPU) and use_torch_draws(torch.device("cuda"))


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_a_round_with_torch_draws_equals_one_with_numpy_draws(monkeypatch, algorithm):
    """The round code takes the drawn tensors as it takes NumPy arrays: same state after it."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(60, 3, generator=g), torch.randn(60, generator=g)
    counts, offsets = np.array([10, 25, 5, 20]), np.array([0, 10, 35, 40])
    loss = linear_loss(X, y)
    results = []
    for torch_draws in (False, True):
        monkeypatch.setattr(rounds, "use_torch_draws", lambda device, on=torch_draws: on)
        shared, personal = {"w": torch.zeros(3)}, {"b": torch.zeros(4)}
        for r in range(3):
            shared, _ = run_round(algorithm=ALGORITHMS[algorithm], engine=make_engine("vmap", loss, shared),
                                  shared=shared, personal_state=personal, counts=counts, offsets=offsets,
                                  sampled=np.array([0, 1, 3]), rng=RoundKeys(9, r + 1), batch_size=4,
                                  steps={"personal": 3, "shared": None, "joint": 2}, lr=StepSizes(0.05, 0.05),
                                  chunk_size=2)
        results.append((shared, personal))
    assert torch.equal(results[0][0]["w"], results[1][0]["w"]) and torch.equal(results[0][1]["b"], results[1][1]["b"])
    assert not torch.equal(results[0][1]["b"], torch.zeros(4))
