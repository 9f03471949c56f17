"""DemonPruner under DDP: 2 gloo processes on 127.0.0.1 agree on every removal.

The workers live in ``ddp_workers`` (spawned processes import them by name).
"""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_workers
from demp.core.distributed import agree_dead, check_same_widths, is_distributed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path, world: int, **options) -> list[dict]:
    """The saved results of each rank of a ``train_tiny`` run on ``world`` processes."""
    tmp_path.mkdir(exist_ok=True)
    args = (world, free_port(), str(tmp_path), *options.values())
    if world == 1:
        ddp_workers.train_tiny(0, *args)
    else:
        mp.spawn(ddp_workers.train_tiny, args=args, nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def test_without_process_group_nothing_is_reduced():
    masks = {"a": torch.tensor([True, False])}
    assert not is_distributed()
    assert agree_dead(masks)["a"].tolist() == [True, False]
    check_same_widths({"a": 2}, "now")


def test_ranks_agree_on_every_removal_with_different_probes(tmp_path):
    """Each rank's probe differs (and BatchNorm statistics are per rank): removals stay equal."""
    ranks = run(tmp_path, 2, net="batchnorm", steps=40, rank_probes=True)
    assert ranks[0]["events"] >= 4
    assert ranks[0]["widths"] == ranks[1]["widths"]
    a, b = ranks[0]["state"], ranks[1]["state"]
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(a[k], b[k]) for k in params)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one = run(tmp_path / "one", 1, net="groupnorm", steps=40)[0]
    two = run(tmp_path / "two", 2, net="groupnorm", steps=40)
    assert two[0]["widths"] == two[1]["widths"] == one["widths"] and one["events"] >= 4
    assert all(torch.equal(two[0]["state"][k], two[1]["state"][k]) for k in one["state"])
    diff = max((two[0]["state"][k] - v).abs().max().item() for k, v in one["state"].items())
    print(f"widths {one['widths']}, removal events {one['events']}, max |w1 - w2| {diff:.2e}")
    assert diff < 1e-4


TINY = ["data.name=synthetic", "model.width=0.25", "train.batch_size=64", "train.epochs=2",
        "train.log_every=2", "method.prune_every=4", "method.reg_peak=0.05", "data.probe_size=256",
        "data.probe_batch=128", "threads=1", "method.recalibrate=false", "train.checkpoint_every=3"]
"""test_training's tiny run (removal events without real deaths) with a mid-epoch checkpoint."""


def run_app(out, world: int = 2, resume: bool = False, stop_at_step: int = 0) -> list:
    out.mkdir(exist_ok=True)
    mp.spawn(ddp_workers.train_app, args=(world, free_port(), str(out), TINY, resume, stop_at_step), nprocs=world)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_demp_train_on_two_processes_resumes_exactly(tmp_path):
    from demp.app.export import load_run_model
    whole = run_app(tmp_path / "whole")
    assert whole[0] == whole[1] and whole[0]["prune_events"] >= 1
    assert (whole[0]["world_size"], whole[0]["global_batch"]) == (2, 64)
    files = {p.name for p in (tmp_path / "whole" / "run").iterdir()}
    assert files == {"config.yaml", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt"}

    assert run_app(tmp_path / "cut", stop_at_step=10) == [None, None]   # after the checkpoint at step 9
    resumed = run_app(tmp_path / "cut", resume=True)
    assert resumed[0]["test_acc"] == whole[0]["test_acc"] and resumed[0]["units_final"] == whole[0]["units_final"]
    a = load_run_model(tmp_path / "cut" / "run" / "model.pt").state_dict()
    b = load_run_model(tmp_path / "whole" / "run" / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sparse_masks_stay_identical_on_two_processes(tmp_path):
    """RigL under DDP: every rank draws, drops and grows the same entries (gradients are reduced
    before the update), through removal events, so the ranks end with the same sparse model."""
    from demp.app.export import load_run_model
    sparse = ["sparse.method=rigl", "sparse.density=0.5", "sparse.every=2", "sparse.end=0.9"]
    out = tmp_path / "sparse"
    out.mkdir()
    mp.spawn(ddp_workers.train_app, args=(2, free_port(), str(out), TINY + sparse), nprocs=2)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["prune_events"] >= 1
    assert ranks[0]["sparse"]["method"] == "rigl" and ranks[0]["nonzero_params_remaining"] < 0.75
    a, b = (torch.load(out / f"masks{r}.pt") for r in range(2))
    assert len(a) == len(b) == ranks[0]["steps"]
    assert all(torch.equal(x, y) for step_a, step_b in zip(a, b) for x, y in zip(step_a, step_b, strict=True))
    assert any(x.shape != y.shape for x, y in zip(a[0], a[-1]))   # removal sliced masks on both ranks alike
    model = load_run_model(out / "run" / "model.pt")
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert zeros > 0


def test_prunable_ddp_is_freed_by_del_and_follows_removals_while_alive():
    """The pruner holds the wrapper weakly: ``del`` frees DDP's reducer before the group goes."""
    import weakref
    from demp import DemonPruner
    from demp.integrations.ddp import PrunableDDP
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        with torch.no_grad():
            model[0].weight[:3] = 0.0
            model[0].bias[:3] = -1.0                    # three dead units
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(16, 4)
        pruner = DemonPruner(model, optimizer, x[:2], total_steps=10, probe=[x], prune_every=5)
        wrapper = PrunableDDP(model, pruner)
        first = wrapper.ddp
        assert pruner.prune().units_removed == 3
        assert wrapper.ddp is not first and wrapper(x).shape == (16, 2)     # rebuilt over the new weights
        gone = weakref.ref(wrapper)
        del wrapper, first
        assert gone() is None
        with torch.no_grad():
            model[0].bias[:2] = -1.0
            model[0].weight[:2] = 0.0
        assert pruner.prune().units_removed == 2       # a freed wrapper is skipped, not an error
    finally:
        dist.destroy_process_group()
