"""User-level DP on the shared part: the accountant, the clipping, the noise, the fit, the refusals."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils._param_validation import InvalidParameterError

from pfedest import PartialPersonalizedClassifier
from pfedest.datasets import make_shifted_clients
from pfedest.core.privacy import PrivateSum, clip_deltas, next_clip, update_noise_multiplier
from pfedest.privacy import DifferentialPrivacy, PrivateTraining, calibrate_noise, epsilon_of, round_event

dp_accounting = pytest.importorskip("dp_accounting")


def fit(federated, privacy, **params):
    X, y, c = federated
    options = dict(n_rounds=4, clients_per_round=3, tol=None, hidden_layer_sizes=(6,), random_state=0)
    options.update(params)
    return PartialPersonalizedClassifier(privacy=privacy, **options).fit(X, y, client_ids=c)


def all_params(est):
    return {**est.shared_params_, **{f"personal.{k}": v for k, v in est.personal_params_.items()}}


# ---------------------------------------------------------------- the accountant
def test_epsilon_matches_the_libraries_worked_example():
    # dp-accounting's rdp test (test_compute_epsilon_delta_gaussian): one Gaussian release with noise
    # multiplier 4.530877117 is (1, 1e-6)-DP. Here: every client sampled (q=1), one round.
    event = round_event("poisson", population=50, expected=50, noise_multiplier=4.530877117)
    assert epsilon_of([event], delta=1e-6, kind="rdp") == pytest.approx(1.0, abs=1e-4)
    # and the calibration inverts it
    z = calibrate_noise(1.0, 1e-6, 1, lambda z: round_event("poisson", 50, 50, z))
    assert z == pytest.approx(4.530877117, abs=2e-3)


@pytest.mark.parametrize("rounds", [1, 16])
def test_pld_epsilon_of_full_participation_is_the_exact_gaussian_one(rounds):
    # T releases of a Gaussian with multiplier z are one with z / sqrt(T); its exact epsilon is the
    # analytic Gaussian mechanism's (Balle and Wang 2018), dp_accounting.get_epsilon_gaussian.
    z, delta = 2.0, 1e-5
    event = round_event("poisson", 10, 10, z)
    exact = dp_accounting.get_epsilon_gaussian(z / math.sqrt(rounds), delta)
    assert epsilon_of([event] * rounds, delta, kind="pld") == pytest.approx(exact, rel=1e-2)
    assert epsilon_of([event] * rounds, delta, kind="rdp") >= exact  # RDP is an upper bound


def test_sampling_amplifies_and_fixed_size_is_accounted_replace_one():
    full = epsilon_of([round_event("poisson", 100, 100, 1.0)] * 10, 1e-5)
    sampled = epsilon_of([round_event("poisson", 100, 10, 1.0)] * 10, 1e-5)
    fixed = epsilon_of([round_event("fixed", 100, 10, 1.0)] * 10, 1e-5, sampling="fixed")
    assert sampled < full
    assert sampled < fixed  # replacing one client moves the sum twice as far as adding one
    event = round_event("fixed", 100, 10, 1.0)
    assert isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
    assert event.event.noise_multiplier == pytest.approx(0.5)


def test_adaptive_clipping_takes_its_share_from_the_update_noise():
    z_d = update_noise_multiplier(1.0, 4.0)
    assert (z_d ** -2 + 4.0 ** -2) ** -0.5 == pytest.approx(1.0)
    alone = epsilon_of([round_event("poisson", 100, 10, 1.0)] * 5, 1e-5)
    shared = epsilon_of([round_event("poisson", 100, 10, 1.0, count_stddev=4.0)] * 5, 1e-5)
    assert shared == pytest.approx(alone, rel=1e-6)
    with pytest.raises(ValueError, match="clipped count"):
        update_noise_multiplier(1.0, 0.5)
    assert next_clip(1.0, 0.2, 0.5, 0.2) > 1.0 > next_clip(1.0, 0.9, 0.5, 0.2)


# ---------------------------------------------------------------- clipping and noise
@settings(max_examples=60, deadline=None, database=None)
@given(n_clients=st.integers(1, 6), size=st.integers(1, 5), scale=st.floats(1e-4, 1e4),
       clip=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_a_clipped_update_never_exceeds_the_clip(n_clients, size, scale, clip, seed):
    gen = torch.Generator().manual_seed(seed)
    deltas = {"a": scale * torch.randn(n_clients, size, 2, generator=gen),
              "b": scale * torch.randn(n_clients, size, generator=gen)}
    clipped, norms = clip_deltas(deltas, clip)
    after = torch.sqrt(sum(v.reshape(n_clients, -1).double().pow(2).sum(1) for v in clipped.values()))
    assert (after <= clip * (1 + 1e-6)).all()
    small = norms <= clip  # a client within the clip is unchanged; one above it keeps its direction
    for k in deltas:
        torch.testing.assert_close(clipped[k][small], deltas[k][small])
    big = ~small
    if big.any():
        assert torch.allclose(after[big], torch.full_like(after[big], clip), rtol=1e-5)


def test_the_noise_has_the_calibrated_spread():
    u = {"w": torch.zeros(200_000)}
    total = PrivateSum(u, clip=2.0, noise_std=1.5 * 2.0, denominator=10.0, generator=torch.Generator().manual_seed(0))
    total.add({"w": torch.zeros(3, 200_000)}, torch.ones(3))
    noise = total.mean()["w"]
    assert float(noise.mean()) == pytest.approx(0.0, abs=3e-3)
    assert float(noise.std()) == pytest.approx(1.5 * 2.0 / 10.0, rel=1e-2)


def test_clients_count_equally_under_privacy():
    u = {"w": torch.zeros(1)}
    total = PrivateSum(u, clip=10.0, noise_std=0.0, denominator=2.0, generator=torch.Generator())
    total.add({"w": torch.tensor([[1.0], [3.0]])}, torch.tensor([100.0, 1.0]))  # row counts are ignored
    assert total.mean()["w"].item() == pytest.approx(2.0)


# ---------------------------------------------------------------- the fit
def test_no_noise_and_no_clipping_is_the_non_private_fit(federated):
    reference = fit(federated, None, weighting="uniform")
    private = fit(federated, DifferentialPrivacy(clip=math.inf, noise_multiplier=0.0, sampling="fixed"),
                  weighting="uniform")
    a, b = all_params(reference), all_params(private)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert reference.history_[:, "clients"] == private.history_[:, "clients"]
    assert private.history_[:, "epsilon"] == [math.inf] * 4


@pytest.mark.parametrize("adaptive", [False, True])
def test_loop_equals_vmap_with_privacy_on(federated, adaptive):
    config = DifferentialPrivacy(clip=0.5, noise_multiplier=0.8, target_quantile=0.5 if adaptive else None,
                                 clipped_count_stddev=3.0 if adaptive else None)
    loop = fit(federated, config, engine="loop")
    vmap = fit(federated, config, engine="vmap", max_clients_per_batch=2)
    a, b = all_params(loop), all_params(vmap)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert loop.history_[:, "epsilon"] == vmap.history_[:, "epsilon"]
    assert loop.history_[:, "clients"] == vmap.history_[:, "clients"]
    np.testing.assert_allclose(loop.history_[:, "dp_clip"], vmap.history_[:, "dp_clip"], rtol=1e-6)
    if adaptive:
        assert len(set(loop.history_[:, "dp_clip"])) > 1  # the clip moved


def test_a_private_fit_is_reproducible_and_its_noise_depends_on_the_seed(federated):
    config = DifferentialPrivacy(noise_multiplier=1.0)
    first, again = fit(federated, config), fit(federated, config)
    for k, v in first.shared_params_.items():
        assert torch.equal(v, again.shared_params_[k])
    no_noise = fit(federated, DifferentialPrivacy(noise_multiplier=0.0))
    assert first.history_[:, "clients"] == no_noise.history_[:, "clients"]  # same sampling, other noise
    assert not all(torch.equal(v, no_noise.shared_params_[k]) for k, v in first.shared_params_.items())


def test_epsilon_grows_each_round_and_the_target_is_met(federated):
    est = fit(federated, DifferentialPrivacy(target_epsilon=3.0, delta=1e-3), n_rounds=6)
    eps = est.history_[:, "epsilon"]
    assert all(b > a for a, b in zip(eps, eps[1:]))
    assert 2.9 < eps[-1] <= 3.0 + 1e-6
    z = est.history_[-1]["dp"]["noise_multiplier"]
    assert epsilon_of([round_event("poisson", 6, 3, z)] * 6, 1e-3) == pytest.approx(eps[-1])


def test_a_warm_start_continues_the_count(federated):
    config = DifferentialPrivacy(noise_multiplier=1.0)
    once = fit(federated, config, n_rounds=6)
    twice = fit(federated, config, n_rounds=3)
    twice.set_params(warm_start=True).fit(*federated[:2], client_ids=federated[2])
    assert twice.history_[:, "epsilon"] == pytest.approx(once.history_[:, "epsilon"])


def test_poisson_sampling_may_sample_nobody(federated):
    est = fit(federated, DifferentialPrivacy(noise_multiplier=1.0), clients_per_round=1, n_rounds=12)
    counts = est.history_[:, "n_clients"]
    assert 0 in counts and max(counts) >= 1  # independent draws: neither always one nor never any
    empty = [r for r in est.history_ if r["n_clients"] == 0]
    assert all(math.isnan(r["train_loss"]) for r in empty)
    assert all(torch.isfinite(v).all() for v in est.shared_params_.values())


def test_personal_parameters_never_reach_the_server(federated, monkeypatch):
    seen = []
    original = PrivateSum.add

    def spy(self, client_shared, weights):
        seen.append(set(client_shared))
        return original(self, client_shared, weights)

    monkeypatch.setattr(PrivateSum, "add", spy)
    est = fit(federated, DifferentialPrivacy(noise_multiplier=1.0), split="head")
    assert seen and all(keys == set(est.shared_params_) for keys in seen)
    assert not set(est.personal_params_) & set(est.shared_params_)


def test_the_state_dict_of_a_private_fit_continues_it(federated):
    est = fit(federated, DifferentialPrivacy(noise_multiplier=1.0))
    state = est.state_dict()
    clone = fit(federated, DifferentialPrivacy(noise_multiplier=1.0)).load_state_dict(state)
    assert clone.history_[:, "epsilon"] == est.history_[:, "epsilon"]


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("params, message", [
    (dict(), "exactly one of noise_multiplier and target_epsilon"),
    (dict(noise_multiplier=1.0, target_epsilon=1.0), "exactly one"),
    (dict(noise_multiplier=-1.0), "noise_multiplier must be"),
    (dict(noise_multiplier=1.0, delta=0.0), "delta must be"),
    (dict(noise_multiplier=1.0, clip=0), "clip must be"),
    (dict(noise_multiplier=1.0, clip=math.inf), "clip=inf"),
    (dict(noise_multiplier=1.0, sampling="fixed", accountant="pld"), "RDP accountant only"),
    (dict(noise_multiplier=1.0, sampling="shuffle"), "sampling must be"),
    (dict(noise_multiplier=1.0, target_quantile=1.5), "target_quantile"),
    (dict(noise_multiplier=1.0, target_quantile=0.5, clipped_count_stddev=0.1), "clipped count"),
])
def test_bad_privacy_settings_are_refused(federated, params, message):
    with pytest.raises(ValueError, match=message):
        fit(federated, DifferentialPrivacy(**params))


def test_privacy_must_be_a_differential_privacy_object(federated):
    with pytest.raises(InvalidParameterError, match="privacy"):
        fit(federated, {"noise_multiplier": 1.0})


def test_an_unreachable_target_is_refused_with_its_reason(federated):
    with pytest.raises(ValueError, match="target_epsilon"):
        fit(federated, DifferentialPrivacy(target_epsilon=1e4))


def test_the_stopping_rule_warns_that_it_is_not_accounted(federated):
    with pytest.warns(UserWarning, match="accountant does not count"):
        fit(federated, DifferentialPrivacy(noise_multiplier=1.0), tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(federated, DifferentialPrivacy(noise_multiplier=1.0))


def test_the_flower_app_carries_privacy_but_refuses_adaptive_clipping(tmp_path):
    # the app runs DP-FedAvg with a fixed clip (tests/test_flower_privacy.py); adaptive clipping stays refused
    from pfedest.flower.model_file import read_model, write_model

    est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,), privacy=DifferentialPrivacy(noise_multiplier=1.0))
    spec = read_model(write_model(est, tmp_path / "model.json", classes=[0, 1], n_features=3))
    assert spec.estimator_params()["privacy"].get_params() == est.privacy.get_params()
    est.set_params(privacy=DifferentialPrivacy(noise_multiplier=1.0, target_quantile=0.5))
    with pytest.raises(ValueError, match="does not run adaptive clipping"):
        write_model(est, tmp_path / "model.json", classes=[0, 1], n_features=3)


def test_private_training_samples_as_its_accountant_assumes():
    config = DifferentialPrivacy(noise_multiplier=1.0, sampling="fixed")
    fixed = PrivateTraining(config, population=50, expected=5, planned=1, history=[])
    rng = np.random.default_rng(0)
    assert all(len(fixed.sample(rng, np.arange(50))) == 5 for _ in range(20))
    poisson = PrivateTraining(DifferentialPrivacy(noise_multiplier=1.0), population=50, expected=5, planned=1,
                              history=[])
    sizes = [len(poisson.sample(rng, np.arange(50))) for _ in range(2000)]
    assert np.mean(sizes) == pytest.approx(5.0, rel=0.05)
    assert np.var(sizes) == pytest.approx(50 * 0.1 * 0.9, rel=0.15)  # binomial, not fixed


def test_the_privacy_example_plots_accuracy_against_epsilon(tmp_path, load_example):
    results = load_example("plot_privacy").main(["--clients", "12", "--per-round", "6", "--rounds", "2",
                                                 "--epsilons", "8", "inf", "--out", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert {eps for _, eps in results} == {8.0, math.inf} and len(results) == 4
    assert all(0 <= p10 <= mean <= 1 for mean, p10 in results.values())


@pytest.mark.parametrize("sampling, accountant", [("fixed", "rdp"), ("poisson", "pld")])
def test_each_sampling_and_accountant_runs_a_fit(federated, sampling, accountant):
    est = fit(federated, DifferentialPrivacy(noise_multiplier=2.0, sampling=sampling, accountant=accountant),
              n_rounds=3)
    eps = est.history_[:, "epsilon"]
    assert all(0 < a < b < math.inf for a, b in zip(eps, eps[1:]))
    if sampling == "fixed":
        assert est.history_[:, "n_clients"] == [3, 3, 3]
    assert eps[-1] == pytest.approx(epsilon_of([round_event(sampling, 6, 3, 2.0)] * 3, 1e-5, accountant, sampling))


def test_pretraining_rounds_are_private_and_counted(federated):
    est = fit(federated, DifferentialPrivacy(target_epsilon=4.0, delta=1e-3), pretrain_rounds=2, n_rounds=2,
              finetune_epochs=1)
    private = [r for r in est.history_ if "epsilon" in r]
    assert [r["stage"] for r in private] == ["pretrain", "pretrain", "train", "train"]
    assert private[-1]["epsilon"] <= 4.0 + 1e-6
    assert "epsilon" not in est.history_[-1] and est.history_[-1]["stage"] == "finetune"  # nothing is sent


def test_a_private_fit_that_diverges_names_the_noise_as_the_likely_cause():
    # a stranger's first private fit: the defaults (10 clients a round, 300 rounds planned) with a
    # target epsilon on digits dealt to 100 clients: the noise on the mean is ~0.28 a coordinate
    from sklearn.datasets import load_digits

    from pfedest.datasets import federate

    X, y = load_digits(return_X_y=True)
    X, y, c = federate(X, y, n_clients=100, random_state=0)
    est = PartialPersonalizedClassifier(privacy=DifferentialPrivacy(target_epsilon=3.0), random_state=0)
    with pytest.raises(FloatingPointError, match=r"server adds noise of standard deviation 0\.\d+ .*clients_per_round"):
        est.fit(X, y, c)


@pytest.mark.parametrize("refit", [True, False])
def test_privacy_refuses_the_guard_whose_fallback_the_accountant_does_not_cover(refit):
    X, y, c = make_shifted_clients(n_clients=12, n_samples_per_client=20, random_state=0)
    est = PartialPersonalizedClassifier(guard="validation", guard_refit=refit, n_rounds=2, tol=None,
                                        privacy=DifferentialPrivacy(noise_multiplier=1.0))
    with pytest.raises(ValueError, match="privacy and guard='validation' cannot be combined"):
        est.fit(X, y, c)
    assert not hasattr(est, "shared_params_")  # refused before training
