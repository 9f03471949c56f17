"""The scratch baseline (demp.app.methods.scratch): a finished run's final widths, freshly
initialised and trained densely; its summary places it at the source's point; bad sources are
refused before anything is written."""
import json
import math

import pytest
import torch
import torch.nn as nn
import yaml

import demp
from demp import DempError
from demp.app.config import config_to_dict
from demp.app.export import example_input, load_run_model
from demp.app.measure import Arch
from demp.app.methods import MethodConfig, create_method
from demp.app.models import create_model
from demp.app.training import train
from demp.core.persist import fresh_like, module_shapes, save_pruned
from demp.core.skip import ChannelSelect
from demp.experiments.text import format_summary
from test_training import tiny

ZOO = ("small_cnn", "vgg16_bn", "resnet18", "vit_tiny", "mlp", "mobilenetv2_tiny", "densenet_tiny")
"""Every model a run trains (resnet50 shares resnet18's code; its Bottleneck rule is tested below)."""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny DemP run (synthetic data) that removed units: (folder, summary)."""
    folder = tmp_path_factory.mktemp("source") / "demp-run"
    summary = train(tiny("method.target=0.3", "method.reg_peak=0.2"), out_dir=str(folder), progress=False)
    assert summary["units_final"] < summary["units_initial"]
    return folder, summary


def scratch_config(folder, *more):
    return tiny("method.name=scratch", f"method.widths_from={folder}", *more)


def scratch_method(folder) -> demp.app.methods.Method:
    return create_method(MethodConfig("scratch", widths_from=str(folder)))


# ----------------------------------------------------------------------------- training from a run

@pytest.fixture(scope="module")
def scratch_run(source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scratch") / "run"
    return folder, train(scratch_config(source[0]), out_dir=str(folder), progress=False)


def test_scratch_trains_the_source_widths(source, scratch_run):
    (src_dir, src), (run_dir, summary) = source, scratch_run
    assert summary["widths_final"] == src["widths_final"]
    assert module_shapes(load_run_model(run_dir / "model.pt")) == module_shapes(load_run_model(src_dir / "model.pt"))
    assert summary["prune_events"] == 0 and summary["units_final"] == src["units_final"]
    for key in ("units", "params", "fwd_flops"):   # fractions of the same full-width network as the source's
        assert summary[f"{key}_initial"] == src[f"{key}_initial"]
        assert summary[f"{key}_remaining"] == pytest.approx(src[f"{key}_remaining"])
    model = load_run_model(run_dir / "model.pt")
    per_example = Arch.measure(model, example_input(model, 2)).train_flops
    assert summary["train_flops"] == summary["steps"] * 64 * per_example   # batch 64, no removal


def test_summary_names_the_source(source, scratch_run):
    (src_dir, src), (run_dir, summary) = source, scratch_run
    assert summary["method"] == "scratch" and summary["label"] == "demp"
    assert (summary["knob"], summary["knob_name"]) == (src["knob"], src["knob_name"]) == (0.3, "target_units")
    assert summary["widths_from"] == {"path": str(src_dir), "method": "demp", "label": None, "knob": 0.3,
                                      "knob_name": "target_units", "seed": 0, "optimizer": "adamw",
                                      "test_acc": src["test_acc"], "units_remaining": src["units_remaining"],
                                      "params_remaining": src["params_remaining"],
                                      "fwd_flops_remaining": src["fwd_flops_remaining"]}
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert 0 <= summary["test_acc"] <= 1
    assert (f"widths from {src_dir} (demp, target_units 0.3, seed 0; test accuracy {100 * src['test_acc']:.2f}%)"
            in format_summary(summary))


@pytest.mark.filterwarnings("ignore:scratch trains with another protocol")
def test_a_run_label_wins_and_model_pt_names_the_run(source, tmp_path):
    summary = train(scratch_config(source[0] / "model.pt", "label=mine", "train.max_steps=2"),
                    out_dir=str(tmp_path / "run"), progress=False)
    assert summary["label"] == "mine" and summary["widths_from"]["path"] == str(source[0])


def test_weights_are_drawn_afresh(source):
    """Nothing trained survives: every parameter differs from the source's, norms start at 1/0 with
    reset statistics, and conv weights have the Kaiming scale of their new widths."""
    src_dir, _ = source
    trained = load_run_model(src_dir / "model.pt")
    config = config_to_dict(scratch_config(src_dir))
    full = create_model(**trained.demp_spec)
    fresh = scratch_method(src_dir).initial_model(full, config)
    assert fresh is not full and module_shapes(full) == module_shapes(create_model(**trained.demp_spec))
    assert module_shapes(fresh) == module_shapes(trained)
    old = dict(trained.named_parameters())
    for name, p in fresh.named_parameters():
        assert p.shape == old[name].shape and not torch.equal(p, old[name]), name
    for m in fresh.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
            assert not m.running_mean.any() and torch.equal(m.running_var, torch.ones_like(m.running_var))
    convs = [m for m in fresh.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 500]
    for conv in convs:
        expected = math.sqrt(2 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.2)
    assert convs


def pruned_zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model (width 0.25, 32x32 images) with about a third of every site's units removed."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, width=0.25, image_size=32).eval()
    x = example_input(model, 4)
    marks = {s.name: torch.arange(s.width) % 3 == 1 for s in demp.list_sites(model, x)}
    report = demp.remove_units(model, marks, x, exact=False)
    assert report.units_removed > 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)   # stands for training
    return model, x


def fake_run(folder, model: nn.Module, dataset: str = "synthetic", **config) -> None:
    """A finished run folder holding ``model``, as `demp train` writes one."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"name": dataset}, **config}))
    (folder / "summary.json").write_text(json.dumps({"method": "snap", "dataset": dataset, "knob": 0.5,
                                                     "knob_name": "target", "seed": 3}))
    save_pruned(model, folder / "model.pt")


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_resizes_from_a_pruned_run(name, tmp_path):
    pruned, x = pruned_zoo_model(name)
    fake_run(tmp_path / "run", pruned)
    full = create_model(**pruned.demp_spec)
    fresh = scratch_method(tmp_path / "run").initial_model(full, {"data": {"name": "synthetic"}})
    assert module_shapes(fresh) == module_shapes(pruned)
    assert [s.width for s in demp.list_sites(fresh, x)] == [s.width for s in demp.list_sites(pruned, x)]
    old = dict(pruned.named_parameters())
    assert all(not torch.equal(p, old[n]) for n, p in fresh.named_parameters() if p.numel() > 1)
    for (n, a), b in zip(fresh.named_buffers(), pruned.buffers()):   # structure kept: the skip paths' channel pairs
        if n.endswith((".src", ".dst")):
            assert torch.equal(a, b)
    assert any(isinstance(m, ChannelSelect) for m in fresh.modules()) == (name == "resnet18")
    fresh.train()
    loss = fresh(x).logsumexp(1).mean()   # trains: a forward and backward at the new widths
    loss.backward()
    assert all(p.grad is not None for p in fresh.parameters())


