"""ModuleCall gives functional_call's outputs and gradients; the loss's unmasked path equals the masked one."""

import copy
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from pfedest.core.algorithms import ALGORITHMS, StepSizes
from pfedest.core.engine import LoopEngine
from pfedest.core.model import make_loss, mean_loss, personalized_logits
from pfedest.core.reparametrize import ModuleCall
from pfedest.nn.modules import MLP


class Tied(nn.Module):
    """An embedding whose table is also the output layer's weight (two names, one tensor)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, x):
        return self.out(self.embed(x).mean(1))


def other_tensors(module, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in module.named_parameters()}


def modules():
    torch.manual_seed(0)
    return {
        "mlp": (MLP(4, 3, (5,)), torch.randn(6, 4)),
        "tied": (Tied(), torch.randint(0, 5, (6, 2))),
        "batchnorm, eval": (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval(), torch.randn(6, 4)),
        "weight norm": (nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)), torch.randn(6, 4)),
        "lstm": (nn.LSTM(4, 3, batch_first=True), torch.randn(2, 5, 4)),
        "one layer used twice": (nn.Sequential(shared_layer := nn.Linear(4, 4), nn.ReLU(), shared_layer),
                                 torch.randn(6, 4)),
    }


def first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", list(modules()))
def test_module_call_gives_functional_calls_outputs_and_gradients(name):
    module, x = modules()[name]
    reference = copy.deepcopy(module)  # functional_call leaves a layer used twice unrestored under grad (torch 2.13)
    call = ModuleCall(module)
    tensors = other_tensors(module, 1)
    assert torch.equal(first(call(tensors, x)), first(functional_call(reference, tensors, (x,))))

    def through(f):
        return lambda t: first(f(t)).square().sum()

    ours = grad(through(lambda t: call(t, x)))(tensors)
    theirs = grad(through(lambda t: functional_call(reference, t, (x,))))(tensors)
    for k in tensors:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    for k, v in module.named_parameters():  # the module's own tensors are back in place
        assert isinstance(v, nn.Parameter) and not torch.equal(v.detach(), tensors[k])


def test_a_recurrent_layer_takes_functional_call_and_a_plain_network_the_short_path():
    # nn.LSTM keeps a flat copy of its weights that only its __setattr__ refreshes
    assert not ModuleCall(nn.LSTM(4, 3))._fast and ModuleCall(MLP(4, 3, (5,)))._fast


def test_tied_weights_follow_the_name_given():
    module = Tied()
    table = torch.zeros(5, 3)
    table[2] = 1.0
    out = ModuleCall(module)({"embed.weight": table}, torch.tensor([[2, 2]]))
    assert out.tolist() == [[0.0, 0.0, 3.0, 0.0, 0.0]]  # the output layer used the new table too


def test_the_module_is_restored_when_the_call_raises_and_an_unknown_name_is_refused():
    module = MLP(4, 3, (5,))
    before = {k: v for k, v in module.named_parameters()}
    with pytest.raises(RuntimeError):
        ModuleCall(module)(other_tensors(module, 0), torch.randn(2, 7))  # wrong width
    assert all(v is before[k] for k, v in module.named_parameters())
    with pytest.raises(KeyError, match="no parameter or buffer named"):
        ModuleCall(module)({"nope": torch.zeros(1)}, torch.randn(2, 4))


def test_module_call_vmaps_over_per_client_parameters():
    module = MLP(4, 3, (5,))
    call, x = ModuleCall(module), torch.randn(6, 4)
    stacked = {k: torch.stack([v, 2 * v]) for k, v in other_tensors(module, 3).items()}
    ours = vmap(lambda t: call(t, x))(stacked)
    theirs = vmap(lambda t: functional_call(module, t, (x,)))(stacked)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ---------------------------------------------------------------- the loss without a mask
def test_a_loss_without_a_mask_equals_the_masked_loss_with_every_row_real():
    torch.manual_seed(0)
    module = MLP(4, 3, (5,))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    loss = make_loss(module, {}, X, y)
    params = {k: v.detach() for k, v in module.named_parameters()}
    idx = torch.tensor([3, 7, 1, 19])
    masked_grad = grad(lambda p: loss(p, {}, idx, torch.ones(4))[0])(params)
    unmasked_grad = grad(lambda p: loss(p, {}, idx, None)[0])(params)
    for k in params:
        torch.testing.assert_close(unmasked_grad[k], masked_grad[k], rtol=1e-6, atol=1e-7)
    unmasked, masked = loss(params, {}, idx, None), loss(params, {}, idx, torch.ones(4))
    torch.testing.assert_close(unmasked, masked)  # the mean and the (sum, count) reported


class Spy:
    """A loss that records the masks it is given."""

    mask_optional = True

    def __init__(self, loss):
        self.loss, self.masks, self.rows = loss, [], []

    def __call__(self, shared, personal, idx, mask):
        self.masks.append(mask)
        self.rows.append(idx.tolist())
        return self.loss(shared, personal, idx, mask)


def test_the_loop_engine_passes_each_minibatch_as_its_real_rows_without_a_mask():
    torch.manual_seed(0)
    module = MLP(4, 3, (5,))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    spy = Spy(make_loss(module, {}, X, y))
    params = {k: v.detach() for k, v in module.named_parameters()}
    shared = {k: v for k, v in params.items() if not k.startswith("net.2")}
    personal = {k: v[None].expand(2, *v.shape).clone() for k, v in params.items() if k.startswith("net.2")}
    idx = torch.arange(12).reshape(2, 2, 3)
    mask = torch.ones(2, 2, 3)
    mask[1, 1, 2] = 0.0  # client 1's second step has a padded row
    mask[0, 1] = 0.0  # client 0's second step is all padding: trimmed away
    streams = {"joint": (idx, mask)}
    lr = StepSizes(0.1, 0.1)
    plain = LoopEngine(make_loss(module, {}, X, y)).local_updates(ALGORITHMS["fedsim"], shared, personal, streams, lr)
    spied = LoopEngine(spy).local_updates(ALGORITHMS["fedsim"], shared, personal, streams, lr)
    # client 0: its first step (its second, all padding, is left out); client 1: both, without the padded row
    assert spy.masks == [None, None, None] and spy.rows == [[0, 1, 2], [6, 7, 8], [9, 10]]
    for ours, theirs in zip(spied[:2], plain[:2]):
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- the few-clients loss
@settings(max_examples=25, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=7), seed=st.integers(0, 99))
def test_mean_loss_per_client_run_equals_the_per_row_loss(runs, seed):
    torch.manual_seed(seed)
    module = MLP(4, 3, (5,))
    params = {k: v.detach() for k, v in module.named_parameters()}
    shared = {k: v for k, v in params.items() if not k.startswith("net.2")}
    personal = {k: torch.randn(6, *v.shape) for k, v in params.items() if k.startswith("net.2")}
    rows = torch.tensor([c for c, n in runs for _ in range(n)])
    X, y = torch.randn(len(rows), 4), torch.randint(0, 3, (len(rows),))
    per_row = torch.nn.functional.cross_entropy(personalized_logits(module, {}, shared, personal, X, rows), y)
    assert np.isclose(mean_loss(module, {}, shared, personal, X, y, rows), float(per_row), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- two threads, one module
class Slow(nn.Module):
    """A head after a pause: a call that swapped its tensors holds them long enough for a race to show."""

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.body, self.head = nn.Linear(n_features, 8), nn.Linear(8, n_classes)

    def forward(self, x):
        hidden = torch.relu(self.body(x))
        time.sleep(0.002)
        return self.head(hidden)


def test_predictions_served_from_several_threads_at_once_equal_the_sequential_ones():
    from sklearn.datasets import load_digits

    from pfedest import PartialPersonalizedClassifier

    X, y = load_digits(return_X_y=True)
    X, y, c = X[:300] / 16, y[:300], np.arange(300) % 4
    est = PartialPersonalizedClassifier(module=Slow, n_rounds=3, random_state=0, tol=None).fit(X, y, c)
    expected = {k: est.predict_proba(X[:20], np.full(20, k)) for k in range(4)}
    wrong = []

    def serve(k):
        for _ in range(3):
            got = est.predict_proba(X[:20], np.full(20, k))
            wrong.extend([k] if not np.allclose(got, expected[k], rtol=0, atol=1e-7) else [])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
