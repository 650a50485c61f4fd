"""The paper's pipeline: pre-training, server optimizers, schedules, clipping, penalties, callbacks."""

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from pfedest import Callback, EarlyStopping, EvaluateClients, PartialPersonalizedClassifier
from pfedest.core.schedules import LinearLR, StepLR
from pfedest.core.server import ServerOptimizer

FAST = dict(n_rounds=3, clients_per_round=6, random_state=0)


def fit(federated, **params):
    X, y, c = federated
    return PartialPersonalizedClassifier(**{**FAST, **params}).fit(X, y, client_ids=c)


def test_pretraining_then_personalization_then_finetuning_in_order(federated):
    est = fit(federated, pretrain_rounds=2, finetune_epochs=2)
    assert est.history_[:, "stage"] == ["pretrain"] * 2 + ["train"] * 3 + ["finetune"] * 2
    assert [r["round"] for r in est.history_] == list(range(1, 8))
    assert est.history_[-1, "bytes_up"] == 0  # fine-tuning sends nothing


class PersonalAtTrainStart(Callback):
    """Copies the personal parameters before pre-training and when the first training round begins."""

    def on_train_begin(self, estimator):
        self.drawn_ = {k: v.clone() for k, v in estimator.personal_params_.items()}

    def on_round_begin(self, estimator, round_number, stage):
        if stage == "train" and not hasattr(self, "personal_"):
            self.personal_ = {k: v.clone() for k, v in estimator.personal_params_.items()}


def test_pretraining_trains_the_personal_part_as_shared(federated):
    est = fit(federated, pretrain_rounds=2, n_rounds=1, clients_per_round=1, callbacks=[PersonalAtTrainStart()])
    # only one client trained in the single personalization round; the others hold the
    # pre-trained head, identical across them and different from the initial head
    trained = est.history_[-1, "clients"][0]
    others = [i for i, c in enumerate(est.clients_) if c != trained]
    for k, v in est.personal_params_.items():
        assert all(torch.equal(v[i], v[others[0]]) for i in others)
        assert not torch.equal(v[others[0]], est.callbacks_[0].drawn_[k][0])


def test_pretraining_leaves_adapters_at_the_identity(federated):
    est = fit(federated, split="adapters", pretrain_rounds=2, n_rounds=1, clients_per_round=1)
    trained = est.history_[-1, "clients"][0]
    untouched = [i for i, c in enumerate(est.clients_) if c != trained][0]
    for k, v in est.personal_params_.items():
        assert torch.equal(v[untouched], est.state_dict()["personal_init"][k])


def test_finetuning_moves_only_the_personal_part(federated):
    X, y, c = federated
    base = fit(federated)
    tuned = fit(federated, finetune_epochs=2)
    for k in base.shared_params_:
        assert torch.equal(base.shared_params_[k], tuned.shared_params_[k])
    assert any(not torch.equal(base.personal_params_[k], tuned.personal_params_[k]) for k in base.personal_params_)


@pytest.mark.parametrize("params", [dict(server_optimizer="adam", server_lr=0.01),
                                    dict(server_optimizer=ServerOptimizer("sgd", momentum=0.9))])
def test_server_optimizers_change_the_trajectory(federated, params):
    plain, other = fit(federated), fit(federated, **params)
    assert all(np.isfinite(other.history_[:, "train_loss"]))
    assert any(not torch.allclose(plain.shared_params_[k], other.shared_params_[k]) for k in plain.shared_params_)


def test_server_momentum_is_deprecated_for_a_server_optimizer_object(federated):
    with pytest.warns(FutureWarning, match="server_momentum is deprecated"):
        old = fit(federated, server_optimizer="sgd", server_momentum=0.9)
    new = fit(federated, server_optimizer=ServerOptimizer("sgd", momentum=0.9))
    for k in old.shared_params_:
        assert torch.equal(old.shared_params_[k], new.shared_params_[k])


def test_server_lr_beside_a_server_optimizer_object_is_refused(federated):
    with pytest.raises(ValueError, match="set lr and momentum on it"):
        fit(federated, server_optimizer=ServerOptimizer("adam", lr=0.01), server_lr=0.5)


def test_a_server_optimizer_object_is_searchable_by_its_parameters():
    est = PartialPersonalizedClassifier(server_optimizer=ServerOptimizer("adam"))
    est.set_params(server_optimizer__lr=0.003)
    assert est.get_params()["server_optimizer__lr"] == 0.003 and est.server_optimizer.kind == "adam"


