"""pfedest.flower.model_file: model.json from a configured or a fitted estimator, and what it refuses or warns about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pfedest.callbacks import Callback
from pfedest.core.schedules import StepLR
from pfedest.flower import read_model, run_config_for, write_model
from test_flower import small_estimator, small_federation


def test_model_file_of_a_configured_estimator_holds_its_initial_weights(tmp_path):
    X, y, c = small_federation()
    est = small_estimator()
    spec = read_model(write_model(est, tmp_path / "model.json", classes=np.unique(y), n_features=5))
    fitted = small_estimator(n_rounds=1).fit(X, y, client_ids=c)
    init = dict(fitted.module_.named_parameters())  # the estimator's own starting weights
    assert set(spec.shared) == set(fitted.shared_params_) and set(spec.personal) == set(fitted.personal_params_)
    for k, v in {**spec.shared, **spec.personal}.items():
        torch.testing.assert_close(v, init[k].detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="classes="):
        write_model(est, tmp_path / "other.json")


def test_model_file_of_a_fitted_estimator_continues_from_it(tmp_path):
    X, y, c = small_federation()
    est = small_estimator(n_rounds=2).fit(X, y, client_ids=c)
    spec = read_model(write_model(est, tmp_path / "model.json"))
    for k, v in est.shared_params_.items():
        torch.testing.assert_close(spec.shared[k], v)
    for k, v in est.personal_params_.items():  # new nodes start from the clients' average, as in predict
        torch.testing.assert_close(spec.personal[k], v.mean(0))
    assert spec.classes.tolist() == est.classes_.tolist()


def _module_level_schedule(round_index, n_rounds):  # importable, but a callable the app cannot rebuild
    return 0.5


class MainModule(torch.nn.Module):
    def forward(self, x):
        return x


def test_model_file_refuses_what_nodes_cannot_import(tmp_path, monkeypatch):
    monkeypatch.setattr(MainModule, "__module__", "__main__")
    with pytest.raises(ValueError, match="__main__"):
        write_model(small_estimator(module=MainModule), tmp_path / "m.json", classes=[0, 1], n_features=5)


def test_write_model_carries_the_training_options_and_warns_for_the_rest(tmp_path):
    options = dict(clip_grad_norm=0.5, personal_l2=0.1, personal_l2_target="init",
                   lr_schedule=StepLR(step_rounds=2, gamma=0.3), server_optimizer="sgd", server_momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = read_model(write_model(small_estimator(**options), tmp_path / "m.json", classes=[0, 1],
                                      n_features=5))
    stored = spec.estimator_params()
    assert stored["lr_schedule"].get_params() == options.pop("lr_schedule").get_params()
    assert {k: stored[k] for k in options} == options
    cfg = run_config_for(small_estimator(**options))
    assert (cfg["clip-grad-norm"], cfg["personal-l2"], cfg["personal-l2-target"], cfg["server-optimizer"],
            cfg["server-momentum"]) == (0.5, 0.1, "init", "sgd", 0.9)
    for name, value in [("pretrain_rounds", 1), ("finetune_epochs", 1), ("callbacks", [Callback()]),
                        ("lr_schedule", _module_level_schedule)]:
        with pytest.warns(UserWarning, match=f"not carry out these estimator settings: {name}="):
            spec = read_model(write_model(small_estimator(**{name: value}), tmp_path / "m.json", classes=[0, 1],
                                          n_features=5))
        assert name not in spec.estimator_params()
    # A callable schedule cannot travel: the app's run config trains with the constant rate.
    assert run_config_for(small_estimator(lr_schedule=_module_level_schedule))["lr-schedule"] == "constant"

