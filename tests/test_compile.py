"""A torch.compile'd model under DemonPruner: recompiled from scratch after each removal event."""
import shutil

import pytest
import torch
import torch.nn.functional as F

import demp
from ddp_workers import GroupNormNet, batches, dying

needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                    reason="inductor needs a C++ compiler")


@pytest.fixture(autouse=True)
def one_compile_thread():
    """No compile worker pool for nets this small."""
    import torch._inductor.config
    with torch._inductor.config.patch(compile_threads=1):
        yield


@needs_compiler
@pytest.mark.slow
def test_compiled_model_equals_eager_after_every_removal():
    """More removal events than Dynamo's recompile limit (8): with the limit made fatal, a
    model that was not recompiled from scratch would raise instead of running eagerly."""
    torch.manual_seed(0)
    model = dying(GroupNormNet(width=24))
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = [x for x, _ in batches(2, 32, seed=100)]
    pruner = demp.DemonPruner(compiled, optimizer, probe[0][:2], 60, probe, reg_peak=0.2, noise_peak=1e-3,
                              prune_every=4, schedule="constant", recalibrate=False)
    assert pruner.model is model
    diffs, removed = [], False
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for x, y in batches(60, 16):
            out = compiled(x)
            if removed:   # the first call after a removal compiled the new shapes
                diffs.append((out - model(x)).abs().max().item())
            loss = F.cross_entropy(out, y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            report = pruner.step(loss)
            removed = report is not None and report.units_removed > 0
    assert len(diffs) > 8 and max(diffs) < 1e-5, diffs


def test_ddp_wrapper_is_refused_with_what_to_pass():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    model = GroupNormNet()
    wrapper = DistributedDataParallel.__new__(DistributedDataParallel)   # no process group needed
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model
    with pytest.raises(demp.DempError, match="ddp.module"):
        demp.DemonPruner(wrapper, torch.optim.SGD(model.parameters(), lr=0.1), torch.zeros(2, 3, 8, 8), 10,
                         [torch.zeros(2, 3, 8, 8)])


@needs_compiler
@pytest.mark.slow
def test_demp_train_with_compile_matches_eager(tmp_path):
    from demp.app.config import load_config
    from demp.app.training import train
    tiny = ["data.name=synthetic", "model.width=0.25", "train.batch_size=64", "train.epochs=1", "train.max_steps=6",
            "method.prune_every=4", "method.reg_peak=0.05", "data.probe_size=256", "threads=1",
            "method.recalibrate=false", "train.eval_every_epoch=false"]
    eager = train(load_config(None, tiny), out_dir=str(tmp_path / "eager"), progress=False)
    compiled = train(load_config(None, tiny + ["train.compile=true"]), out_dir=str(tmp_path / "compiled"),
                     progress=False)
    assert eager["prune_events"] >= 1 and compiled["widths_final"] == eager["widths_final"]
    assert abs(compiled["test_acc"] - eager["test_acc"]) < 0.02
