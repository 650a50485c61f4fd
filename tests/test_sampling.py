"""Tests of pfedest.sampling: client sampling and minibatch streams."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.sampling import minibatch_stream, sample_clients

FAST = settings(max_examples=30, deadline=None, database=None)

counts_st = st.lists(st.integers(1, 100), min_size=1, max_size=50)


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


@FAST
@given(counts=counts_st, batch=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_epoch_mode_is_one_permutation_per_client(counts, batch, seed):
    counts = np.array(counts)
    idx, mask = minibatch_stream(np.random.default_rng(seed), counts, batch, None)
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


@FAST
@given(counts=counts_st, batch=st.integers(1, 40), steps=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_fixed_steps_properties(counts, batch, steps, seed):
    counts = np.array(counts)
    idx, mask = minibatch_stream(np.random.default_rng(seed), counts, batch, steps)
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
