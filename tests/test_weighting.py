"""How the server weighs the clients' shared parameters: by row count ("samples") or equally ("uniform")."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from pfedest import PartialPersonalizedClassifier
from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.datasets import make_shifted_clients
from pfedest.core.engine import LoopEngine, make_engine
from pfedest.core.rounds import run_round
from pfedest.theory import make_least_squares
from pfedest.core.sampling import sample_clients

CPU = torch.device("cpu")
COUNTS = np.array([3, 9, 5, 14, 1])  # unequal, so the two weightings differ
OFFSETS = np.concatenate([[0], np.cumsum(COUNTS)[:-1]])


class SpyEngine:
    """Runs a real engine and keeps the shared parameters each chunk of clients returned."""

    def __init__(self, inner):
        self.inner, self.name, self.returned = inner, inner.name, []

    def local_updates(self, *args):
        out = self.inner.local_updates(*args)
        self.returned.append({k: v.clone() for k, v in out[0].items()})
        return out


def linear_round(weights, seed=0, sampled=(4, 1, 3, 0), chunk_size=2):
    """One FedSim round of a tiny per-client linear regression; returns the new shared parameters
    and the shared parameters every sampled client sent back (stacked in sampled order)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(int(COUNTS.sum()), 3, generator=gen)
    y = torch.randn(int(COUNTS.sum()), generator=gen)

    def loss(shared, personal, idx, mask):
        err = (X[idx] @ shared["w"] + personal["b"] - y[idx]) ** 2 * mask
        return err.sum() / mask.sum().clamp(min=1), (err.sum().detach(), mask.sum())

    shared = {"w": torch.randn(3, generator=gen)}
    personal = {"b": torch.zeros(len(COUNTS))}
    engine = SpyEngine(make_engine("loop", loss, shared))
    new_shared, _ = run_round(
        algorithm=ALGORITHMS["fedsim"], engine=engine, shared=shared, personal_state=personal, counts=COUNTS,
        offsets=OFFSETS, sampled=np.array(sampled), rng=np.random.default_rng(seed), batch_size=4,
        steps={"joint": 2}, lr=StepSizes(0.1, 0.1), server_lr=1.0, chunk_size=chunk_size, device=CPU,
        weights=weights)
    returned = {k: torch.cat([r[k] for r in engine.returned]) for k in shared}
    return new_shared, returned


def weighted_mean(returned, w):
    """On the CPU, in float64, whatever device the estimator trained on."""
    w = torch.as_tensor(np.asarray(w, dtype=np.float64))
    return {k: torch.tensordot(w, v.double().cpu(), dims=1) / w.sum() for k, v in returned.items()}


# ------------------------------------------------------------------------------ run_round
def test_run_round_default_weights_are_the_row_counts():
    sampled = np.array([4, 1, 3, 0])
    default, returned = linear_round(None)
    explicit, _ = linear_round(COUNTS.astype(float))
    assert torch.equal(default["w"], explicit["w"])
    torch.testing.assert_close(default["w"].double(), weighted_mean(returned, COUNTS[sampled])["w"])


def test_run_round_equal_weights_give_the_unweighted_mean_across_chunks():
    uniform, returned = linear_round(np.ones(len(COUNTS)))
    torch.testing.assert_close(uniform["w"].double(), returned["w"].double().mean(0))
    by_rows, _ = linear_round(None)
    # The clients disagree, so the weighting matters: the check above is not vacuous.
    assert float((uniform["w"] - by_rows["w"]).abs().max()) > 1e-3


@settings(max_examples=10, deadline=None, database=None)
@given(w=st.lists(st.floats(0.1, 10.0), min_size=len(COUNTS), max_size=len(COUNTS)), seed=st.integers(0, 100))
def test_run_round_averages_with_any_weights_and_ignores_their_scale(w, seed):
    new, returned = linear_round(np.array(w), seed=seed)
    sampled = np.array([4, 1, 3, 0])
    torch.testing.assert_close(new["w"].double(), weighted_mean(returned, np.array(w)[sampled])["w"],
                               rtol=1e-5, atol=1e-6)
    scaled, _ = linear_round(7.0 * np.array(w), seed=seed)
    torch.testing.assert_close(scaled["w"], new["w"], rtol=1e-5, atol=1e-6)


def test_equal_counts_make_both_weightings_identical_on_a_convex_problem():
    """The convex problems give every client the same row count: the two weightings are one."""
    problem = make_least_squares(n_clients=5, n_samples_per_client=10, random_state=0)
    engine = make_engine("loop", problem.torch_loss(), {"u": torch.zeros(problem.dim_shared, dtype=torch.float64)})

    def trajectory(weights):
        client_rng, batch_rng = np.random.default_rng(1), np.random.default_rng(2)
        shared = {"u": torch.zeros(problem.dim_shared, dtype=torch.float64)}
        personal = {"v": torch.zeros(problem.n_clients, problem.dim_personal, dtype=torch.float64)}
        out = []
        for _ in range(5):
            shared, _ = run_round(
                algorithm=ALGORITHMS["fedalt"], engine=engine, shared=shared, personal_state=personal,
                counts=problem.counts, offsets=problem.offsets,
                sampled=sample_clients(client_rng, np.arange(problem.n_clients), 3), rng=batch_rng, batch_size=4,
                steps={"personal": 2, "shared": 2}, lr=StepSizes(0.05, 0.05), server_lr=1.0, chunk_size=None,
                device=CPU, weights=weights)
            out.append((shared["u"].clone(), personal["v"].clone()))
        return out

    by_rows, equal = trajectory(None), trajectory(np.ones(problem.n_clients))
    assert not torch.equal(by_rows[0][0], by_rows[-1][0])  # it moved
    for (u_a, v_a), (u_b, v_b) in zip(by_rows, equal):
        torch.testing.assert_close(u_a, u_b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(v_a, v_b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------ the estimator
@pytest.fixture
def spied(monkeypatch):
    """The shared parameters each client returned to the server, through the estimator's loop engine."""
    returned = []
    local_updates = LoopEngine.local_updates

    def spy(self, *args):
        out = local_updates(self, *args)
        returned.append({k: v.clone() for k, v in out[0].items()})
        return out

    monkeypatch.setattr(LoopEngine, "local_updates", spy)
    return returned


def one_full_round(federated, spied, **params):
    X, y, c = federated
    est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), n_rounds=1, clients_per_round=len(np.unique(c)),
                                        batch_size=8, engine="loop", random_state=0, **params).fit(X, y, client_ids=c)
    returned = {k: torch.cat([r[k] for r in spied]) for k in est.shared_params_}
    rows = np.array([np.sum(c == client) for client in est.history_[0]["clients"]])  # in sampled order
    return est, returned, rows