def test_the_models_own_initialisation_is_drawn_again(tmp_path):
    """resnet50's blocks start as their shortcut (zero last-BN gamma) and the ViT's positions have
    std 0.02: fresh_like runs each model's own reset_parameters after the layers' defaults."""
    r50 = create_model("resnet50", width=0.125, image_size=16)
    save_pruned(r50, tmp_path / "r50.pt")
    fresh = fresh_like(tmp_path / "r50.pt", create_model("resnet50", width=0.125, image_size=16))
    assert all(not b.bn3.weight.any() for b in fresh.modules() if hasattr(b, "bn3"))
    vit, _ = pruned_zoo_model("vit_tiny")
    save_pruned(vit, tmp_path / "vit.pt")
    fresh = fresh_like(tmp_path / "vit.pt", create_model(**vit.demp_spec))
    assert fresh.pos_embed.std().item() == pytest.approx(0.02, rel=0.2)
    assert fresh.blocks[0].ffn.fc1.out_features == vit.blocks[0].ffn.fc1.out_features


def test_a_parameter_without_a_reset_is_refused(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.fc(x) * self.gain
    save_pruned(Scaled(), tmp_path / "m.pt")
    with pytest.raises(DempError, match=r"no reset_parameters\(\) draws parameters \['gain'\]"):
        fresh_like(tmp_path / "m.pt", Scaled())


# ----------------------------------------------------------------------------- refusals

def refused(folder, config: dict, match: str, model: nn.Module | None = None) -> None:
    model = model if model is not None else create_model("small_cnn", width=0.25, image_size=16)
    with pytest.raises(DempError, match=match):
        scratch_method(folder).initial_model(model, config)


def test_bad_sources_are_refused(tmp_path, source):
    synthetic = {"data": {"name": "synthetic"}}
    refused(tmp_path / "missing", synthetic, "does not exist; give the folder of a finished run")
    (tmp_path / "plain").mkdir()
    refused(tmp_path / "plain", synthetic, "is not a run folder")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "config.yaml").write_text("{}")
    refused(tmp_path / "running", synthetic, r"has not finished \(no summary.json\)")
    with pytest.raises(DempError, match="method scratch needs widths_from"):
        tiny("method.name=scratch")


