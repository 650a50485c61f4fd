"""Tests of pfedest.nn.splits: which parameters are personal."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from torch import nn

from pfedest.nn.modules import MLP, AdaptedLayer, SmallCNN, adapter_parameter_count
from pfedest.nn.splits import (
    NAMED_SPLITS,
    AdapterSplit,
    FullSplit,
    FunctionSplit,
    HeadSplit,
    InputSplit,
    NameSplit,
    NoSplit,
    Split,
    make_split,
)

FAST = settings(max_examples=25, deadline=None, database=None)


def param_names(module):
    return [n for n, _ in module.named_parameters()]


def share(module, names):
    params = dict(module.named_parameters())
    return sum(params[n].numel() for n in names) / sum(p.numel() for p in params.values())


def layer_sizes(module):
    """(parameter names, size) of each Linear of an MLP, input first."""
    return [([f"{n}.weight", f"{n}.bias"], m.weight.numel() + m.bias.numel())
            for n, m in module.named_modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------- make_split


@pytest.mark.parametrize("name, cls", [("head", HeadSplit), ("input", InputSplit), ("adapters", AdapterSplit),
                                       ("full", FullSplit), ("none", NoSplit)])
def test_make_split_names(name, cls):
    split = make_split(name)
    assert type(split) is cls
    assert NAMED_SPLITS[name] is cls


def test_make_split_named_splits_resolve_as_documented():
    mlp = MLP(4, 3, (8, 8))
    names = param_names(mlp)
    assert make_split("head").resolve(mlp)[1] == ["net.4.weight", "net.4.bias"]
    assert make_split("input").resolve(mlp)[1] == ["net.0.weight", "net.0.bias"]
    assert make_split("full").resolve(mlp)[1] == names
    assert make_split("none").resolve(mlp)[1] == []
    module, personal = make_split("adapters").resolve(mlp)
    assert personal and all(".adapter." in n for n in personal)


def test_make_split_patterns():
    split = make_split(["*.bias"])
    assert isinstance(split, NameSplit)
    assert split.personal_names(MLP(4, 3, (8,))) == ["net.0.bias", "net.2.bias"]
    assert isinstance(make_split(("net.0.*",)), NameSplit)
    assert make_split(("net.0.*",)).patterns == ["net.0.*"]


def test_make_split_callable():
    func = lambda name, p: p.dim() == 1  # noqa: E731
    split = make_split(func)
    assert isinstance(split, FunctionSplit)
    assert split.func is func
    assert split.resolve(MLP(4, 3, (8,)))[1] == ["net.0.bias", "net.2.bias"]


def test_make_split_split_object_passes_through():
    split = HeadSplit(fraction=0.3)
    assert make_split(split) is split


def test_make_split_unknown_name_lists_names():
    with pytest.raises(ValueError) as info:
        make_split("heads")
    message = str(info.value)
    assert "'heads'" in message
    for name in NAMED_SPLITS:
        assert repr(name) in message


@pytest.mark.parametrize("bad", [3, 2.5, None, ["net.0.*", 1], {"head": 1}])
def test_make_split_bad_type(bad):
    with pytest.raises(TypeError, match="split must be"):
        make_split(bad)


# --------------------------------------------------------------------------- HeadSplit / InputSplit


def test_head_and_input_default_pick_last_and_first_layer():
    mlp = MLP(5, 2, (7, 6, 4))
    assert HeadSplit().personal_names(mlp) == ["net.6.weight", "net.6.bias"]
    assert InputSplit().personal_names(mlp) == ["net.0.weight", "net.0.bias"]
    cnn = SmallCNN(3, 4)
    assert HeadSplit().resolve(cnn)[1] == ["classifier.3.weight", "classifier.3.bias"]
    assert InputSplit().resolve(cnn)[1] == ["features.0.weight", "features.0.bias"]


def test_head_fraction_picks_trailing_layers():
    mlp = MLP(10, 2, (10, 10))  # sizes 110, 110, 22
    assert HeadSplit(fraction=0.05).personal_names(mlp) == ["net.4.weight", "net.4.bias"]
    # 22 / 242 < 0.2 <= 132 / 242
    assert sorted(HeadSplit(fraction=0.2).personal_names(mlp)) == sorted(
        ["net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"])
    # never every layer, even when asked for everything
    assert len(HeadSplit(fraction=1.0).personal_names(mlp)) == 4
    assert HeadSplit(fraction=1.0).resolve(mlp)[1] == ["net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]


def test_input_fraction_picks_leading_layers():
    mlp = MLP(10, 2, (10, 10))  # sizes 110, 110, 22
    assert InputSplit(fraction=0.4).personal_names(mlp) == ["net.0.weight", "net.0.bias"]
    assert InputSplit(fraction=0.5).personal_names(mlp) == ["net.0.weight", "net.0.bias",
                                                            "net.2.weight", "net.2.bias"]
    assert len(InputSplit(fraction=1.0).personal_names(mlp)) == 4


def test_fraction_reached_exactly_counts():
    mlp = MLP(1, 2, (1, 1))  # sizes 2, 2, 4 of 8 parameters
    assert HeadSplit(fraction=0.5).personal_names(mlp) == ["net.4.weight", "net.4.bias"]
    assert InputSplit(fraction=0.25).personal_names(mlp) == ["net.0.weight", "net.0.bias"]
    assert len(HeadSplit(fraction=0.51).personal_names(mlp)) == 4
    assert len(InputSplit(fraction=0.26).personal_names(mlp)) == 4


@pytest.mark.parametrize("cls", [HeadSplit, InputSplit])
@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_layer_split_bad_fraction(cls, fraction):
    with pytest.raises(ValueError, match="fraction"):
        cls(fraction=fraction).personal_names(MLP(4, 3, (8,)))


def test_head_split_of_single_layer_module_is_refused():
    with pytest.raises(ValueError, match="every parameter"):
        HeadSplit().resolve(nn.Linear(3, 2))


widths = st.lists(st.integers(1, 12), min_size=1, max_size=4)


@FAST
@given(cls=st.sampled_from([HeadSplit, InputSplit]), n_features=st.integers(1, 12), n_classes=st.integers(1, 6),
       hidden=widths, fraction=st.floats(0.001, 1.0))
def test_layer_fraction_properties(cls, n_features, n_classes, hidden, fraction):
    mlp = MLP(n_features, n_classes, hidden)
    layers = layer_sizes(mlp)
    if cls is HeadSplit:
        layers = layers[::-1]
    total = sum(size for _, size in layers)
    chosen = cls(fraction=fraction).personal_names(mlp)

    # a prefix (in the split's order) of whole layers, at least one, never all
    k = next(i for i in range(1, len(layers) + 1) if sorted(sum((n for n, _ in layers[:i]), [])) == sorted(chosen))
    assert 1 <= k <= len(layers) - 1
    got = sum(size for _, size in layers[:k])
    # reaches the fraction unless capped at n_layers - 1
    if k < len(layers) - 1:
        assert got / total >= fraction
    # the fewest such layers (allowing for the exact-boundary rounding case tested separately)
    if k > 1:
        before = sum(size for _, size in layers[:k - 1]) / total
        assert before < fraction or math.isclose(before, fraction)


@FAST
@given(cls=st.sampled_from([HeadSplit, InputSplit]), n_features=st.integers(1, 12), hidden=widths,
       fractions=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=5))
def test_layer_fraction_monotone(cls, n_features, hidden, fractions):
    mlp = MLP(n_features, 3, hidden)
    counts = [len(cls(fraction=f).personal_names(mlp)) for f in sorted(fractions)]
    assert counts == sorted(counts)


def test_head_fraction_equal_to_exact_share_takes_only_that_layer():
    mlp = MLP(1, 4, (2, 6))  # sizes 4, 18, 28: the head is exactly 56 % of 50 parameters
    assert share(mlp, ["net.4.weight", "net.4.bias"]) == 0.56
    assert HeadSplit(fraction=0.56).personal_names(mlp) == ["net.4.weight", "net.4.bias"]


# --------------------------------------------------------------------------- AdapterSplit


def test_adapter_resolve_inserts_adapters_and_keeps_outputs():
    torch.manual_seed(0)
    mlp = MLP(6, 3, (16, 8))
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    names_before = param_names(mlp)
    module, personal = AdapterSplit(width=3).resolve(mlp)

    assert module is not mlp
    assert param_names(mlp) == names_before  # original not mutated
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert not any(isinstance(m, AdaptedLayer) for m in mlp.modules())

    assert isinstance(module.net[0], AdaptedLayer) and isinstance(module.net[2], AdaptedLayer)
    assert not isinstance(module.net[4], AdaptedLayer)  # no adapter after the output layer
    assert personal == [n for n in param_names(module) if ".adapter." in n]
    assert len(personal) == 8
    assert module.net[0].adapter.down.out_features == 3

    x = torch.randn(11, 6)
    assert torch.allclose(module(x), mlp(x))
    # the adapters are on the forward path: changing them changes the output
    with torch.no_grad():
        module.net[2].adapter.up.weight.normal_()
        module.net[2].adapter.up.bias.normal_()
    assert not torch.allclose(module(x), mlp(x))


def test_adapter_resolve_on_cnn_keeps_outputs():
    torch.manual_seed(1)
    cnn = SmallCNN(2, 5)
    module, personal = AdapterSplit(fraction=0.05).resolve(cnn)
    assert {n.split(".adapter.")[0] for n in personal} == {"features.0", "features.3", "classifier.1"}
    x = torch.randn(4, 2, 9, 7)
    assert torch.allclose(module(x), cnn(x))


def test_adapter_share_close_to_target():
    mlp = MLP(20, 5, (64, 64))
    for fraction in (0.1, 0.3, 0.5):
        module, personal = AdapterSplit(fraction=fraction).resolve(mlp)
        assert abs(share(module, personal) - fraction) < 0.01


def test_adapter_width_overrides_fraction():
    mlp = MLP(20, 5, (64, 64))
    a = AdapterSplit(fraction=0.5, width=2)
    assert a.adapter_width(mlp) == 2
    module, personal = a.resolve(mlp)
    assert module.net[0].adapter.down.weight.shape == (2, 64)
    assert module.net[2].adapter.up.weight.shape == (64, 2)
    assert share(module, personal) < 0.2


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -2}, {"fraction": 0.0}, {"fraction": 1.0}])
def test_adapter_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AdapterSplit(**kwargs).resolve(MLP(4, 3, (8,)))


@pytest.mark.parametrize("module", [MLP(4, 3, ()), nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.ReLU())])
@pytest.mark.parametrize("kwargs", [{}, {"width": 2}])
def test_adapter_without_hidden_layer_is_refused(module, kwargs):
    with pytest.raises(ValueError, match="no Linear or Conv2d layer before its output layer"):
        AdapterSplit(**kwargs).resolve(module)


@FAST
@given(n_features=st.integers(1, 30), n_classes=st.integers(1, 8), hidden=widths,
       fraction=st.floats(0.01, 0.9))
def test_adapter_share_no_worse_than_neighbouring_widths(n_features, n_classes, hidden, fraction):
    mlp = MLP(n_features, n_classes, hidden)
    base = sum(p.numel() for p in mlp.parameters())
    split = AdapterSplit(fraction=fraction)
    module, personal = split.resolve(mlp)
    width = split.adapter_width(mlp)
    assert width >= 1
    assert all(m.adapter.down.out_features == width for m in module.modules() if isinstance(m, AdaptedLayer))
    got = abs(share(module, personal) - fraction)
    assert math.isclose(share(module, personal),
                        adapter_parameter_count(mlp, width) / (base + adapter_parameter_count(mlp, width)))
    for w in (width - 1, width + 1):
        if w >= 1:
            added = adapter_parameter_count(mlp, w)
            assert got <= abs(added / (base + added) - fraction) + 1e-12


# --------------------------------------------------------------------------- Split.resolve checks


def test_resolve_refuses_empty_selection():
    with pytest.raises(ValueError, match="'none'"):
        NameSplit(["nothing.*"]).resolve(MLP(4, 3, (8,)))
    with pytest.raises(ValueError, match="'none'"):
        FunctionSplit(lambda n, p: False).resolve(MLP(4, 3, (8,)))


def test_resolve_refuses_full_selection():
    with pytest.raises(ValueError, match="'full'"):
        NameSplit(["*"]).resolve(MLP(4, 3, (8,)))


def test_full_and_none_allowed():
    mlp = MLP(4, 3, (8,))
    module, personal = FullSplit().resolve(mlp)
    assert module is mlp and personal == param_names(mlp)
    module, personal = NoSplit().resolve(mlp)
    assert module is mlp and personal == []


def test_resolve_orders_names_and_rejects_unknown():
    class Reversed(Split):
        def personal_names(self, module):
            return ["net.2.bias", "net.0.bias"]

    class Unknown(Split):
        def personal_names(self, module):
            return ["net.0.bias", "missing.weight"]

    mlp = MLP(4, 3, (8,))
    assert Reversed().resolve(mlp)[1] == ["net.0.bias", "net.2.bias"]
    with pytest.raises(ValueError, match=re.escape("['missing.weight']")):
        Unknown().resolve(mlp)


def test_name_split_string_pattern_refused():
    with pytest.raises(TypeError, match="list of strings"):
        NameSplit("net.0.*").resolve(MLP(4, 3, (8,)))


def test_name_split_exact_names_and_globs():
    mlp = MLP(4, 3, (8, 8))
    assert NameSplit(["net.2.weight"]).resolve(mlp)[1] == ["net.2.weight"]
    assert NameSplit(["net.[02].*"]).resolve(mlp)[1] == ["net.0.weight", "net.0.bias",
                                                          "net.2.weight", "net.2.bias"]


# --------------------------------------------------------------------------- scikit-learn parameters


def test_splits_clone_and_params():
    assert clone(HeadSplit(fraction=0.2)).fraction == 0.2
    assert clone(InputSplit(fraction=0.7)).fraction == 0.7
    a = clone(AdapterSplit(fraction=0.3, width=4))
    assert (a.fraction, a.width) == (0.3, 4)
    assert clone(NameSplit(["net.0.*"])).patterns == ["net.0.*"]
    assert HeadSplit().get_params() == {"fraction": None}
    assert AdapterSplit().get_params() == {"fraction": 0.1, "width": None}
    assert NameSplit(["a"]).get_params() == {"patterns": ["a"]}
    assert FullSplit().get_params() == {} and NoSplit().get_params() == {}

    split = HeadSplit()
    assert split.set_params(fraction=0.5) is split
    assert split.fraction == 0.5
    assert len(split.personal_names(MLP(10, 2, (10, 10)))) == 4  # 22/242 < 0.5: two layers
    with pytest.raises(ValueError):
        split.set_params(width=3)

    adapters = AdapterSplit().set_params(width=5)
    assert adapters.adapter_width(MLP(4, 3, (8,))) == 5


def test_cloned_split_is_independent():
    original = NameSplit(["net.0.*"])
    copy = clone(original)
    copy.patterns.append("net.2.*")
    assert original.patterns == ["net.0.*"]
