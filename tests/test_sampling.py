"""Tests of pfedest.core.sampling: client sampling and minibatch streams."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.core.sampling import ClientUniforms, RoundKeys, minibatch_stream, sample_clients

FAST = settings(max_examples=30, deadline=None, database=None)

counts_st = st.lists(st.integers(1, 100), min_size=1, max_size=50)


def source(seed, n_clients, keyed):
    """The old generator, or keyed uniforms of clients 0..n-1 in round 1, stream 0."""
    if keyed:
        return RoundKeys(seed, 1).uniforms(0, np.arange(n_clients))
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- sample_clients


@FAST
@given(eligible=st.lists(st.integers(0, 1000), min_size=1, max_size=60, unique=True).map(np.array),
       n=st.integers(0, 80), seed=st.integers(0, 2**32 - 1))
def test_sample_clients_properties(eligible, n, seed):
    out = sample_clients(np.random.default_rng(seed), eligible, n)
    assert len(out) == min(n, len(eligible))
    assert np.all(np.diff(out) > 0)  # sorted and distinct
    assert set(out.tolist()) <= set(eligible.tolist())
    again = sample_clients(np.random.default_rng(seed), eligible, n)
    np.testing.assert_array_equal(out, again)


def test_sample_clients_all_when_n_large():
    eligible = np.array([9, 2, 5, 7])
    for n in (4, 5, 100):
        np.testing.assert_array_equal(sample_clients(np.random.default_rng(0), eligible, n), [2, 5, 7, 9])


def test_sample_clients_full_participation_draws_nothing():
    rng = np.random.default_rng(3)
    sample_clients(rng, np.arange(10), 10)
    assert rng.random() == np.random.default_rng(3).random()


def test_sample_clients_varies_with_seed_and_is_uniform_ish():
    eligible = np.arange(20)
    draws = {tuple(sample_clients(np.random.default_rng(s), eligible, 5)) for s in range(20)}
    assert len(draws) > 10
    rng = np.random.default_rng(0)
    hits = np.zeros(20)
    for _ in range(2000):
        hits[sample_clients(rng, eligible, 5)] += 1
    # each client is drawn with probability 1/4: 500 expected, sd ~19
    assert hits.min() > 400 and hits.max() < 600


# --------------------------------------------------------------------------- minibatch_stream, epoch mode


@pytest.mark.parametrize("keyed", [False, True])
@FAST
@given(counts=counts_st, batch=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_epoch_mode_is_one_permutation_per_client(keyed, counts, batch, seed):
    counts = np.array(counts)
    idx, mask = minibatch_stream(source(seed, len(counts), keyed), counts, batch, None)
    n_steps = math.ceil(counts.max() / batch)
    assert idx.shape == mask.shape == (len(counts), n_steps, batch)
    assert idx.dtype == np.int64 and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    for i, c in enumerate(counts):
        real = mask[i].astype(bool)
        # the first c positions (step-major) are real, the rest padding
        np.testing.assert_array_equal(real.ravel(), np.arange(n_steps * batch) < c)
        assert real.any(axis=1).sum() == math.ceil(c / batch)
        assert sorted(idx[i][real].tolist()) == list(range(c))
        assert np.all(idx[i][~real] == 0)


def test_epoch_mode_partial_last_step():
    idx, mask = minibatch_stream(np.random.default_rng(0), np.array([7, 3]), 3, None)
    assert mask.sum(axis=2).tolist() == [[3, 3, 1], [3, 0, 0]]


def test_epoch_mode_is_shuffled():
    idx, mask = minibatch_stream(np.random.default_rng(0), np.array([50]), 10, None)
    assert idx[0].ravel().tolist() != list(range(50))


# --------------------------------------------------------------------------- minibatch_stream, fixed steps


@pytest.mark.parametrize("keyed", [False, True])
@FAST
@given(counts=counts_st, batch=st.integers(1, 40), steps=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_fixed_steps_properties(keyed, counts, batch, steps, seed):
    counts = np.array(counts)
    idx, mask = minibatch_stream(source(seed, len(counts), keyed), counts, batch, steps)
    assert idx.shape == mask.shape == (len(counts), steps, batch)
    assert idx.dtype == np.int64 and mask.dtype == np.float32
    for i, c in enumerate(counts):
        per_step = min(batch, c)
        real = mask[i].astype(bool)
        np.testing.assert_array_equal(real, np.broadcast_to(np.arange(batch) < per_step, (steps, batch)))
        assert np.all(idx[i][~real] == 0)
        drawn = idx[i][:, :per_step]
        assert drawn.min() >= 0 and drawn.max() < c
        # an epoch is c // per_step steps of distinct rows (the c % per_step left over sit out);
        # within one step rows are always distinct
        per_epoch = c // per_step
        for start in range(0, steps - per_epoch + 1, per_epoch):
            epoch = drawn[start:start + per_epoch].ravel()
            assert len(set(epoch.tolist())) == per_epoch * per_step
        assert all(len(set(row.tolist())) == per_step for row in drawn)


def test_fixed_steps_full_epochs_equal_counts():
    counts = np.array([4, 6, 12])
    idx, mask = minibatch_stream(np.random.default_rng(1), counts, 2, 12)  # 24 draws: 6, 4 and 2 epochs
    for i, c in enumerate(counts):
        np.testing.assert_array_equal(np.bincount(idx[i].ravel(), minlength=c), np.full(c, 24 // c))


def test_fixed_steps_small_client_uses_all_rows_each_step():
    idx, mask = minibatch_stream(np.random.default_rng(0), np.array([3, 20]), 8, 5)
    assert mask[0].sum(axis=1).tolist() == [3] * 5
    assert mask[1].sum(axis=1).tolist() == [8] * 5
    assert all(sorted(row[:3].tolist()) == [0, 1, 2] for row in idx[0])


def test_fixed_steps_rows_distinct_within_step_across_epoch_boundary():
    idx, mask = minibatch_stream(np.random.default_rng(0), np.array([5]), 3, 100)
    duplicated = [row.tolist() for row in idx[0] if len(set(row.tolist())) < 3]
    assert duplicated == []


@pytest.mark.parametrize("steps", [None, 7])
def test_minibatch_stream_reproducible(steps):
    counts = np.array([5, 17, 30])
    a = minibatch_stream(np.random.default_rng(42), counts, 4, steps)
    b = minibatch_stream(np.random.default_rng(42), counts, 4, steps)
    c = minibatch_stream(np.random.default_rng(43), counts, 4, steps)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# --------------------------------------------------------------------------- keyed draws (RoundKeys)
words = st.integers(0, 2**64 - 1)


@FAST
@given(data=st.data(), counts=counts_st, batch=st.integers(1, 40), steps=st.one_of(st.none(), st.integers(1, 30)),
       seed=words, round_number=words, stream=st.integers(0, 3))
def test_keyed_draws_of_a_client_do_not_depend_on_the_others(data, counts, batch, steps, seed, round_number,
                                                             stream):
    """A client's (idx, mask) is the same alone as with any other clients of any sizes."""
    ids = np.array(data.draw(st.lists(st.integers(0, 10**6), min_size=len(counts), max_size=len(counts),
                                      unique=True)))
    counts = np.array(counts)
    keys = RoundKeys(seed, round_number)
    idx, mask = minibatch_stream(keys.uniforms(stream, ids), counts, batch, steps)
    i = data.draw(st.integers(0, len(counts) - 1))
    alone_idx, alone_mask = minibatch_stream(keys.uniforms(stream, ids[[i]]), counts[[i]], batch, steps)
    n_own = alone_idx.shape[1]
    np.testing.assert_array_equal(idx[i, :n_own], alone_idx[0])
    np.testing.assert_array_equal(mask[i, :n_own], alone_mask[0])
    assert not mask[i, n_own:].any() and not idx[i, n_own:].any()  # the others only add padding


