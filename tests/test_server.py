"""Tests of pfedest.core.server: the weighted average of shared parameters."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.core.server import WeightedAverage

FAST = settings(max_examples=30, deadline=None, database=None)


def client_updates(n_clients, seed):
    g = torch.Generator().manual_seed(seed)
    updates = {"w": torch.randn(n_clients, 3, 2, generator=g, dtype=torch.float64),
               "b": torch.randn(n_clients, 4, generator=g, dtype=torch.float64)}
    weights = torch.rand(n_clients, generator=g, dtype=torch.float64) * 10 + 0.1
    shared = {"w": torch.randn(3, 2, generator=g, dtype=torch.float64),
              "b": torch.randn(4, generator=g, dtype=torch.float64)}
    return updates, weights, shared


def one_go_mean(updates, weights):
    return {k: (weights.view(-1, *[1] * (v.dim() - 1)) * v).sum(0) / weights.sum() for k, v in updates.items()}


@st.composite
def chunkings(draw):
    n = draw(st.integers(1, 12))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    return n, [0, *cuts, n]


@FAST
@given(chunking=chunkings(), seed=st.integers(0, 10_000), server_lr=st.sampled_from([1.0, 0.5, 0.1, 0.0]))
def test_chunked_average_equals_one_go(chunking, seed, server_lr):
    n, bounds = chunking
    updates, weights, shared = client_updates(n, seed)
    avg = WeightedAverage()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        avg.add({k: v[lo:hi] for k, v in updates.items()}, weights[lo:hi])
    out = avg.step(shared, server_lr=server_lr)
    mean = one_go_mean(updates, weights)
    assert set(out) == set(shared)
    for k in shared:
        expected = shared[k] + server_lr * (mean[k] - shared[k])
        assert torch.allclose(out[k], expected, rtol=1e-10, atol=1e-12)


def test_server_lr_one_is_the_weighted_mean():
    avg = WeightedAverage()
    avg.add({"w": torch.tensor([[1.0, 0.0], [3.0, 4.0]])}, torch.tensor([1.0, 3.0]))
    out = avg.step({"w": torch.tensor([100.0, -100.0])}, server_lr=1.0)
    assert torch.allclose(out["w"], torch.tensor([2.5, 3.0]))


def test_server_lr_half_moves_halfway():
    avg = WeightedAverage()
    avg.add({"w": torch.tensor([[2.0], [6.0]])}, torch.tensor([1.0, 1.0]))
    out = avg.step({"w": torch.tensor([0.0])}, server_lr=0.5)
    assert torch.allclose(out["w"], torch.tensor([2.0]))  # halfway from 0 to the mean 4


def test_equal_weights_give_plain_mean_and_scale_invariance():
    updates, _, shared = client_updates(5, 0)
    results = []
    for scale in (1.0, 7.0):
        avg = WeightedAverage()
        avg.add(updates, torch.full((5,), scale, dtype=torch.float64))
        results.append(avg.step(shared, 1.0))
    for k in updates:
        assert torch.allclose(results[0][k], updates[k].mean(0))
        assert torch.allclose(results[1][k], updates[k].mean(0))


def test_float32_count_weights_on_float32_parameters():
    # the engine passes client row counts as float32 weights
    counts = np.array([3, 1])
    avg = WeightedAverage()
    avg.add({"w": torch.tensor([[1.0], [5.0]])}, torch.as_tensor(counts, dtype=torch.float32))
    out = avg.step({"w": torch.tensor([0.0])}, 1.0)
    assert out["w"].dtype == torch.float32
    assert torch.allclose(out["w"], torch.tensor([2.0]))


def test_zero_weight_client_is_ignored():
    avg = WeightedAverage()
    avg.add({"w": torch.tensor([[1.0], [1000.0]])}, torch.tensor([2.0, 0.0]))
    assert torch.allclose(avg.step({"w": torch.tensor([0.0])}, 1.0)["w"], torch.tensor([1.0]))


def test_no_client_added_returns_input():
    shared = {"w": torch.randn(3, 2), "b": torch.randn(4)}
    out = WeightedAverage().step(shared, server_lr=1.0)
    assert set(out) == set(shared)
    for k in shared:
        assert torch.equal(out[k], shared[k])
    out["w"] = None  # a new dict: the caller's dict is untouched
    assert shared["w"] is not None


def test_one_fedadam_step_matches_a_hand_computation():
    from pfedest.core.server import ServerOptimizer

    u = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    mean = {"w": torch.tensor([0.5, -1.0], dtype=torch.float64)}
    opt = ServerOptimizer("adam", lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    new = opt.step(u, mean)
    g = np.array([0.5, -1.0])  # u - mean
    m = 0.1 * g
    v = 0.01 * g ** 2
    expected = np.array([1.0, -2.0]) - 0.01 * (m / 0.1) / (np.sqrt(v / 0.01) + 1e-3)
    np.testing.assert_allclose(new["w"].numpy(), expected, rtol=1e-12)
    # second step uses the stored moments
    new2 = opt.step(new, mean)
    g2 = new["w"].numpy() - np.array([0.5, -1.0])
    m2 = 0.9 * m + 0.1 * g2
    v2 = 0.99 * v + 0.01 * g2 ** 2
    expected2 = new["w"].numpy() - 0.01 * (m2 / (1 - 0.9 ** 2)) / (np.sqrt(v2 / (1 - 0.99 ** 2)) + 1e-3)
    np.testing.assert_allclose(new2["w"].numpy(), expected2, rtol=1e-12)


def test_server_momentum_accumulates_pseudo_gradients():
    from pfedest.core.server import ServerOptimizer

    opt = ServerOptimizer("sgd", lr=0.5, momentum=0.9)
    u = {"w": torch.tensor([1.0], dtype=torch.float64)}
    mean = {"w": torch.tensor([0.0], dtype=torch.float64)}
    u1 = opt.step(u, mean)  # b = 1, u = 1 - 0.5
    assert u1["w"].item() == 0.5
    u2 = opt.step(u1, mean)  # b = 0.9 * 1 + 0.5 = 1.4, u = 0.5 - 0.7
    assert u2["w"].item() == pytest.approx(-0.2)
    state = opt.state_dict()
    clone = ServerOptimizer("sgd", lr=0.5, momentum=0.9)
    clone.load_state_dict(state)
    assert clone.step(u2, mean)["w"].item() == opt.step(u2, mean)["w"].item()


def test_unknown_server_optimizer_is_refused():
    from pfedest.core.server import ServerOptimizer

    with pytest.raises(ValueError, match="sgd"):
        ServerOptimizer("rmsprop")
