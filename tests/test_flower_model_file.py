"""pfedest.flower.model_file: model.json from a configured or a fitted estimator, and what it refuses or warns about."""

from __future__ import annotations

import base64
import functools
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedest.callbacks import Callback
from pfedest.core.schedules import StepLR
from pfedest.flower import load_result, read_model, run_config_for, write_model
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


# ------------------------------------------- model.json without pickle (issue 15, item 5)
class Marker:
    """Unpickling it creates a file: the proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture
def result_dir(tmp_path):
    est = small_estimator(split="none")
    spec = read_model(write_model(est, tmp_path / "result" / "model.json", classes=[0, 1, 2], n_features=5))
    np.savez(tmp_path / "result" / "shared.npz", **{k: v.numpy() for k, v in spec.shared.items()})
    assert load_result(tmp_path / "result").classes_.tolist() == [0, 1, 2]
    return tmp_path / "result"


def craft(result_dir: Path, change) -> None:
    model = json.loads((result_dir / "model.json").read_text())
    change(model)
    (result_dir / "model.json").write_text(json.dumps(model))


@pytest.mark.parametrize("crafted, shown", [
    (lambda m, marker: m["objects"].update(split={"pickle": base64.b64encode(pickle.dumps(Marker(marker))).decode()}),
     "holds a pickled object"),
    (lambda m, marker: m.update(format="pfedest-flower-model/1", objects={"module": {
        "pickle": base64.b64encode(pickle.dumps(Marker(marker))).decode()}}), "holds a pickled object"),
    (lambda m, marker: m["objects"].update(split={"class": "subprocess:Popen",
                                                  "params": {"args": {"tuple": ["touch", str(marker)]}}}),
     "subprocess:Popen is not a torch module class or a scikit-learn-style class"),
    (lambda m, marker: m["objects"].update(module={"import": "os:system"}),
     "os:system is not a torch module class"),
    (lambda m, marker: m.update(estimator_class="subprocess:Popen"), "subprocess:Popen is not a torch module"),
    (lambda m, marker: m["objects"].update(module={"partial": "pfedest.nn.modules:MLP", "args": [],
                                                   "keywords": {"hidden_layer_sizes": {"import": "os:system"}}}),
     "os:system is not"),
])
def test_a_crafted_result_folder_runs_no_code(result_dir, tmp_path, crafted, shown):
    """Before: load_result unpickled model.json's objects, and the marker file was created."""
    marker = tmp_path / "ran"
    craft(result_dir, lambda m: crafted(m, marker))
    with pytest.raises(ValueError, match="cannot be read as a pfedest Flower model") as refused:
        load_result(result_dir)
    assert shown in str(refused.value)
    assert not marker.exists()


class TinyNet(torch.nn.Module):
    """A module class of the tests: importable by name, so model.json can name it."""

    def __init__(self, n_features, n_classes, width=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, n_classes))

    def forward(self, x):
        return self.net(x)


def _split_function(name, parameter):
    return name.startswith("net.2")


def test_model_json_names_classes_and_rebuilds_objects_from_their_parameters(tmp_path):
    from pfedest import AdapterSplit, NameSplit
    from pfedest.core.schedules import LinearLR
    from pfedest.core.server import ServerOptimizer

    params = dict(module=functools.partial(TinyNet, width=7), split=NameSplit(patterns=["net.2.*"]),
                  lr_schedule=LinearLR(warmup_rounds=2), server_optimizer=ServerOptimizer("sgd", lr=0.5, momentum=0.9))
    spec = read_model(write_model(small_estimator(**params), tmp_path / "m.json", classes=[0, 1], n_features=5))
    raw = json.loads((tmp_path / "m.json").read_text())
    assert raw["objects"]["module"] == {"partial": "test_flower_model_file:TinyNet", "args": [],
                                        "keywords": {"width": 7}}
    assert "pickle" not in (tmp_path / "m.json").read_text()
    stored = spec.estimator_params()
    assert stored["split"].get_params() == params["split"].get_params()
    assert stored["server_optimizer"].get_params() == params["server_optimizer"].get_params()
    assert spec.template().module_.net[0].out_features == 7
    assert sorted(spec.personal) == ["net.2.bias", "net.2.weight"]
    spec = read_model(write_model(small_estimator(module=TinyNet, split=AdapterSplit(fraction=0.2)),
                                  tmp_path / "a.json", classes=[0, 1], n_features=5))
    assert spec.estimator_params()["module"] is TinyNet


@pytest.mark.parametrize("params, shown", [
    (dict(module=TinyNet(5, 2)), "module is a module instance (TinyNet)"),
    (dict(split=_split_function), "split=<function _split_function"),
    (dict(split=lambda name, p: True), "is a function, which model.json does not name"),
])
def test_what_model_json_cannot_name_is_refused_at_export_saying_what_to_pass(tmp_path, params, shown):
    with pytest.raises(ValueError, match="model.json") as refused:
        write_model(small_estimator(**params), tmp_path / "m.json", classes=[0, 1], n_features=5)
    assert shown in str(refused.value)