@pytest.mark.parametrize("steps", [None, 6])
def test_keyed_draws_differ_across_rounds_streams_seeds_and_clients(steps):
    counts = np.array([40, 40])

    def draw(seed, round_number, stream, ids):
        return minibatch_stream(RoundKeys(seed, round_number).uniforms(stream, ids), counts, 4, steps)[0]

    base = draw(0, 1, 0, [0, 1])
    np.testing.assert_array_equal(base, draw(0, 1, 0, [0, 1]))
    for other in (draw(1, 1, 0, [0, 1]), draw(0, 2, 0, [0, 1]), draw(0, 1, 1, [0, 1]), draw(0, 1, 0, [2, 3])):
        assert not np.array_equal(base[0], other[0]) and not np.array_equal(base[1], other[1])
    assert not np.array_equal(base[0], base[1])  # two clients of one round differ too


def test_keyed_uniforms_are_uniform_and_ignore_the_shape_asked_for():
    u = RoundKeys(7, 3).uniforms(1, np.arange(200))
    big = u.random((200, 3, 50))
    np.testing.assert_array_equal(u.random((200, 2, 10)), big[:, :2, :10])
    assert big.dtype == np.float64 and big.min() >= 0.0 and big.max() < 1.0
    # 30000 draws: each decile holds 3000 +- 52 (sd); the mean is 0.5 +- 0.0017
    hist = np.histogram(big, bins=10, range=(0, 1))[0]
    assert np.abs(hist - 3000).max() < 300 and abs(big.mean() - 0.5) < 0.01
    assert len(np.unique(big)) == big.size


