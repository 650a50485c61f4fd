"""PartialPersonalizedClassifier end to end: fitting, predicting, state, errors."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from pfedest import AdapterSplit, HeadSplit, PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients

FAST = dict(n_rounds=3, clients_per_round=3, random_state=0)


def fitted(federated, **params):
    X, y, c = federated
    return PartialPersonalizedClassifier(**{**FAST, **params}).fit(X, y, client_ids=c)


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
@pytest.mark.parametrize("split", ["head", "input", "adapters", "full", "none"])
def test_every_split_and_algorithm_fits_and_predicts(federated, split, algorithm):
    X, y, c = federated
    est = fitted(federated, split=split, algorithm=algorithm)
    pred = est.predict(X, client_ids=c)
    assert pred.shape == y.shape and set(pred) <= set(est.classes_)
    proba = est.predict_proba(X, client_ids=c)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert 0 <= est.score(X, y, client_ids=c) <= 1
    assert len(est.history_) == 3 and all(np.isfinite(est.history_[:, "train_loss"]))
    expected = {"none": 0.0, "full": 1.0}.get(split)
    if expected is not None:
        assert est.personal_fraction_ == expected
    else:
        assert 0 < est.personal_fraction_ < 1


def test_personal_fraction_is_the_share_of_personal_parameters(federated):
    est = fitted(federated, split="head")
    n_personal = sum(v[0].numel() for v in est.personal_params_.values())
    n_total = n_personal + sum(v.numel() for v in est.shared_params_.values())
    assert est.personal_fraction_ == pytest.approx(n_personal / n_total)
    assert set(est.personal_params_) == {"net.4.weight", "net.4.bias"}
    assert all(v.shape[0] == len(est.clients_) for v in est.personal_params_.values())


def test_training_reduces_the_loss_and_personalization_beats_fedavg():
    X, y, c = make_shifted_clients(n_clients=8, random_state=1)
    head = PartialPersonalizedClassifier(split="head", n_rounds=25, random_state=0).fit(X, y, client_ids=c)
    none = PartialPersonalizedClassifier(split="none", n_rounds=25, random_state=0).fit(X, y, client_ids=c)
    assert head.history_[-1, "train_loss"] < 0.5 * head.history_[0, "train_loss"]
    assert head.score(X, y, client_ids=c) > none.score(X, y, client_ids=c) + 0.1


def test_random_state_makes_runs_identical_and_seeds_differ(federated):
    a, b = fitted(federated), fitted(federated)
    c = fitted(federated, random_state=1)
    for k in a.shared_params_:
        assert torch.equal(a.shared_params_[k], b.shared_params_[k])
        assert not torch.equal(a.shared_params_[k], c.shared_params_[k])
    assert a.history_[:, "clients"] == b.history_[:, "clients"]


def test_partial_participation_samples_the_requested_number_of_clients(federated):
    est = fitted(federated, clients_per_round=0.5)
    assert est.history_[:, "n_clients"] == [3, 3, 3]
    assert all(len(set(r)) == 3 for r in est.history_[:, "clients"])
    n_shared = sum(v.numel() * v.element_size() for v in est.shared_params_.values())
    assert est.history_[0, "bytes_up"] == 3 * n_shared


def test_string_labels_and_string_client_ids(federated):
    X, y, c = federated
    labels = np.array(["cat", "dog", "eel"])[y]
    clients = np.array([f"client-{i}" for i in c])
    est = PartialPersonalizedClassifier(**FAST).fit(X, labels, client_ids=clients)
    assert list(est.classes_) == ["cat", "dog", "eel"]
    assert set(est.clients_) == set(clients)
    assert set(est.predict(X, client_ids=clients)) <= {"cat", "dog", "eel"}
    assert est.history_[0, "clients"][0].startswith("client-")


@pytest.mark.parametrize("fit_ids, other_ids", [("int", "str"), ("str", "int")])
def test_client_ids_of_another_type_than_the_models_are_refused_and_change_nothing(federated, fit_ids, other_ids):
    # "0" and 0 would be different clients to NumPy; personalize would even turn the known ids into text
    X, y, c = federated
    as_type = {"int": c, "str": np.array([f"{k}" for k in c])}
    est = PartialPersonalizedClassifier(**FAST).fit(X, y, client_ids=as_type[fit_ids])
    known = est.clients_.copy()
    other = as_type[other_ids]
    for call in (lambda: est.predict(X[:5], client_ids=other[:5]),
                 lambda: est.personalize(X[:20], y[:20], client_ids=other[:20])):
        with pytest.raises(TypeError, match="pass ids of the same type"):
            call()
    assert est.clients_.tolist() == known.tolist() and est.clients_.dtype == known.dtype
    assert est.predict(X[:5], client_ids=as_type[fit_ids][:5]).shape == (5,)


def test_each_row_is_answered_by_its_own_clients_model(federated):
    X, y, c = federated
    est = fitted(federated, split="full")
    row = X[:1]
    answers = {client: est.predict_proba(row, client_ids=[client])[0] for client in est.clients_}
    assert len({tuple(np.round(p, 6)) for p in answers.values()}) == len(est.clients_)
    mixed = est.predict_proba(np.repeat(row, len(est.clients_), 0), client_ids=est.clients_)
    np.testing.assert_allclose(mixed, np.stack([answers[k] for k in est.clients_]), rtol=1e-5, atol=1e-7)


def test_unseen_clients_raise_by_default_and_can_use_the_average(federated):
    X, y, c = federated
    est = fitted(federated)
    with pytest.raises(ValueError, match=r"not been trained on: \[99\]"):
        est.predict(X[:2], client_ids=[0, 99])
    est.set_params(unseen_clients="average")
    proba = est.predict_proba(X[:1], client_ids=[99])
    average = {k: v.mean(0, keepdim=True) for k, v in est.personal_params_.items()}
    from pfedest.core.model import personalized_logits

    with torch.no_grad():
        logits = personalized_logits(est.module_, {}, est.shared_params_, average,
                                     torch.as_tensor(X[:1], device=est.device_),
                                     torch.zeros(1, dtype=torch.int64, device=est.device_))
    np.testing.assert_allclose(proba, torch.softmax(logits.double(), 1).cpu().numpy(), rtol=1e-5)


def test_personalize_trains_new_clients_with_the_shared_part_frozen(federated):
    X, y, c = federated
    est = fitted(federated)
    shared = {k: v.clone() for k, v in est.shared_params_.items()}
    known = {k: v.clone() for k, v in est.personal_params_.items()}
    X_new, y_new, _ = make_shifted_clients(n_clients=1, n_samples_per_client=30, n_features=5, n_classes=3,
                                           random_state=5)
    est.personalize(X_new, y_new, client_ids=np.full(30, 42), epochs=5)
    assert est.clients_[-1] == 42 and len(est.clients_) == 7
    for k in shared:
        assert torch.equal(shared[k], est.shared_params_[k])
    for k in known:
        assert torch.equal(known[k], est.personal_params_[k][:6])  # other clients untouched
        assert not torch.equal(est.personal_params_[k][6], known[k].mean(0))  # the new one trained
    assert est.predict(X_new, client_ids=np.full(30, 42)).shape == (30,)
    assert est.history_[-1, "stage"] == "personalize" and est.history_[-1, "bytes_up"] == 0


def test_warm_start_continues_where_fit_stopped(federated):
    X, y, c = federated
    once = PartialPersonalizedClassifier(**{**FAST, "n_rounds": 6}).fit(X, y, client_ids=c)
    twice = PartialPersonalizedClassifier(**FAST, warm_start=True).fit(X, y, client_ids=c).fit(X, y, client_ids=c)
    assert [r["round"] for r in twice.history_] == list(range(1, 7))
    for k in once.shared_params_:
        torch.testing.assert_close(once.shared_params_[k], twice.shared_params_[k])
    cold = PartialPersonalizedClassifier(**FAST).fit(X, y, client_ids=c).fit(X, y, client_ids=c)
    assert len(cold.history_) == 3


def test_pickle_and_joblib_round_trip_predict_the_same(federated, tmp_path):
    X, y, c = federated
    est = fitted(federated, split="adapters")
    path = tmp_path / "model.joblib"
    joblib.dump(est, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X, client_ids=c), est.predict_proba(X, client_ids=c))
    assert pickle.loads(pickle.dumps(est)).score(X, y, client_ids=c) == est.score(X, y, client_ids=c)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_a_model_saved_on_a_gpu_loads_on_the_cpu(federated):
    X, y, c = federated
    est = fitted(federated)
    state = est.__getstate__()
    state["device_"] = "cuda:0"  # what a GPU-trained model carries in its pickle
    restored = PartialPersonalizedClassifier.__new__(PartialPersonalizedClassifier)
    with pytest.warns(UserWarning, match="not available"):
        restored.__setstate__(state)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.predict(X, client_ids=c), est.predict(X, client_ids=c))


def test_clone_and_nested_split_params(federated):
    est = PartialPersonalizedClassifier(split=AdapterSplit(fraction=0.05))
    assert est.get_params()["split__fraction"] == 0.05
    est.set_params(split__fraction=0.2)
    copy = clone(est)
    assert copy.split is not est.split and copy.split.fraction == 0.2
    small = fitted(federated, split=AdapterSplit(fraction=0.05))
    large = fitted(federated, split=AdapterSplit(fraction=0.3))
    assert small.personal_fraction_ < large.personal_fraction_


def test_split_variants_patterns_callables_and_head_fraction(federated):
    by_pattern = fitted(federated, split=["net.4.*"])
    assert set(by_pattern.personal_params_) == {"net.4.weight", "net.4.bias"}
    by_callable = fitted(federated, split=lambda name, p: name.endswith("bias"))
    assert set(by_callable.personal_params_) == {"net.0.bias", "net.2.bias", "net.4.bias"}
    two_layers = fitted(federated, split=HeadSplit(fraction=0.5))
    assert set(two_layers.personal_params_) == {"net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"}


def test_user_modules_as_instance_and_factory(federated):
    X, y, c = federated
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    before = net[0].weight.detach().clone()
    est = fitted(federated, module=net)
    assert torch.equal(net[0].weight, before)  # the user's module is not trained in place
    assert set(est.personal_params_) == {"2.weight", "2.bias"}
    factory = fitted(federated, module=lambda n_features, n_classes: nn.Sequential(
        nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, n_classes)))
    assert factory.predict(X, client_ids=c).shape == y.shape


def test_images_use_the_small_cnn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, 60)
    c = np.repeat([0, 1, 2], 20)
    est = PartialPersonalizedClassifier(**FAST).fit(X, y, client_ids=c)
    assert type(est.module_).__name__ == "SmallCNN"
    assert est.predict(X, client_ids=c).shape == (60,)
    est2 = PartialPersonalizedClassifier(**FAST, split="adapters").fit(X[:, 0], y, client_ids=c)
    assert est2.predict(X[:, 0], client_ids=c).shape == (60,)


def test_fit_without_client_ids_is_one_client(federated):
    X, y, _ = federated
    est = PartialPersonalizedClassifier(**FAST).fit(X, y)
    assert len(est.clients_) == 1
    assert est.predict(X).shape == y.shape
    multi = fitted(federated)
    with pytest.raises(ValueError, match="client_ids is required"):
        multi.predict(X)


def test_verbose_shows_a_progress_bar_with_the_loss(federated, capsys):
    fitted(federated, verbose=1)
    err = capsys.readouterr().err
    assert "train" in err and "loss=" in err
    fitted(federated, verbose=0)
    assert capsys.readouterr().err == ""


def test_divergence_stops_with_the_round_and_keeps_the_last_good_state(federated):
    X, y, c = federated
    est = PartialPersonalizedClassifier(n_rounds=2, lr=1e3, random_state=0, split="none",
                                        clients_per_round=6, warm_start=True)
    with pytest.raises(FloatingPointError, match=r"diverged in round \d+"):
        est.fit(X * 1e3, y, client_ids=c)
    good_rounds = len(est.history_)
    assert all(torch.isfinite(v).all() for v in est.shared_params_.values())
    assert all(np.isfinite(est.history_[:, "train_loss"])) and good_rounds < 2


@pytest.mark.parametrize("bad, match", [
    (dict(y=np.zeros(5)), "inconsistent numbers of samples"),
    (dict(client_ids=np.zeros(5)), "one id per row"),
    (dict(X="nan"), "NaN"),
    (dict(X="inf"), "infinity"),
    (dict(X="empty"), "0 sample"),
    (dict(y="one class"), "at least 2 classes"),
    (dict(X="1d"), "2D array"),
])
def test_bad_input_gets_a_clear_error(federated, bad, match):
    X, y, c = (np.array(a, copy=True) for a in federated)
    X = {"nan": np.where(np.arange(len(X))[:, None] == 3, np.nan, X), "inf": np.where(X > 1, np.inf, X),
         "empty": X[:0], "1d": X[:, 0]}.get(bad.get("X"), X) if isinstance(bad.get("X"), str) else X
    if isinstance(bad.get("y"), str):
        y = np.zeros_like(y)
    elif "y" in bad:
        y = bad["y"]
    if "client_ids" in bad:
        c = bad["client_ids"]
    if bad.get("X") == "empty":
        y, c = y[:0], c[:0]
    with pytest.raises(ValueError, match=match):
        PartialPersonalizedClassifier(**FAST).fit(X, y, client_ids=c)


@pytest.mark.parametrize("params, match", [
    (dict(split="middle"), "split"),
    (dict(algorithm="fedprox"), "algorithm"),
    (dict(split=["nothing.*"]), "selects no parameter"),
    (dict(split=["*"]), "selects every parameter"),
    (dict(split="adapters", module=nn.Linear(5, 3)), "no Linear or Conv2d layer"),
    (dict(split="head", module=nn.Linear(5, 3)), "every parameter"),
    (dict(personal_steps=0, shared_steps=0), "no local step"),
    (dict(module=nn.Linear(5, 7), split="none"), "logits of shape"),
    (dict(n_rounds=0), "n_rounds"),
])
def test_bad_parameters_get_a_clear_error(federated, params, match):
    X, y, c = federated
    with pytest.raises((ValueError, TypeError), match=match):
        PartialPersonalizedClassifier(**{**FAST, **params}).fit(X, y, client_ids=c)


def test_predict_checks_the_input_shape(federated):
    X, y, c = federated
    est = fitted(federated)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3], client_ids=c)
    with pytest.raises(ValueError, match="one id per row"):
        est.predict(X, client_ids=c[:-1])
    with pytest.raises(ValueError, match="unseen"):
        est.personalize(X, np.full(len(y), 7), client_ids=c)


def test_chunked_rounds_train_the_same_model(federated):
    whole = fitted(federated, clients_per_round=6)
    chunked = fitted(federated, clients_per_round=6, max_clients_per_batch=2)
    for k in whole.shared_params_:
        torch.testing.assert_close(whole.shared_params_[k], chunked.shared_params_[k], rtol=1e-5, atol=1e-6)
    for k in whole.personal_params_:
        torch.testing.assert_close(whole.personal_params_[k], chunked.personal_params_[k], rtol=1e-5, atol=1e-6)


def test_compiled_vmap_trains_the_same_model(federated):
    eager = fitted(federated, engine="vmap")
    compiled = fitted(federated, engine="vmap", compile=True)
    for k in eager.shared_params_:
        torch.testing.assert_close(eager.shared_params_[k], compiled.shared_params_[k], rtol=1e-5, atol=1e-6)
    for k in eager.personal_params_:
        torch.testing.assert_close(eager.personal_params_[k], compiled.personal_params_[k], rtol=1e-5, atol=1e-6)


def test_client_report_method_scores_every_client_against_a_baseline(federated):
    X, y, c = federated
    est, fedavg = fitted(federated), fitted(federated, split="none")
    report = est.client_report(X, y, c, baseline=fedavg)
    assert len(report.clients) == len(np.unique(c))
    assert 0 <= report.fraction_hurt <= 1


def test_a_new_fit_without_client_ids_forgets_the_previous_clients(federated):
    X, y, c = federated
    est = fitted(federated)
    est.fit(X, y)  # a fresh fit: all rows one client, whatever the last fit saw
    assert len(est.clients_) == 1 and est.predict(X).shape == y.shape