def test_uniform_weighting_is_the_unweighted_mean_of_what_the_clients_sent(federated, spied):
    est, returned, rows = one_full_round(federated, spied, weighting="uniform")
    assert len(set(rows)) > 1  # unequal clients
    for k, v in returned.items():
        torch.testing.assert_close(est.shared_params_[k], v.mean(0), rtol=1e-5, atol=1e-6)
    by_rows = weighted_mean(returned, rows)
    assert max(float((est.shared_params_[k].double().cpu() - by_rows[k]).abs().max()) for k in returned) > 1e-4


def test_samples_is_the_default_and_weighs_by_rows(federated, spied):
    assert PartialPersonalizedClassifier().weighting == "samples"
    est, returned, rows = one_full_round(federated, spied)
    by_rows = weighted_mean(returned, rows)
    for k in returned:
        torch.testing.assert_close(est.shared_params_[k].double().cpu(), by_rows[k], rtol=1e-5, atol=1e-6)


@settings(max_examples=3, deadline=None, database=None)
@given(seed=st.integers(0, 1000))
def test_equal_counts_give_identical_fits(seed):
    X, y, c = make_shifted_clients(n_clients=4, n_samples_per_client=12, n_features=3, n_classes=2,
                                   random_state=seed)
    fits = [PartialPersonalizedClassifier(hidden_layer_sizes=(4,), n_rounds=2, clients_per_round=2, batch_size=4,
                                          weighting=w, random_state=seed).fit(X, y, client_ids=c)
            for w in ("samples", "uniform")]
    for name in ("shared_params_", "personal_params_"):
        a, b = (getattr(f, name) for f in fits)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert fits[0].history_[:, "clients"] == fits[1].history_[:, "clients"]


def test_bad_weighting_is_named(federated):
    X, y, c = federated
    with pytest.raises(ValueError, match=r"'weighting'.*'rows'"):
        PartialPersonalizedClassifier(weighting="rows", n_rounds=1).fit(X, y, client_ids=c)


def test_weighting_is_a_parameter_that_clone_and_set_params_keep():
    est = PartialPersonalizedClassifier(weighting="uniform")
    assert est.get_params()["weighting"] == "uniform"
    assert clone(est).weighting == "uniform"
    assert est.set_params(weighting="samples").weighting == "samples"


# ------------------------------------------------------------------------------ Flower
def test_flower_run_config_carries_the_weighting(tmp_path):
    from pfedest.flower import RunSettings, read_model, run_config_for, write_model

    assert RunSettings().weighting == "samples" and RunSettings.from_config({}).weighting == "samples"
    est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), weighting="uniform", random_state=0)
    assert RunSettings.from_config(run_config_for(est)).weighting == "uniform"
    with pytest.raises(ValueError, match="weighting='rows'"):
        RunSettings.from_config({"weighting": "rows"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the app carries it out: no "does not carry out" warning
        path = write_model(est, tmp_path / "model.json", classes=[0, 1], n_features=3)
    assert read_model(path).estimator_params()["weighting"] == "uniform"


@pytest.mark.parametrize("weighting, expected", [("samples", [4.0, 5.0]), ("uniform", [3.0, 4.0])])
def test_flower_strategy_weighs_replies_as_configured(weighting, expected):
    pytest.importorskip("flwr")
    from flwr.app import Message, Metadata, MetricRecord, RecordDict

    import pfedest.flower as pf

    shared = {"w": torch.zeros(2)}
    strategy = pf.PersonalizedFedAvg(shared, pf.RunSettings.from_config({"weighting": weighting}))
    strategy.begin_round(1, shared, [101, 102])
    ins = Message(content=RecordDict(), metadata=Metadata(
        run_id=7, message_id="m1", src_node_id=1, dst_node_id=101, reply_to_message_id="", group_id="",
        created_at=0.0, ttl=3600.0, message_type="train"))
    replies = [Message(RecordDict({"arrays": pf.to_record({"w": w}),
                                   "metrics": MetricRecord({"num-examples": n, "partition-id": pid})}), reply_to=ins)
               for w, n, pid in [(torch.tensor([1.0, 2.0]), 1, 0), (torch.tensor([5.0, 6.0]), 3, 1)]]
    arrays, _ = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(pf.to_tensors(arrays)["w"], torch.tensor(expected))
