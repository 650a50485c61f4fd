"""Networks with dropout or batch norm: local steps in training mode, everything else in evaluation mode.

A stranger's network often has either layer. Before, batch norm failed on the estimator's one-row
shape check, and dropout trained but could not predict (random masks inside the per-row vmap).
"""

import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pfedest import PartialPersonalizedClassifier
from pfedest.flower import RunSettings, local_round, run_config_for


class Net(nn.Module):
    """Linear, then batch norm or dropout, then a head; records the mode of every forward pass."""

    def __init__(self, n_features, n_classes, layer="dropout", p=0.5):
        super().__init__()
        middle = nn.BatchNorm1d(16) if layer == "batchnorm" else nn.Dropout(p)
        self.body = nn.Sequential(nn.Linear(n_features, 16), middle, nn.ReLU())
        self.head = nn.Linear(16, n_classes)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.head(self.body(x))


def dropout_net(n_features, n_classes):  # at module level: a fitted model pickles its factory
    return Net(n_features, n_classes, "dropout")


def digits(n_clients=4, n=400):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16, y[:n], np.arange(n) % n_clients


def fitted(layer, random_state=0, p=0.5, **params):
    X, y, c = digits()
    params = {"clients_per_round": 2, **params}
    est = PartialPersonalizedClassifier(module=lambda f, k: Net(f, k, layer, p), split="head", n_rounds=3,
                                        random_state=random_state, tol=None, **params)
    return est.fit(X, y, c), (X, y, c)


@pytest.mark.parametrize("layer", ["dropout", "batchnorm"])
def test_a_network_with_dropout_or_batch_norm_fits_and_predicts_the_same_twice(layer):
    est, (X, y, c) = fitted(layer)
    modes = est.module_.modes
    assert True in modes and False in modes  # local steps trained, the probe evaluated
    est.module_.modes.clear()
    first, again, one_row = est.predict_proba(X, c), est.predict_proba(X, c), est.predict_proba(X[:1], c[:1])
    assert est.module_.modes and not any(est.module_.modes)  # predictions in evaluation mode
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first[:1], one_row, rtol=1e-6)  # a row alone: no batch statistics
    assert not est.module_.training and est.score(X, y, c) > 0.2  # 3 rounds: well above chance (0.1)


def test_batch_norm_learns_running_statistics_in_the_local_steps_and_predicting_leaves_them():
    est, (X, y, c) = fitted("batchnorm")
    norm = est.module_.body[1]
    assert norm.num_batches_tracked > 0 and not torch.allclose(norm.running_mean, torch.zeros(16))
    before = {k: v.clone() for k, v in est.module_.named_buffers()}
    est.predict(X, c)
    for k, v in est.module_.named_buffers():
        assert torch.equal(v, before[k]), k


