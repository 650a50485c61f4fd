"""A round: loop and vmap agree, split='none' is FedAvg, personal state stays with its client."""

import numpy as np
import pytest
import torch
from torch import nn

from pfedest.core import rounds as rounds_module
from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.core.engine import choose_engine, make_engine
from pfedest.core.rounds import run_round
from pfedest.core.model import make_loss
from pfedest.nn.modules import MLP
from pfedest.core.sampling import minibatch_stream, sample_clients
from pfedest.nn.splits import HeadSplit, NoSplit

COUNTS = np.array([7, 30, 12, 1, 25, 18])  # unequal, one client with a single row
CPU = torch.device("cpu")


def federation(split, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(int(COUNTS.sum()), 6, generator=gen)
    y = torch.randint(0, 3, (int(COUNTS.sum()),), generator=gen)
    torch.manual_seed(seed)
    module, personal_names = split.resolve(MLP(6, 3, (8,)))
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    shared = {n: p for n, p in params.items() if n not in personal_names}
    personal = {n: params[n].expand(len(COUNTS), *params[n].shape).clone() for n in personal_names}
    offsets = np.concatenate([[0], np.cumsum(COUNTS)[:-1]])
    return module, X, y, shared, personal, offsets


def train(algorithm, split, engine, rounds=3, per_round=4, steps=None, chunk=None, seed=0, **step_options):
    module, X, y, shared, personal, offsets = federation(split)
    runner = make_engine(engine, make_loss(module, {}, X, y), shared, **step_options)
    rng = np.random.default_rng(seed)
    algo = ALGORITHMS[algorithm]
    steps = steps or {name: None for name in algo.streams}
    for _ in range(rounds):
        sampled = sample_clients(rng, np.arange(len(COUNTS)), per_round)
        shared, _ = run_round(algorithm=algo, engine=runner, shared=shared, personal_state=personal, counts=COUNTS,
                              offsets=offsets, sampled=sampled, rng=rng, batch_size=8, steps=steps,
                              lr=StepSizes(0.1, 0.2), server_lr=1.0, chunk_size=chunk, device=CPU)
    return shared, personal


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_vmap_matches_the_loop(algorithm, chunk):
    loop = train(algorithm, HeadSplit(), "loop")
    vmapped = train(algorithm, HeadSplit(), "vmap", chunk=chunk)
    for a, b in zip(loop, vmapped):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_vmap_matches_the_loop_with_fixed_step_counts():
    steps = {"personal": 3, "shared": 5}
    loop = train("fedalt", HeadSplit(), "loop", steps=steps)
    vmapped = train("fedalt", HeadSplit(), "vmap", steps=steps)
    for k in loop[0]:
        torch.testing.assert_close(loop[0][k], vmapped[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_vmap_matches_the_loop_with_clipping_and_a_personal_penalty(algorithm):
    anchor = {k: torch.full_like(v[0], 0.5) for k, v in federation(HeadSplit())[4].items()}
    options = dict(clip=0.05, personal_l2=2.0, personal_anchor=anchor)
    loop = train(algorithm, HeadSplit(), "loop", **options)
    vmapped = train(algorithm, HeadSplit(), "vmap", **options)
    unclipped = train(algorithm, HeadSplit(), "loop")
    for a, b, c in zip(loop, vmapped, unclipped):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert any(not torch.allclose(a[k], c[k]) for k in a)  # the options changed the result


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim", "personal_only"])
def test_vmap_local_updates_leave_their_inputs_unchanged(algorithm):
    # The batched steps update in place; what the caller passed in must keep its values.
    module, X, y, shared, personal, offsets = federation(HeadSplit())
    algo = ALGORITHMS[algorithm]
    chunk = {k: v[:3].clone() for k, v in personal.items()}
    shared_before = {k: v.clone() for k, v in shared.items()}
    chunk_before = {k: v.clone() for k, v in chunk.items()}
    streams = {name: tuple(torch.as_tensor(a) for a in minibatch_stream(np.random.default_rng(1), COUNTS[:3], 4, 2))
               for name in algo.streams}
    new_shared, new_personal, _ = make_engine("vmap", make_loss(module, {}, X, y), shared).local_updates(
        algo, shared, chunk, streams, StepSizes(0.5, 0.5))
    for k in shared:
        assert torch.equal(shared[k], shared_before[k])
    for k in chunk:
        assert torch.equal(chunk[k], chunk_before[k])
        assert not torch.equal(new_personal[k], chunk[k])


def test_split_none_is_fedavg():
    """FedAvg written the usual way: one module, torch.optim.SGD, a weighted average of the weights."""
    module, X, y, shared, _, offsets = federation(NoSplit())
    ours, _ = train("fedalt", NoSplit(), "vmap", rounds=2)
    rng = np.random.default_rng(0)
    for _ in range(2):
        sampled = sample_clients(rng, np.arange(len(COUNTS)), 4)
        minibatch_stream(rng, COUNTS[sampled], 8, None)  # FedAlt's (empty) personal phase draws first
        idx, mask = minibatch_stream(rng, COUNTS[sampled], 8, None)
        new = {k: torch.zeros_like(v) for k, v in shared.items()}
        for c, client in enumerate(sampled):
            module.load_state_dict(shared)
            opt = torch.optim.SGD(module.parameters(), lr=0.1)
            for step in range(idx.shape[1]):
                rows = idx[c, step][mask[c, step] > 0] + offsets[client]
                if len(rows) == 0:
                    continue
                opt.zero_grad()
                nn.functional.cross_entropy(module(X[rows]), y[rows]).backward()
                opt.step()
            weight = COUNTS[client] / COUNTS[sampled].sum()
            for k, p in module.named_parameters():
                new[k] += weight * p.detach()
        shared = new
    for k in shared:
        torch.testing.assert_close(ours[k], shared[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_unsampled_clients_keep_their_personal_part(engine):
    module, X, y, shared, personal, offsets = federation(HeadSplit())
    before = {k: v.clone() for k, v in personal.items()}
    sampled = np.array([1, 4])
    run_round(algorithm=ALGORITHMS["fedalt"], engine=make_engine(engine, make_loss(module, {}, X, y), shared),
              shared=shared,
              personal_state=personal, counts=COUNTS, offsets=offsets, sampled=sampled,
              rng=np.random.default_rng(0), batch_size=8, steps={"personal": None, "shared": None},
              lr=StepSizes(0.1, 0.1), server_lr=1.0, chunk_size=None, device=CPU)
    for k in personal:
        for client in range(len(COUNTS)):
            unchanged = torch.equal(personal[k][client], before[k][client])
            assert unchanged == (client not in sampled), (k, client)


def test_aggregation_never_sees_personal_parameters(monkeypatch):
    seen = []

    class Recording(rounds_module.WeightedAverage):
        def add(self, client_shared, weights):
            seen.append({k: v.shape for k, v in client_shared.items()})
            super().add(client_shared, weights)

    monkeypatch.setattr(rounds_module, "WeightedAverage", Recording)
    module, X, y, shared, personal, offsets = federation(HeadSplit())
    run_round(algorithm=ALGORITHMS["fedsim"], engine=make_engine("vmap", make_loss(module, {}, X, y), shared),
              shared=shared,
              personal_state=personal, counts=COUNTS, offsets=offsets, sampled=np.array([0, 2, 5]),
              rng=np.random.default_rng(0), batch_size=8, steps={"joint": None},
              lr=StepSizes(0.1, 0.1), server_lr=1.0, chunk_size=2, device=CPU)
    assert len(seen) == 2  # two chunks
    for shapes in seen:
        assert set(shapes) == set(shared) and not set(shapes) & set(personal)


def test_a_nonfinite_round_changes_nothing():
    module, X, y, shared, personal, offsets = federation(HeadSplit())
    X[offsets[4]] = float("nan")  # client 4 holds a NaN row
    before = {k: v.clone() for k, v in personal.items()}
    new_shared, result = run_round(
        algorithm=ALGORITHMS["fedalt"], engine=make_engine("vmap", make_loss(module, {}, X, y), shared),
        shared=shared, personal_state=personal,
        counts=COUNTS, offsets=offsets, sampled=np.array([0, 1, 4, 5]), rng=np.random.default_rng(0),
        batch_size=8, steps={"personal": None, "shared": None}, lr=StepSizes(0.1, 0.1),
        server_lr=1.0, chunk_size=1, device=CPU)
    assert not result.finite
    for k in personal:
        assert torch.equal(personal[k], before[k])
    for k in shared:
        assert torch.equal(new_shared[k], shared[k])


def test_auto_engine_falls_back_for_batchnorm_and_warns_when_vmap_is_forced():
    plain = MLP(4, 2)
    assert choose_engine("auto", plain, CPU, 10_000) == "vmap"
    assert choose_engine("auto", plain, CPU, 300_000) == "vmap"  # measured 1.5x faster at 100 clients a round
    assert choose_engine("auto", plain, CPU, 10_000_000) == "loop"
    assert choose_engine("auto", plain, torch.device("cuda"), 10_000_000) == "vmap"
    # a CPU trains fewer than 5 clients a round one after another (batching them measured slower)
    assert [choose_engine("auto", plain, CPU, 10_000, m) for m in (1, 4, 5, 100)] == ["loop", "loop", "vmap", "vmap"]
    assert choose_engine("auto", plain, torch.device("cuda"), 10_000, 1) == "vmap"
    assert choose_engine("vmap", plain, CPU, 10_000, 1) == "vmap"
    with_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert choose_engine("auto", with_bn, CPU, 10) == "loop"
    with pytest.warns(UserWarning, match="BatchNorm1d"):
        assert choose_engine("vmap", with_bn, CPU, 10) == "loop"


def test_memory_estimate_grows_with_model_and_batch_and_bounds_the_chunk():
    from pfedest.core.engine import auto_chunk_size, bytes_per_client

    row = torch.zeros(1, 6)
    small, large = MLP(6, 3, (8,)), MLP(6, 3, (256, 256))
    assert bytes_per_client(small, row, 16) < bytes_per_client(large, row, 16)
    assert bytes_per_client(small, row, 16) < bytes_per_client(small, row, 64)
    per_client = bytes_per_client(large, row, 16)
    assert auto_chunk_size(CPU, per_client) >= 1
    assert auto_chunk_size(CPU, 10**15) == 1
