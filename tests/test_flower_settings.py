"""pfedest.flower.settings: the run config, checked, and its mapping to the estimator's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfedest.core.schedules import LinearLR, StepLR, make_schedule
from pfedest.flower import RunSettings, run_config_for
from test_flower import small_estimator


def test_run_settings_read_the_run_config_and_name_bad_values():
    s = RunSettings.from_config({"num-rounds": 4, "algorithm": "fedalt", "personal-steps": 2, "shared-steps": -1,
                                 "lr": 0.5, "personal-lr": 0.0, "unrelated-key": "kept out"})
    assert s.steps() == {"personal": 2, "shared": None}
    assert s.step_sizes().personal == 0.5
    assert RunSettings.from_config({"clients-per-round": 0.5}).n_sampled(5) == 2
    assert RunSettings.from_config({"clients-per-round": 10}).n_sampled(3) == 3
    for key, value in [("algorithm", "fedprox"), ("lr", 0.0), ("num-rounds", 0), ("clients-per-round", 1.5),
                       ("personal-steps", -2), ("evaluate-every", -3), ("seed", -1)]:
        with pytest.raises(ValueError, match=key):
            RunSettings.from_config({key: value})


@pytest.mark.parametrize("key, value", [
    ("clip-grad-norm", -1.0), ("clip-grad-norm", "1.0"), ("personal-l2", float("nan")), ("personal-l2", True),
    ("personal-l2-target", "start"), ("lr-schedule", "cosine"), ("lr-warmup-rounds", -1),
    ("lr-warmup-rounds", 1.5), ("lr-final", -0.5), ("lr-step-rounds", 0), ("lr-gamma", 0.0),
    ("server-optimizer", "adagrad"), ("server-momentum", 1.0), ("server-momentum", -0.1)])
def test_run_settings_refuse_bad_training_options_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"Run config {key}={value!r} is invalid"):
        RunSettings.from_config({key: value})


def test_example_apps_run_config_has_every_setting():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from dataclasses import fields

    path = Path(__file__).parents[1] / "examples" / "flower_app" / "pyproject.toml"
    config = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(config) == sorted(f.name.replace("_", "-") for f in fields(RunSettings))
    RunSettings.from_config(config)


@pytest.mark.parametrize("schedule", ["constant", "linear", "step", LinearLR(warmup_rounds=2, final=0.1),
                                      StepLR(step_rounds=2, gamma=0.3)])
def test_run_config_carries_the_learning_rate_schedule(schedule):
    n_rounds = 12  # past StepLR's default step_rounds=10
    settings = RunSettings.from_config(run_config_for(small_estimator(lr_schedule=schedule, n_rounds=n_rounds)))
    expected = make_schedule(schedule)
    got = [settings.step_sizes(server_round=r + 1) for r in range(n_rounds)]
    assert [(s.shared, s.personal) for s in got] == [(0.2 * expected(r, n_rounds),) * 2 for r in range(n_rounds)]
    with pytest.raises(ValueError, match="no local step"):
        RunSettings.from_config({"personal-steps": 0, "shared-steps": 0})


def test_run_config_follows_the_estimator():
    cfg = run_config_for(small_estimator(algorithm="fedsim", personal_lr=0.05, n_rounds=9), seed=3)
    assert (cfg["algorithm"], cfg["num-rounds"], cfg["personal-lr"], cfg["shared-steps"], cfg["seed"]) == \
        ("fedsim", 9, 0.05, 5, 3)
    with pytest.raises(ValueError, match="Unknown run config key"):
        run_config_for(small_estimator(), rounds=3)


def test_the_run_config_maps_the_registrys_flower_settings_both_ways():
    """Every estimator parameter the registry says the run config carries has a RunSettings field, and
    the estimator -> run config -> estimator round trip gives the parameters back (None included)."""
    from dataclasses import fields

    from pfedest.flower.settings import FIELD_NAMES
    from pfedest.settings import by_role, defaults

    names = {f.name for f in fields(RunSettings)}
    assert {FIELD_NAMES.get(n, n) for n in by_role("flower:run_config")} <= names
    params = {n: defaults()[n] for n in by_role("flower:run_config")}
    assert RunSettings.from_estimator_params(params).estimator_params() == params
    params.update(personal_lr=0.05, personal_steps=2, shared_steps=0, clip_grad_norm=1.5, clients_per_round=0.5,
                  lr_schedule=StepLR(step_rounds=3, gamma=0.2), weighting="uniform", server_optimizer="adam")
    back = RunSettings.from_estimator_params(params).estimator_params()
    assert repr(back.pop("lr_schedule")) == repr(params.pop("lr_schedule"))
    assert back == params
    # Only the settings a rounds.json of an older release holds are given back.
    assert set(RunSettings().estimator_params(present={"num_rounds", "lr"})) == {"n_rounds", "lr"}


def test_a_server_optimizer_object_travels_as_its_kind_rate_and_momentum(tmp_path):
    import warnings

    from pfedest.core.server import ServerOptimizer
    from pfedest.flower import read_model, write_model

    cfg = run_config_for(small_estimator(server_optimizer=ServerOptimizer("sgd", lr=0.5, momentum=0.9)))
    assert (cfg["server-optimizer"], cfg["server-lr"], cfg["server-momentum"]) == ("sgd", 0.5, 0.9)
    back = RunSettings.from_config(cfg).estimator_params()  # the estimator's spelling: no deprecated momentum
    assert repr(back["server_optimizer"]) == repr(ServerOptimizer("sgd", lr=0.5, momentum=0.9))
    assert (back["server_lr"], back["server_momentum"]) == (1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_model(small_estimator(server_optimizer=ServerOptimizer("adam", lr=0.01)), tmp_path / "m.json",
                    classes=[0, 1], n_features=5)
    with pytest.warns(UserWarning, match="server_optimizer=ServerOptimizer"):  # its betas have no run-config key
        spec = read_model(write_model(small_estimator(server_optimizer=ServerOptimizer("adam", betas=(0.5, 0.9))),
                                      tmp_path / "m.json", classes=[0, 1], n_features=5))
    assert spec.estimator_params()["server_optimizer"].betas == (0.5, 0.9)