def test_dropout_masks_follow_random_state_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    one, _ = fitted("dropout", random_state=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    again, _ = fitted("dropout", random_state=0)
    other, _ = fitted("dropout", random_state=1)
    no_dropout, _ = fitted("dropout", random_state=0, p=0.0)
    name = "body.0.weight"
    assert torch.equal(one.shared_params_[name], again.shared_params_[name])
    assert not torch.equal(one.shared_params_[name], other.shared_params_[name])
    assert not torch.equal(one.shared_params_[name], no_dropout.shared_params_[name])  # dropout was on


def test_a_one_row_minibatch_through_batch_norm_is_refused_with_the_setting_to_change():
    rng = np.random.default_rng(0)
    X, y, c = rng.normal(size=(66, 5)), np.arange(66) % 2, np.repeat([0, 1], 33)  # 33 = 32 + 1
    est = PartialPersonalizedClassifier(module=lambda f, k: Net(f, k, "batchnorm"), split="head", n_rounds=2,
                                        random_state=0, tol=None)
    with pytest.raises(ValueError, match="more than 1 value per channel") as caught:
        est.fit(X, y, c)
    if sys.version_info >= (3, 11):
        assert "minibatches of [1, 32] rows" in caught.value.__notes__[0] and "batch_size" in caught.value.__notes__[0]
    est.set_params(batch_size=33)
    assert len(est.fit(X, y, c).history_) == 2


def test_a_flower_node_trains_in_training_mode_and_keeps_the_template_in_evaluation_mode():
    est, (X, y, c) = fitted("dropout")
    settings = RunSettings.from_config(run_config_for(est))
    personal = {k: v[0] for k, v in est.personal_params_.items()}
    est.module_.modes.clear()
    runs = [local_round(est, X[c == 0], y[c == 0], est.shared_params_, personal, settings, server_round=2,
                        partition_id=0)[0] for _ in range(2)]
    assert all(est.module_.modes) and not est.module_.training
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k  # the node's dropout masks are keyed too


def test_only_networks_whose_layers_can_depend_on_the_mode_are_switched():
    from pfedest.core.model import needs_training_mode
    from pfedest.nn.modules import MLP, default_module
    from pfedest.nn.splits import make_split

    class MyMLP(MLP):  # a subclass may read self.training in its forward: it must say mode_free itself
        pass

    adapted, _ = make_split("adapters").resolve(MLP(4, 3, (8,)))
    assert not needs_training_mode(default_module((4,), 3, (8,))) and not needs_training_mode(adapted)
    assert not needs_training_mode(default_module((1, 8, 8), 3, (8,)))
    assert needs_training_mode(MyMLP(4, 3, (8,))) and needs_training_mode(Net(4, 3, "batchnorm"))


def test_dropout_batches_over_clients_each_client_drawing_its_own_masks():
    from pfedest.core.algorithms import ALGORITHMS, StepSizes
    from pfedest.core.engine import make_engine
    from pfedest.core.model import make_loss, training

    torch.manual_seed(0)
    net = Net(4, 3, "dropout")
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    params = {k: v.detach() for k, v in net.named_parameters()}
    shared = {k: v for k, v in params.items() if not k.startswith("head")}
    personal = {k: v[None].expand(2, *v.shape).clone() for k, v in params.items() if k.startswith("head")}
    same_rows = torch.arange(8).reshape(1, 1, 8).expand(2, 1, 8)  # two clients, identical data and start
    streams = {"joint": (same_rows, torch.ones(2, 1, 8))}
    engine = make_engine("vmap", make_loss(net, {}, X, y), shared)

    def run(seed):
        with training(net, seed):
            return engine.local_updates(ALGORITHMS["fedsim"], shared, personal, streams, StepSizes(0.5, 0.5))

    (u, v, _), (u_again, _, _) = run(7), run(7)
    assert not torch.equal(v["head.weight"][0], v["head.weight"][1])  # their own masks
    assert torch.equal(u["body.0.weight"], u_again["body.0.weight"])  # keyed by the seed
    from pfedest.core.engine import choose_engine

    cpu = torch.device("cpu")
    assert choose_engine("auto", Net(4, 3, "dropout"), cpu, n_params=100, clients_per_round=10) == "vmap"
    assert choose_engine("auto", Net(4, 3, "batchnorm"), cpu, n_params=100, clients_per_round=10) == "loop"


def test_an_unpickled_model_predicts_in_evaluation_mode_even_if_pickled_in_training_mode():
    import pickle

    X, y, c = digits()
    est = PartialPersonalizedClassifier(module=dropout_net, n_rounds=2, random_state=0, tol=None).fit(X, y, c)
    expected = est.predict_proba(X, c)
    est.module_.train()  # as pickles written before the module was kept in evaluation mode
    loaded = pickle.loads(pickle.dumps(est))
    assert not loaded.module_.training
    np.testing.assert_array_equal(loaded.predict_proba(X, c), expected)


def test_the_networks_guide_code_runs_and_trains_a_batch_norm_dropout_network(capsys):
    """docs/guide/networks.rst: its code block, run as written."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "networks.rst").read_text()
    block = re.search(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", page).group(1)
    code = "\n".join(line[3:] for line in block.splitlines())
    exec(compile(code, "networks.rst", "exec"), {"__name__": "networks_guide"})
    engine, fraction, _, score = capsys.readouterr().out.split()
    assert engine == "loop" and fraction == "13.2%" and float(score) > 0.8  # out: 650 of 4,938 parameters
