"""Tests for the model registry and model families (small widths, CPU, a few seconds)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from demp.app.models import create_model, list_models, register_model
from demp.app.models.resnet import BasicBlock, Bottleneck
from demp.core.skip import ChannelSelect

ALL_MODELS = [
    "densenet_tiny",
    "mlp",
    "mobilenetv2_tiny",
    "resnet18",
    "resnet50",
    "small_cnn",
    "vgg16_bn",
    "vit_tiny",
]


def n_params(model: nn.Module) -> int:
    """Total number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def state_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of every parameter and buffer."""
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes only, so width-1 models cost no init time."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


SEQUENCE_MODELS = ["relu_lm"]


def test_list_models_has_every_family() -> None:
    assert list_models() == sorted(ALL_MODELS + SEQUENCE_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, width=0.125)
    logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 7)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "small_cnn"])
def test_grayscale_28(name: str) -> None:
    model = create_model(name, in_channels=1, image_size=28, width=0.25)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_flattens_the_final_map() -> None:
    for size, side in ((32, 1), (64, 2)):
        model = create_model("vgg16_bn", width=0.125, image_size=size)
        assert model.classifier[0].fc.in_features == 64 * side * side
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_each_relu_module_is_one_activation_site(name: str) -> None:
    model = create_model(name, width=0.125)
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert relus and len({id(m) for m in relus}) == len(relus)
    calls = {id(m): 0 for m in relus}
    for m in relus:
        m.register_forward_hook(lambda mod, _i, _o: calls.__setitem__(id(mod), calls[id(mod)] + 1))
    model(torch.randn(2, 3, 32, 32))
    assert set(calls.values()) == {1}


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", {}, 11_173_962),
        ("resnet50", {}, 23_520_842),
        ("vgg16_bn", {}, 15_251_402),
        ("vgg16_bn", {"image_size": 64}, 16_037_834),
    ],
)
def test_parameter_counts_at_width_one(name: str, kwargs: dict, expected: int) -> None:
    assert n_params(meta_model(name, **kwargs)) == expected


def test_width_scales_parameters() -> None:
    for name in ALL_MODELS:
        full, quarter = n_params(meta_model(name)), n_params(meta_model(name, width=0.25))
        assert quarter < full / 3, name


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mlp", {"hidden": (32, 16, 8)}),
        ("small_cnn", {"in_channels": 1, "image_size": 28, "hidden": 64}),
        ("resnet50", {"stem": "imagenet", "image_size": 64, "num_classes": 5}),
        ("vit_tiny", {"dim": 64, "depth": 2, "heads": 2, "mlp_ratio": 3}),
        ("densenet_tiny", {"growth": 8, "block_layers": (2, 2, 2)}),
    ]
    + [(name, {}) for name in ALL_MODELS],
)
def test_demp_spec_round_trips(name: str, kwargs: dict) -> None:
    model = meta_model(name, width=0.25, **kwargs)
    assert model.demp_spec["name"] == name and model.demp_spec["width"] == 0.25
    rebuilt = meta_model(**model.demp_spec)
    assert rebuilt.demp_spec == model.demp_spec
    assert state_shapes(rebuilt) == state_shapes(model)


def test_errors() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnet19")
    for width in (0, -1.0):
        with pytest.raises(ValueError, match="width"):
            create_model("mlp", width=width)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **kw: nn.Identity())
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet50", width=0.125, stem="tiny")
    with pytest.raises(ValueError, match="image_size"):
        create_model("vgg16_bn", width=0.125, image_size=28)
    with pytest.raises(ValueError, match="patch"):
        create_model("vit_tiny", width=0.125, image_size=30)


def test_channel_select_identity_is_identity_in_a_resnet_block() -> None:
    torch.manual_seed(0)
    block = BasicBlock(8, 8).eval()
    assert isinstance(block.shortcut, ChannelSelect)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = block(x)
    inner = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x_ref)))))
    ref = block.relu_out(inner + x_ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_shortcuts_project_only_where_shape_changes() -> None:
    model = create_model("resnet18", width=0.125)
    assert isinstance(model.layer1[0].shortcut, ChannelSelect)
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d)
    assert isinstance(model.layer2[1].shortcut, ChannelSelect)
    resnet50 = create_model("resnet50", width=0.125)
    assert not isinstance(resnet50.layer1[0].shortcut, ChannelSelect)  # 8 -> 32 channels
    assert isinstance(resnet50.layer1[1].shortcut, ChannelSelect)


def test_resnet50_bottlenecks_start_as_their_shortcut() -> None:
    torch.manual_seed(0)
    model = create_model("resnet50", width=0.125).eval()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.all(b.bn3.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    block = model.layer1[1]
    x = torch.relu(torch.randn(2, block.conv1.in_channels, 4, 4))
    torch.testing.assert_close(block(x), x)  # bn3 bias is 0 too, and x >= 0


def test_resnet18_activation_site_names() -> None:
    model = create_model("resnet18", width=0.125)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert names[:3] == ["stem.relu", "layer1.0.relu1", "layer1.0.relu_out"]
    assert len(names) == 1 + 8 * 2


def test_convs_are_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    conv = create_model("vgg16_bn", width=0.5).features[1].conv  # 32 -> 32, 3x3
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet18", "vit_tiny", "densenet_tiny"])
def test_one_sgd_step_reduces_loss(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=0.125)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    before = F.cross_entropy(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y)
    assert after < before


# ----------------------------------------------------------------------------- sequence models

def plant_dead_ffn_units(blocks, n: int) -> list[int]:
    """Make the first ``n`` FFN units of every block dead on any input (zero weights, negative bias)."""
    with torch.no_grad():
        for b in blocks:
            fc1 = b.ffn.fc1 if hasattr(b, "ffn") else b.fc1
            fc1.weight[:n] = 0
            fc1.bias[:n] = -1.0
    return [n] * len(blocks)


def assert_exact_ffn_removal(model: nn.Module, blocks, x: torch.Tensor) -> None:
    """Planted dead FFN units are found and removed, outputs and the optimizer stay exact."""
    from demp import find_dead_units, remove_units
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(x).float().logsumexp(-1).mean().backward()
    opt.step()     # AdamW state exists and must be sliced
    plant_dead_ffn_units(blocks, 3)
    dead = find_dead_units(model, [x])
    assert all(int(d[:3].sum()) == 3 for d in dead.values()) and len(dead) == len(blocks)
    model.eval()
    with torch.no_grad():
        before = model(x)
    widths = {n: len(d) for n, d in dead.items()}
    report = remove_units(model, dead, x[:2], opt)
    assert report.units_removed == sum(int(d.sum()) for d in dead.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    assert all(v.shape == p.shape for p, st in opt.state.items() for v in st.values() if v.dim() > 0)
    assert sum(widths.values()) - report.units_removed == sum(
        (b.ffn.fc1 if hasattr(b, "ffn") else b.fc1).out_features for b in blocks)


def test_relu_lm_shapes_causality_and_sizes() -> None:
    torch.manual_seed(0)
    model = create_model("relu_lm", num_classes=256, width=0.5, context=12, depth=2, heads=4, mlp_ratio=4)
    assert model.blocks[0].ffn.fc1.out_features == 4 * 64 and model.embed.weight.shape == (256, 64)
    x = torch.randint(0, 256, (3, 12))
    logits = model(x)
    assert logits.shape == (3, 12, 256)
    later = x.clone()
    later[:, 8:] = (later[:, 8:] + 1) % 256
    torch.testing.assert_close(model(later)[:, :8], logits[:, :8])    # no position sees the future
    assert model(x[:, :5]).shape == (3, 5, 256)
    with pytest.raises(ValueError, match="exceeds the model's context 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="integer byte sequences"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="data.name=text"):
        create_model("relu_lm", num_classes=256)


@pytest.mark.parametrize("tied", [False, True])
def test_relu_lm_ffn_units_are_removed_exactly(tied: bool) -> None:
    torch.manual_seed(0)
    model = create_model("relu_lm", num_classes=256, width=0.25, context=16, depth=2, tied=tied)
    assert (model.head.weight is model.embed.weight) == tied
    assert_exact_ffn_removal(model, model.blocks, torch.randint(0, 256, (6, 16)))
    assert (model.head.weight is model.embed.weight) == tied    # the tie survives FFN removal


def test_hf_model_is_built_from_its_config_and_pruned_exactly() -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "word_embed_proj_dim": 32, "dropout": 0.0}
    model = create_model("hf:OPTForCausalLM", num_classes=256, width=1.0, context=16, **config)
    assert model.model.config.vocab_size == 256 and model.model.config.max_position_embeddings == 16
    assert model.demp_spec["name"] == "hf:OPTForCausalLM" and model.demp_spec["ffn_dim"] == 64
    x = torch.randint(0, 256, (4, 16))
    assert model(x).shape == (4, 16, 256)
    assert_exact_ffn_removal(model, model.model.model.decoder.layers, x)


@pytest.mark.parametrize("name, kwargs, match", [
    ("hf:NoSuchModel", {}, "transformers has no model class 'NoSuchModel'"),
    ("hf:OPTForCausalLM", {"width": 0.5}, "set model.width=1"),
    ("hf:OPTForCausalLM", {"vocab_size": 100}, "vocab_size 100 differs"),
])
def test_hf_model_refusals(name: str, kwargs: dict, match: str) -> None:
    pytest.importorskip("transformers")
    kwargs = {"width": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        create_model(name, num_classes=256, **kwargs)


def test_hf_model_without_transformers(monkeypatch) -> None:
    import builtins
    real = builtins.__import__

    def no_transformers(name, *args, **kw):
        if name == "transformers":
            raise ImportError("no transformers")
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ValueError, match="needs the transformers package: pip install transformers"):
        create_model("hf:OPTForCausalLM", num_classes=256, width=1.0)
