"""Tests of pfedest.nn.modules: default networks and adapters."""

import pytest
import torch
from torch import nn

from pfedest.nn.modules import (
    MLP,
    AdaptedLayer,
    Adapter,
    SmallCNN,
    adaptable_layers,
    adapter_parameter_count,
    default_module,
    insert_adapters,
)


@pytest.mark.parametrize("hidden", [(), (5,), (7, 3), (4, 4, 4)])
def test_mlp_output_shape_and_layers(hidden):
    mlp = MLP(6, 3, hidden)
    assert mlp(torch.randn(9, 6)).shape == (9, 3)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip((6, *hidden), (*hidden, 3)))


def test_mlp_flattens_rows():
    mlp = MLP(12, 2, (4,))
    x = torch.randn(5, 3, 4)
    assert mlp(x).shape == (5, 2)
    assert torch.equal(mlp(x), mlp(x.reshape(5, 12)))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 7), (28, 28)])
def test_small_cnn_output_shape(hw):
    cnn = SmallCNN(3, 4, channels=(6, 8), hidden=10)
    assert cnn(torch.randn(2, 3, *hw)).shape == (2, 4)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 6), (6, 8)]


def test_default_module_flat_rows_is_mlp():
    module = default_module((10,), 4, (16, 8))
    assert isinstance(module, MLP)
    assert [m.out_features for m in module.modules() if isinstance(m, nn.Linear)] == [16, 8, 4]
    assert module(torch.randn(3, 10)).shape == (3, 4)


def test_default_module_chw_rows_is_cnn():
    module = default_module((3, 8, 8), 5, (16,))
    assert isinstance(module, SmallCNN)
    assert module.features[0].in_channels == 3
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_default_module_hw_rows_is_cnn_with_one_channel():
    module = default_module((6, 5), 3, (16,))
    cnns = [m for m in module.modules() if isinstance(m, SmallCNN)]
    assert len(cnns) == 1 and cnns[0].features[0].in_channels == 1
    assert not any(isinstance(m, MLP) for m in module.modules())
    assert module(torch.randn(4, 6, 5)).shape == (4, 3)


def test_adapter_starts_as_identity():
    torch.manual_seed(0)
    x = torch.randn(5, 7)
    assert torch.equal(Adapter(7, 3)(x), x)
    x = torch.randn(2, 7, 4, 4)
    conv = Adapter(7, 3, conv=True)
    assert isinstance(conv.down, nn.Conv2d) and conv.down.kernel_size == (1, 1)
    assert torch.equal(conv(x), x)


def test_adaptable_layers_skip_output_layer():
    assert [n for n, _ in adaptable_layers(SmallCNN(3, 4))] == ["features.0", "features.3", "classifier.1"]
    assert [n for n, _ in adaptable_layers(MLP(4, 3, (8, 8)))] == ["net.0", "net.2"]
    assert adaptable_layers(MLP(4, 3, ())) == []


def test_insert_adapters_on_cnn_keeps_outputs():
    torch.manual_seed(0)
    cnn = SmallCNN(3, 4)
    names_before = [n for n, _ in cnn.named_parameters()]
    adapted = insert_adapters(cnn, 2)

    assert [n for n, _ in cnn.named_parameters()] == names_before  # not mutated
    assert isinstance(adapted.features[0], AdaptedLayer) and isinstance(adapted.features[3], AdaptedLayer)
    assert isinstance(adapted.features[0].adapter.down, nn.Conv2d)
    assert isinstance(adapted.classifier[1].adapter.down, nn.Linear)
    assert not isinstance(adapted.classifier[3], AdaptedLayer)
    added = sum(p.numel() for p in adapted.parameters()) - sum(p.numel() for p in cnn.parameters())
    assert added == adapter_parameter_count(cnn, 2)

    x = torch.randn(3, 3, 10, 9)
    assert torch.allclose(adapted(x), cnn(x))
    with torch.no_grad():
        adapted.features[3].adapter.up.weight.normal_()
    assert not torch.allclose(adapted(x), cnn(x))


def test_insert_adapters_on_default_image_module():
    torch.manual_seed(0)
    module = default_module((8, 8), 3, (16,))
    adapted = insert_adapters(module, 1)
    assert sum(isinstance(m, AdaptedLayer) for m in adapted.modules()) == 3
    x = torch.randn(2, 8, 8)
    assert torch.allclose(adapted(x), module(x))


def test_insert_adapters_without_hidden_layer():
    with pytest.raises(ValueError, match="no Linear or Conv2d layer"):
        insert_adapters(MLP(4, 3, ()), 2)
