"""Zoo models: rebuilt from their spec at the pruned widths (load_run_model); ONNX parity."""
import pytest
import torch
import torch.nn as nn

import demp
from demp import DempError
from demp.app.export import example_input, export_onnx, load_run_model
from demp.core.persist import save_pruned
from demp.app.models import create_model
from demp.core.skip import ChannelSelect


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
    loaded = load_run_model(tmp_path / "model.pt")
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
    loaded = dict(load_run_model(tmp_path / "model.pt").named_modules())
    for name, m in selects.items():
        twin = loaded[name]
        assert (twin.in_channels, twin.out_channels) == (m.in_channels, m.out_channels)
        assert torch.equal(twin.src, m.src) and torch.equal(twin.dst, m.dst)


def test_a_zoo_model_needs_the_app_loader_or_a_model(tmp_path):
    model = pruned("resnet18", 0.125)
    save_pruned(model, tmp_path / "model.pt")
    with pytest.raises(DempError, match=r"demp zoo model: demp.app.export.load_run_model\(path\)"):
        demp.load_pruned(tmp_path / "model.pt")
    fresh = create_model(**model.demp_spec)
    assert demp.count_params(demp.load_pruned(tmp_path / "model.pt", model=fresh)) == demp.count_params(model)


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


def test_byte_lm_example_input_round_trip_and_onnx(tmp_path):
    """A sequence model's example is a batch of byte ids over its context; pruned, saved, rebuilt, exported."""
    torch.manual_seed(0)
    model = create_model("relu_lm", num_classes=256, width=0.25, context=16, depth=2)
    x = example_input(model, 2)
    assert x.shape == (2, 16) and x.dtype == torch.long
    marks = {s.name: torch.arange(s.width) % 3 == 0 for s in demp.list_sites(model, x)}
    demp.remove_units(model, marks, x, exact=False)
    save_pruned(model.eval(), tmp_path / "model.pt")
    again = load_run_model(tmp_path / "model.pt")
    ids = torch.randint(0, 256, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids))
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    export_onnx(model, x, tmp_path / "model.onnx")
    out = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"input": ids.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(out) - model(ids)).abs().max().item() < 1e-4