def test_lr_schedules_set_each_rounds_rate(federated):
    est = fit(federated, n_rounds=5, lr=0.2, lr_schedule=LinearLR(warmup_rounds=1, final=0.5))
    np.testing.assert_allclose(est.history_[:, "lr"], [0.1, 0.2, 0.2 * (1 - 0.5 / 3), 0.2 * (1 - 1 / 3), 0.1])
    est = fit(federated, n_rounds=4, lr=0.2, lr_schedule=StepLR(step_rounds=2, gamma=0.1))
    np.testing.assert_allclose(est.history_[:, "lr"], [0.2, 0.2, 0.02, 0.02])
    est = fit(federated, n_rounds=2, lr=0.2, lr_schedule=lambda r, n: 1.0 / (r + 1))
    np.testing.assert_allclose(est.history_[:, "lr"], [0.2, 0.1])
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(federated, lr_schedule="cosine")


def test_clipping_bounds_how_far_a_round_moves(federated):
    free = fit(federated, n_rounds=1, lr=0.5)
    clipped = fit(federated, n_rounds=1, lr=0.5, clip_grad_norm=1e-3)
    start = fit(federated, n_rounds=1, lr=1e-12)  # practically the initial shared part
    moved = lambda est: sum(float((est.shared_params_[k] - start.shared_params_[k]).norm())
                            for k in start.shared_params_)
    assert moved(clipped) < 0.05 * moved(free)


def test_personal_l2_towards_init_keeps_the_personal_part_close(federated):
    free = fit(federated, lr=0.3)
    held = fit(federated, lr=0.3, personal_l2=3.0, personal_l2_target="init")
    distance = lambda est: sum(float((v - est.state_dict()["personal_init"][k]).norm())  # noqa: E731
                              for k, v in est.personal_params_.items())
    assert distance(held) < 0.7 * distance(free)


def test_personal_l2_towards_init_means_the_start_of_personalization_after_pretraining(federated):
    # After FedAvg pre-training the head is the pre-trained one; "init" must pull towards it, not
    # back towards the random weights drawn before pre-training.
    # personal_lr * personal_l2 = 1: each personal step lands near the anchor (minus 0.02 x the loss gradient)
    est = fit(federated, n_rounds=2, pretrain_rounds=5, lr=0.1, personal_lr=0.02, personal_l2=50.0,
              personal_l2_target="init", callbacks=[PersonalAtTrainStart()])
    start, drawn = est.callbacks_[0].personal_, est.callbacks_[0].drawn_
    for k, v in est.personal_params_.items():
        to_start = float((v - start[k]).norm())
        assert to_start < 0.5 * float((start[k] - drawn[k]).norm())
        assert to_start < 0.5 * float((v - drawn[k]).norm())


def test_evaluate_clients_writes_every_clients_scores_into_history(federated):
    X, y, c = federated
    est = fit(federated, n_rounds=4, callbacks=[EvaluateClients(X, y, c, every=2)])
    assert math.isnan(est.history_[0, "valid_mean"]) and not math.isnan(est.history_[1, "valid_mean"])
    last = est.history_[-1]
    assert last["valid_worst"] <= last["valid_p10"] <= last["valid_mean"] <= 1
    assert last["valid_mean"] == pytest.approx(
        np.mean([est.score(X[c == k], y[c == k], client_ids=c[c == k]) for k in np.unique(c)]))


def test_early_stopping_ends_the_stage_and_says_why(federated):
    X, y, c = federated
    est = fit(federated, n_rounds=30, lr=1e-9, finetune_epochs=1,
              callbacks=[EvaluateClients(X, y, c), EarlyStopping(patience=2, min_delta=0.5)])
    stages = est.history_[:, "stage"]
    assert stages.count("train") == 3 and stages[-1] == "finetune"  # best at round 1, 2 more, stop
    assert "has not improved for 2" in est.stop_reason_
    assert fit(federated, tol=None).stop_reason_ is None
    assert "in round 1)" in est.stop_reason_  # training's best
    assert (est.callbacks_[1].stage_, est.callbacks_[1].best_round_) == ("finetune", 4)  # each stage afresh


def test_callbacks_are_cloned_params_and_grid_searchable(federated):
    stopper = EarlyStopping(patience=3)
    est = PartialPersonalizedClassifier(callbacks=[stopper], **FAST)
    assert clone(est).callbacks[0] is not stopper and clone(est).callbacks[0].patience == 3
    X, y, c = federated
    est.fit(X, y, client_ids=c)
    assert est.callbacks_[0] is not stopper and not hasattr(stopper, "best_")
    est.set_params(callbacks=[EarlyStopping(patience=1)])
    assert est.get_params()["callbacks"][0].patience == 1
