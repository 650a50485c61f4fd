"""PartialPersonalizedRegressor: the regression head on the shared base."""

import inspect
import pickle

import numpy as np
import pytest
import sklearn
import torch
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold
from torch import nn

from pfedest import (Checkpoint, EvaluateClients, HeadSplit, PartialPersonalizedClassifier,
                     PartialPersonalizedRegressor, settings)
from pfedest.checkpoint import CheckpointError
from pfedest.datasets import federate
from pfedest.evaluation.report import client_report, client_scores
from pfedest.theory.generators import make_least_squares
from test_checkpoint import CrashAt  # raises at the end of a round, before Checkpoint saves it

SMALL = dict(hidden_layer_sizes=(8,), n_rounds=6, tol=None, clients_per_round=4, random_state=0, device="cpu")


def offset_clients(n_clients=4, n=30, n_outputs=1, seed=0):
    """Rows of a linear model shared by all clients, plus each client's own offset of the targets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_clients * n, 3))
    c = np.repeat(np.arange(n_clients), n)
    W = rng.standard_normal((3, n_outputs))
    offsets = 5.0 * rng.standard_normal((n_clients, n_outputs))
    y = X @ W + offsets[c] + 0.1 * rng.standard_normal((len(X), n_outputs))
    return X, (y.ravel() if n_outputs == 1 else y), c


@pytest.fixture(scope="module")
def data():
    return offset_clients()


@pytest.fixture(scope="module")
def fitted(data):
    X, y, c = data
    return PartialPersonalizedRegressor(**SMALL).fit(X, y, client_ids=c)


# ------------------------------------------------------------------ the registry and the API
def test_the_signature_is_the_registry_shared_settings_then_the_heads_own():
    signature = inspect.signature(PartialPersonalizedRegressor.__init__).parameters
    names = [n for n in signature if n != "self"]
    assert names == settings.names("regressor") == settings.names() + ["loss", "epsilon", "normalize_y"]
    assert {n: signature[n].default for n in names} == settings.defaults("regressor")
    assert PartialPersonalizedRegressor._parameter_constraints.keys() == set(names)
    assert PartialPersonalizedRegressor(lr=0.05, loss="huber").get_params()["lr"] == 0.05


def test_the_classifier_neither_shows_nor_accepts_the_regressors_loss():
    assert "loss" not in PartialPersonalizedClassifier().get_params()
    with pytest.raises(TypeError, match="loss"):
        PartialPersonalizedClassifier(loss="huber")
    with pytest.raises(ValueError, match="loss"):
        PartialPersonalizedRegressor(loss="absolute_error").fit([[0.0], [1.0]], [0.0, 1.0])


def test_predict_and_score_are_in_the_units_of_y(fitted, data):
    X, y, c = data
    pred = fitted.predict(X, client_ids=c)
    assert pred.shape == y.shape and pred.dtype == np.float64
    assert fitted.score(X, y, client_ids=c) == pytest.approx(r2_score(y, pred))
    # the personal head learned the offsets: far better than one model for all clients
    assert fitted.score(X, y, client_ids=c) > 0.9
    assert fitted.y_mean_ == pytest.approx([y.mean()]) and fitted.y_scale_ == pytest.approx([y.std()])


def test_targets_are_standardized_so_their_units_do_not_matter(data, fitted):
    X, y, c = data
    scaled = PartialPersonalizedRegressor(**SMALL).fit(X, 1000.0 * y - 7.0, client_ids=c)
    # the network saw the same standardized targets: predictions are the same, in the new units
    np.testing.assert_allclose(scaled.predict(X, client_ids=c), 1000.0 * fitted.predict(X, client_ids=c) - 7.0,
                               rtol=1e-4, atol=1e-2)


def test_multi_output_targets(data):
    X, y, c = offset_clients(n_outputs=2)
    est = PartialPersonalizedRegressor(**SMALL).fit(X, y, client_ids=c)
    pred = est.predict(X, client_ids=c)
    assert est.n_outputs_ == 2 and pred.shape == (len(X), 2)
    assert est.score(X, y, client_ids=c) == pytest.approx(r2_score(y, pred))
    assert est.score(X, y, client_ids=c) > 0.8
    with pytest.raises(ValueError, match="fitted on 2"):
        est.personalize(X, y[:, 0], client_ids=c)


def test_huber_with_a_wide_threshold_is_squared_error_and_resists_outliers_with_a_narrow_one():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 2))
    y = X @ [2.0, -1.0]
    clean = y.copy()
    y[rng.choice(200, 20, replace=False)] += 30.0  # 10 % gross outliers, all one way
    linear = dict(module=lambda n_in, n_out: nn.Linear(n_in, n_out), split="none", n_rounds=40, tol=None,
                  lr=0.1, random_state=0, device="cpu")
    squared = PartialPersonalizedRegressor(**linear).fit(X, y)
    wide = PartialPersonalizedRegressor(**linear, loss="huber", epsilon=1e6).fit(X, y)
    narrow = PartialPersonalizedRegressor(**linear, loss="huber", epsilon=0.5).fit(X, y)
    np.testing.assert_allclose(wide.predict(X), squared.predict(X), rtol=1e-5, atol=1e-5)
    err_squared = np.abs(squared.predict(X) - clean).mean()
    err_huber = np.abs(narrow.predict(X) - clean).mean()
    assert err_huber < 0.5 * err_squared, (err_huber, err_squared)


# ------------------------------------------------------------------ splits, algorithms, engines
@pytest.mark.parametrize("split", ["head", "input", "adapters", "full", "none"])
def test_every_split_trains(data, split):
    X, y, c = data
    est = PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 3}, split=split).fit(X, y, client_ids=c)
    assert np.isfinite(est.predict(X, client_ids=c)).all()
    assert est.history_[-1]["train_loss"] < est.history_[0]["train_loss"]


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_loop_and_vmap_engines_agree(data, algorithm):
    X, y, c = data
    fits = [PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 3}, algorithm=algorithm, engine=engine,
                                         loss="huber").fit(X, y, client_ids=c)
            for engine in ("loop", "vmap")]
    for k in fits[0].shared_params_:
        torch.testing.assert_close(fits[0].shared_params_[k], fits[1].shared_params_[k], rtol=1e-5, atol=1e-6)
    for k in fits[0].personal_params_:
        torch.testing.assert_close(fits[0].personal_params_[k], fits[1].personal_params_[k], rtol=1e-5, atol=1e-6)


def test_pretrain_finetune_early_stopping_and_personalize_new_clients(data):
    X, y, c = data
    est = PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 4}, pretrain_rounds=2, finetune_epochs=1,
                                       early_stopping=True, validation_fraction=0.2).fit(X, y, client_ids=c)
    assert [r["stage"] for r in est.history_] == ["pretrain"] * 2 + ["train"] * 4 + ["finetune"]
    assert all(np.isfinite(r["valid_loss"]) for r in est.history_ if r["stage"] == "train")
    X_new, y_new, _ = offset_clients(n_clients=1, seed=0)  # the first client's rows again, as client 9
    before = est.clients_.tolist()
    est.personalize(X_new, y_new, client_ids=np.full(len(X_new), 9), epochs=3)
    assert est.clients_.tolist() == before + [9]
    assert est.score(X_new, y_new, client_ids=np.full(len(X_new), 9)) > 0.5


def test_a_warm_start_continues_with_the_first_fits_scaling(data):
    X, y, c = data
    est = PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 2}, warm_start=True).fit(X, y, client_ids=c)
    mean, scale = est.y_mean_.copy(), est.y_scale_.copy()
    est.fit(X, y + 0.5, client_ids=c)
    assert len(est.history_) == 4 and est.y_mean_ == mean and est.y_scale_ == scale


# ------------------------------------------------------------------ per-client scores, callbacks
def test_client_report_gives_each_clients_r2(fitted, data):
    X, y, c = data
    fedavg = PartialPersonalizedRegressor(**SMALL, split="none").fit(X, y, client_ids=c)
    report = fitted.client_report(X, y, c, baseline=fedavg)
    table = report.clients
    expected = [r2_score(y[c == k], fitted.predict(X[c == k], client_ids=c[c == k])) for k in range(4)]
    np.testing.assert_allclose(np.asarray(table["r2"]), expected)
    assert {"r2", "baseline_r2", "change"} <= set(table) and report.metric == "r2"
    # one model for clients with offsets of 5 standard units cannot fit each client's rows
    assert report.summary["change"]["mean"] > 0.5 and "r2" in str(report)


def test_evaluate_clients_records_r2_each_round(data):
    X, y, c = data
    est = PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 3}, callbacks=[EvaluateClients(X, y, c)])
    est.fit(X, y, client_ids=c)
    _, counts, r2, metric = client_scores(est, X, y, c)
    assert metric == "r2"
    assert est.history_[-1]["valid_mean"] == pytest.approx(r2.mean())
    assert est.history_[-1]["valid_worst"] == pytest.approx(r2.min())


def test_a_client_with_one_row_has_no_r2_and_the_summaries_skip_it(fitted, data):
    X, y, c = data
    rows = np.r_[np.flatnonzero(c < 3), np.flatnonzero(c == 3)[:1]]
    report = client_report(fitted, X[rows], y[rows], c[rows], as_frame=False)
    assert np.isnan(report.clients["r2"][3])
    assert report.summary["r2"]["mean"] == pytest.approx(np.mean(report.clients["r2"][:3]))


# ------------------------------------------------------------------ state: pickling, checkpoints
def test_pickling_keeps_the_model(fitted, data):
    X, _, c = data
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.predict(X, client_ids=c), fitted.predict(X, client_ids=c))


def test_an_interrupted_fit_resumes_to_the_same_model(data, tmp_path):
    X, y, c = data
    params = dict(SMALL, loss="huber", epsilon=1.0)
    reference = PartialPersonalizedRegressor(**params).fit(X, y, client_ids=c)
    crashing = PartialPersonalizedRegressor(**params, callbacks=[Checkpoint(tmp_path, every=2), CrashAt(5)])
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(X, y, client_ids=c)
    resumed = PartialPersonalizedRegressor(**params, callbacks=[Checkpoint(tmp_path, every=2)]).fit(X, y, client_ids=c)
    assert resumed.callbacks_[0].resumed_from_.endswith("round-000004.ckpt")
    for k in reference.shared_params_:
        assert torch.equal(reference.shared_params_[k], resumed.shared_params_[k]), k
    for k in reference.personal_params_:
        assert torch.equal(reference.personal_params_[k], resumed.personal_params_[k]), k
    # another loss, or targets scaled otherwise, is another run
    with pytest.raises(CheckpointError, match="loss"):
        PartialPersonalizedRegressor(**{**params, "loss": "squared_error"},
                                     callbacks=[Checkpoint(tmp_path)]).fit(X, y, client_ids=c)
    other = PartialPersonalizedRegressor(**params).initialize(X, 2.0 * y, client_ids=c)
    with pytest.raises(CheckpointError, match="target scaling"):
        other.load_state_dict(resumed.state_dict())


# ------------------------------------------------------------------ model selection
def test_grid_search_over_the_personal_fraction(data):
    X, y, c = data
    est = PartialPersonalizedRegressor(**{**SMALL, "n_rounds": 3}, split=HeadSplit())
    with sklearn.config_context(enable_metadata_routing=True):
        grid = GridSearchCV(est, {"split__fraction": [0.1, 0.6]}, cv=KFold(2, shuffle=True, random_state=0))
        grid.fit(X, y, client_ids=c)
    assert grid.scorer_ is None or callable(grid.scorer_)
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    assert grid.best_estimator_.score(X, y, client_ids=c) == pytest.approx(
        r2_score(y, grid.best_estimator_.predict(X, client_ids=c)))


# ------------------------------------------------------------------ the least-squares problem
class TwoBlocks(nn.Module):
    """``a.u + b.v``: the model of :class:`~pfedest.theory.problems.PersonalizedLeastSquares`, rows ``[a, b]``."""

    def __init__(self, d_u, d_v):
        super().__init__()
        self.d_u = d_u
        self.u = nn.Parameter(torch.zeros(d_u, dtype=torch.float64))
        self.v = nn.Parameter(torch.zeros(d_v, dtype=torch.float64))

    def forward(self, x):
        return (x[:, :self.d_u] @ self.u + x[:, self.d_u:] @ self.v)[:, None]


@pytest.mark.parametrize("algorithm", ["fedalt", "fedsim"])
def test_the_least_squares_problem_is_solved_to_its_closed_form_optimum(algorithm):
    problem = make_least_squares(n_clients=4, n_samples_per_client=20, dim_shared=3, dim_personal=2,
                                 label_noise=0.3, random_state=0)
    u_star, V_star, _ = problem.optimum
    X = np.hstack([problem.A, problem.B])
    clients = np.repeat(np.arange(problem.n_clients), problem.counts)
    # full batches, every client every round, one step per block: block gradient descent on F,
    # whose fixed point is the optimum (squared error 0.5 (z - y)^2 is the problem's loss)
    est = PartialPersonalizedRegressor(TwoBlocks(3, 2), split=["v"], algorithm=algorithm, normalize_y=False,
                                       batch_size=20, personal_steps=1, shared_steps=1, clients_per_round=4,
                                       lr=0.3, n_rounds=300, tol=None, random_state=0, device="cpu")
    est.fit(X, problem.y, client_ids=clients)
    u = est.shared_params_["u"].numpy()
    V = est.personal_params_["v"].numpy()
    np.testing.assert_allclose(u, u_star, atol=1e-6)
    np.testing.assert_allclose(V, V_star, atol=1e-6)
    assert problem.objective(u, V) - problem.optimum[2] < 1e-10


# ------------------------------------------------------------------ data and Flower
def test_federate_shifts_each_clients_targets_by_its_own_offset():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X0, y0, c0 = federate(X, y, n_clients=20, random_state=0)
    X1, y1, c1 = federate(X, y, n_clients=20, target_shift=1.0, random_state=0)
    np.testing.assert_array_equal(X0, X1)
    np.testing.assert_array_equal(c0, c1)
    shift = y1 - y0
    offsets = np.array([shift[c1 == k].mean() for k in range(20)])
    np.testing.assert_allclose(shift, offsets[c1])  # one offset a client
    assert 0.5 * y.std() < offsets.std() < 2 * y.std()  # 20 draws of N(0, std(y)^2)
    with pytest.raises(ValueError, match="target_shift"):
        federate(X, y.astype(str), n_clients=5, target_shift=1.0)


def test_the_flower_app_refuses_a_regressor(tmp_path, data):
    from pfedest.flower.model_file import write_model

    with pytest.raises(TypeError, match="classifiers only"):
        write_model(PartialPersonalizedRegressor(), tmp_path / "model.json", classes=[0, 1], n_features=3)


def test_the_guard_decides_a_regressors_clients_on_their_squared_error():
    # clients whose targets carry their own offset gain from a personal head; the guard compares
    # squared errors (on standardized targets) and keeps the personal part where it clearly wins
    from sklearn.datasets import make_regression

    from pfedest.datasets import federate

    X, y = make_regression(n_samples=600, n_features=6, noise=5.0, random_state=0)
    X, y, c = federate(X, y, n_clients=6, target_shift=3.0, random_state=0)
    est = PartialPersonalizedRegressor(guard="validation", validation_fraction=0.25, n_rounds=40, tol=None,
                                       lr=0.1, random_state=0).fit(X, y, c)
    evidence = est.guard_evidence_
    assert set(np.unique(est.guard_weights_)) <= {0.0, 1.0}
    assert np.all(evidence["n_valid"] > 0)
    # the offsets are large: every client's own head beats the average head on its held-out rows
    assert np.all(evidence["gain"] > 0) and est.guard_weights_.mean() == 1.0
    # the evidence is in the regressor's own loss: the mean squared error of standardized targets, halved
    assert np.all(evidence["personal_loss"] < evidence["fallback_loss"])
    report = est.client_report(X, y, c)
    assert np.array_equal(np.asarray(report.clients["guard_weight"]), est.guard_weights_)
    assert np.all(np.isfinite(np.asarray(report.clients["r2"])))
    # the refit (guard_refit, the default) is the plain regressor on every row, with the decisions kept
    plain = PartialPersonalizedRegressor(validation_fraction=0.25, n_rounds=40, tol=None, lr=0.1,
                                         random_state=0).fit(X, y, c)
    for k, v in plain.personal_params_.items():
        torch.testing.assert_close(est.personal_params_[k], v)
        torch.testing.assert_close(est.fallback_params_[k], v.mean(0))
