"""The registry of the estimator's parameters is the one place they are written."""

import inspect

import pytest

from pfedest import PartialPersonalizedClassifier
from pfedest import settings


def test_the_estimator_signature_is_the_registry():
    signature = inspect.signature(PartialPersonalizedClassifier.__init__).parameters
    names = [n for n in signature if n != "self"]
    assert names == settings.names()
    assert {n: signature[n].default for n in names} == settings.defaults()
    assert PartialPersonalizedClassifier._parameter_constraints.keys() == set(names)


def test_every_setting_has_a_known_role_and_flower_treatment():
    for s in settings.SETTINGS:
        assert s.role in settings.ROLES, s
        assert s.flower in ("model", "run_config", "ignored", "unsupported"), s
    # what a resumed fit compares and what the Flower app carries are derived, not listed again
    assert settings.by_role("flower:unsupported") == ("tol", "n_iter_no_change", "early_stopping", "guard_refit",
                                                      "precision", "pretrain_rounds", "finetune_epochs", "callbacks")
    assert "engine" in settings.by_role("execution") and "engine" not in settings.RESUME_CHECKED


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="Unknown role"):
        settings.by_role("speed")


def test_the_constraints_validate_as_before():
    with pytest.raises(ValueError, match="algorithm"):
        PartialPersonalizedClassifier(algorithm="fedprox").fit([[0.0], [1.0]], [0, 1])
