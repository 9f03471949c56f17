"""Benchmark helpers that decide what a figure means (timings themselves are not tested)."""
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(ROOT))    # benchmarks import each other's helpers by name


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_widths_builds_vgg_at_any_widths_and_rounds_up():
    bench = _load("bench_widths")
    assert bench.round_up([9, 16, 17, 1], 8) == [16, 16, 24, 8]
    model = bench.vgg(bench.EXAMPLE)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == bench.EXAMPLE[:13]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_eval_recalibrated_ranks_runs_near_a_point():
    bench = _load("eval_recalibrated")
    rows = [{"run": "a", "units_removed": 0.5, "acc": 0.7, "acc_recalibrated": 0.6},
            {"run": "b", "units_removed": 0.51, "acc": 0.65, "acc_recalibrated": 0.66},
            {"run": "c", "units_removed": 0.8, "acc": 0.9, "acc_recalibrated": 0.9}]
    assert bench.ranking(rows, "acc", 0.5) == ["a", "b"]
    assert bench.ranking(rows, "acc_recalibrated", 0.5) == ["b", "a"]


def test_bench_sparse_steps_keep_the_masks():
    bench = _load("bench_sparse")
    step = bench.setup(True, every=1)
    step(), step()                       # two steps with a RigL update in each: runs without error


def test_bench_speedup_marks_its_runs_as_paired(tmp_path, monkeypatch):
    """Every run of one bench_speedup invocation is marked paired in one timing group, so that
    `demp report` of its run folders shows these speed-ups (and only these)."""
    import json
    from demp.experiments.results import load_runs
    bench = _load("bench_speedup")

    def fake_train(cfg, run_dir, progress):      # the timing itself is not tested
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "summary.json").write_text(json.dumps({"method": cfg.method.name, "wall_s": 1.0}))
    monkeypatch.setattr(bench, "train", fake_train)
    lm = Path(bench.__file__).resolve().parents[1] / "configs" / "cpu" / "relu_lm_adamw.yaml"
    for name, config in (("dense", bench.CONFIG), ("snap-0.8", bench.CONFIG), ("demp-0.8", lm)):
        summary = bench.run(config, bench.RUNS[name], tmp_path / name, "g1", threads=2)
        assert summary["timing"]["paired"] is True and summary["timing"]["threads"] == 2
    assert {r.row()["timing_group"] for r in load_runs([tmp_path])} == {"g1"}
