"""Saving and reloading pruned models without their widths; ONNX parity."""
import pytest
import torch
import torch.nn as nn

import demp
from demp import DempError
from demp.app import export
from demp.app.export import example_input, export_onnx, load_pruned, save_pruned
from demp.app.models import create_model
from demp.core.skip import ChannelSelect
from user_archs import UserNet, user_net


def pruned(name: str, width: float, seed: int = 0) -> nn.Module:
    """A zoo model with about a third of every site's units removed (not only dead ones)."""
    torch.manual_seed(seed)
    model = create_model(name, width=width)
    x = example_input(model, 2)
    g = torch.Generator().manual_seed(seed)
    marks = {s.name: torch.rand(s.width, generator=g) < 0.35 for s in demp.list_sites(model, x)}
    report = demp.remove_units(model, marks, x, exact=False)
    assert report.units_removed > 0
    return model.eval()


@pytest.mark.parametrize("name, width", [("resnet18", 0.125), ("vit_tiny", 0.25)])
def test_round_trip_gives_identical_outputs(tmp_path, name, width):
    model = pruned(name, width)
    save_pruned(model, tmp_path / "model.pt")
    loaded = load_pruned(tmp_path / "model.pt")
    assert not loaded.training and loaded.demp_spec == model.demp_spec
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert demp.count_params(loaded) == demp.count_params(model)
    assert [s.width for s in demp.list_sites(loaded, x)] == [s.width for s in demp.list_sites(model, x)]


def test_channel_select_widths_are_restored(tmp_path):
    model = pruned("resnet18", 0.125, seed=1)
    selects = {n: m for n, m in model.named_modules() if isinstance(m, ChannelSelect)}
    assert any(m.in_channels != m.out_channels or m.src.numel() < m.out_channels for m in selects.values())
    save_pruned(model, tmp_path / "model.pt")
    loaded = dict(load_pruned(tmp_path / "model.pt").named_modules())
    for name, m in selects.items():
        twin = loaded[name]
        assert (twin.in_channels, twin.out_channels) == (m.in_channels, m.out_channels)
        assert torch.equal(twin.src, m.src) and torch.equal(twin.dst, m.dst)


def _pruned_user_net() -> tuple[nn.Module, torch.Tensor]:
    model, x = user_net()
    model.eval()
    report = demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert report.units_removed > 0
    return model, x


def test_users_own_model_reloads_into_a_fresh_instance(tmp_path):
    model, x = _pruned_user_net()
    assert (model.group.out_channels, model.dw.groups, model.fc.in_features) == (4, 4, 80)
    demp.save_pruned(model, tmp_path / "mine.pt")
    loaded = demp.load_pruned(tmp_path / "mine.pt", model=UserNet())
    assert not loaded.training
    widths = lambda m: {n: export._width_attrs(mod) for n, mod in m.named_modules()}
    assert widths(loaded) == widths(model)
    assert {n: t.shape for n, t in loaded.named_buffers()} == {n: t.shape for n, t in model.named_buffers()}
    assert torch.equal(loaded.scale, model.scale)  # a non-persistent buffer comes back too
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [s.width for s in demp.list_sites(loaded, x)] == [s.width for s in demp.list_sites(model, x)]


def test_users_own_model_needs_its_class(tmp_path):
    model, _ = _pruned_user_net()
    save_pruned(model, tmp_path / "mine.pt")
    with pytest.raises(DempError, match=r"model=UserNet\(...\)"):
        load_pruned(tmp_path / "mine.pt")
    with pytest.raises(DempError, match="holds a UserNet, but model= is a Sequential"):
        load_pruned(tmp_path / "mine.pt", model=nn.Sequential(nn.Linear(2, 2)))


def test_bad_files(tmp_path):
    with pytest.raises(DempError, match="no saved model"):
        load_pruned(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DempError, match="not a model saved by demp.save_pruned"):
        load_pruned(tmp_path / "other.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module never runs on load
    with pytest.raises(DempError, match="cannot read .*not written by demp.save_pruned"):
        load_pruned(tmp_path / "module.pt")


@pytest.mark.parametrize("name, width", [("resnet18", 0.125), ("vit_tiny", 0.25)])
def test_onnx_matches_torch(tmp_path, name, width):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = pruned(name, width)
    export_onnx(model, example_input(model), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export example
    out = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(out) - model(x)).abs().max().item() < 1e-4