def test_another_model_or_dataset_is_refused(source, tmp_path):
    src_dir, _ = source
    spec = load_run_model(src_dir / "model.pt").demp_spec
    refused(src_dir, {"data": {"name": "synthetic"}}, r"another model .*width 0.25 -> 0.5",
            create_model(**{**spec, "width": 0.5}))
    refused(src_dir, {"data": {"name": "synthetic"}}, r"another model .*name 'small_cnn' -> 'mlp'",
            create_model(**{**spec, "name": "mlp"}))
    refused(src_dir, {"data": {"name": "cifar10"}}, "trained on 'synthetic', this config on 'cifar10'",
            create_model(**spec))
    with pytest.raises(DempError, match="trained another model"):   # through `demp train`, before any file
        train(scratch_config(src_dir, "model.width=0.5"), out_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_widths_that_do_not_fit_are_refused(tmp_path):
    model, _ = pruned_zoo_model("vgg16_bn")
    wide = create_model(**model.demp_spec)
    first = next(m for m in wide.modules() if isinstance(m, nn.Conv2d))
    first.out_channels += 1   # a tampered file: wider than the full model
    fake_run(tmp_path / "wide", wide)
    refused(tmp_path / "wide", {"data": {"name": "synthetic"}}, r"wider than its full width \(features.0.conv"
            r".out_channels 17 > 16\)", create_model(**model.demp_spec))
    (tmp_path / "wide" / "model.pt").unlink()
    renamed = create_model(**model.demp_spec)
    renamed.extra = nn.Linear(2, 2)
    save_pruned(renamed, tmp_path / "wide" / "model.pt")
    refused(tmp_path / "wide", {"data": {"name": "synthetic"}}, r"do not fit the configured model: saved modules "
            r"\['extra'\] do not exist", create_model(**model.demp_spec))


def test_another_protocol_trains_with_a_warning(source):
    src_dir, _ = source
    config = config_to_dict(scratch_config(src_dir, "train.epochs=3", "optim.lr=0.02"))
    model = load_run_model(src_dir / "model.pt")
    with pytest.warns(UserWarning, match=r"another protocol .*train.epochs 2 -> 3; optim.lr 0.01 -> 0.02"):
        scratch_method(src_dir).initial_model(create_model(**model.demp_spec), config)


def test_the_relu_language_model_starts_afresh_at_its_pruned_widths(tmp_path):
    """relu_lm's learned positions and embeddings are drawn again (its reset_parameters)."""
    from demp.core.persist import fresh_like, save_pruned
    torch.manual_seed(0)
    spec = dict(num_classes=256, in_channels=1, width=1.0, image_size=16, dim=32, depth=2, heads=2, context=16)
    model = create_model("relu_lm", **spec)
    x = torch.randint(0, 256, (4, 16))
    dead = {s.name: torch.arange(s.width) < s.width // 3 for s in demp.list_sites(model, x)}
    demp.remove_units(model, dead, x, exact=False)
    save_pruned(model, tmp_path / "model.pt")
    fresh = fresh_like(tmp_path / "model.pt", create_model("relu_lm", **spec))
    assert module_shapes(fresh) == module_shapes(model)
    old = dict(model.named_parameters())
    assert all(not torch.equal(p, old[n]) for n, p in fresh.named_parameters() if p.numel() > 1 and p.std() > 0)
    assert fresh(x).shape == (4, 16, 256)
