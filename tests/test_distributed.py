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
