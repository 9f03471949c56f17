"""Saving a pruned model of any class and reloading it into a fresh full-width instance
(demp.core.persist); bad files are refused without running pickled code."""
import pytest
import torch
import torch.nn as nn

import demp
from demp import DempError
from demp.core import persist
from demp.core.persist import load_pruned, save_pruned
from user_archs import UserNet, user_net


def _pruned_user_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model, x = user_net()
    model.eval()
    report = demp.remove_units(model, demp.find_dead_units(model, [x]), x)
    assert report.units_removed > 0
    return model, x


def test_users_own_model_reloads_into_a_fresh_instance(tmp_path):
    model, x = _pruned_user_net()
    full = UserNet()
    assert model.fc.in_features < full.fc.in_features and model.dw.groups < full.dw.groups
    demp.save_pruned(model, tmp_path / "mine.pt")
    loaded = demp.load_pruned(tmp_path / "mine.pt", model=UserNet())
    assert not loaded.training
    widths = lambda m: {n: persist.width_attrs(mod) for n, mod in m.named_modules()}
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