def test_keyed_draws_name_bad_input():
    with pytest.raises(ValueError, match="seed"):
        RoundKeys(-1, 1)
    with pytest.raises(ValueError, match="round_number"):
        RoundKeys(0, 1.5)
    with pytest.raises(ValueError, match="clients"):
        RoundKeys(0, 1).uniforms(0, [-2])
    with pytest.raises(ValueError, match="n_clients=2"):
        minibatch_stream(ClientUniforms(np.arange(2, dtype=np.uint64)), np.array([3, 4, 5]), 2, None)


def test_run_round_with_round_keys_trains_each_client_as_if_alone():
    """Through draw_batches and client_updates: a client's update does not depend on who else is
    sampled, and a federation of that one client (keyed by its id, as a Flower node does) gives the same."""
    import torch

    from pfedest.core.algorithms import ALGORITHMS, StepSizes
    from pfedest.core.engine import make_engine
    from pfedest.core.rounds import client_updates, draw_batches

    counts = np.array([5, 9, 7])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    X = torch.as_tensor(np.random.default_rng(0).normal(size=(counts.sum(), 2)), dtype=torch.float32)
    y = X.sum(1) + torch.arange(counts.sum(), dtype=torch.float32) % 3

    def loss(shared, personal, idx, mask):
        err = (X[idx] @ shared["w"] + personal["b"] - y[idx]) ** 2 * mask
        return err.sum() / mask.sum().clamp(min=1), (err.sum().detach(), mask.sum())

    def client_1(sampled, fed_counts, fed_offsets, position=1, client_ids=None):
        """Client 1's personal parameter after one FedAlt round; it sits at ``position`` of the federation."""
        personal = {"b": torch.zeros(len(fed_counts))}
        keys = sampled if client_ids is None else client_ids[sampled]
        batches = draw_batches(ALGORITHMS["fedalt"], RoundKeys(3, 4), fed_counts[sampled], 2,
                               {"personal": 3, "shared": 2}, keys=keys)
        client_updates(ALGORITHMS["fedalt"], make_engine("loop", loss, {"w": torch.zeros(2)}), {"w": torch.zeros(2)},
                       personal, sampled, batches, fed_offsets, StepSizes(0.1, 0.1), weights=fed_counts[sampled])
        return float(personal["b"][position])

    everyone = client_1(np.array([0, 1, 2]), counts, offsets)
    assert client_1(np.array([1]), counts, offsets) == everyone
    assert client_1(np.array([1, 2]), counts, offsets) == everyone
    # a one-client federation of client 1's rows, keyed as client 1 (a Flower node): the same update
    X, y = X[offsets[1]:offsets[1] + counts[1]], y[offsets[1]:offsets[1] + counts[1]]
    one = (np.array([0]), counts[[1]], np.array([0]), 0)
    assert client_1(*one, client_ids=np.array([1])) == everyone
    assert client_1(*one) != everyone  # keyed as client 0: other minibatches


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), round_number=st.integers(0, 2**64 - 1), stream=st.integers(0, 2**64 - 1))
def test_stream_keys_on_python_ints_are_numpys_uint64_hash(seed, round_number, stream):
    from pfedest.core.sampling import _combine

    words = [np.array([v], dtype=np.uint64) for v in (seed, round_number, stream)]
    expected = _combine(_combine(_combine(np.zeros(1, dtype=np.uint64), words[0]), words[1]), words[2])
    assert RoundKeys(seed, round_number).stream_key(stream) == int(expected[0])
