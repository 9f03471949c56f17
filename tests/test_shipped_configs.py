"""The config files shipped in configs/: every file loads and validates (sweep files plan every run),
and the CPU configs and one paper config train a few steps with synthetic data substituted."""
from __future__ import annotations

from pathlib import Path

import pytest

from demp.app.config import load_config
from demp.experiments.spec import load_study, load_sweep, plan_runs, plan_study, run_config
from demp.app.training import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))
SWEEPS = [p for p in FILES if p.name.startswith("sweep_")]
STUDIES = [p for p in FILES if p.parent.name == "study" and p.name != "base.yaml"]
RUN_CONFIGS = [p for p in FILES if p not in SWEEPS and p.parent.name != "study"]
SMOKE = sorted(CONFIGS.glob("cpu/*.yaml")) + [CONFIGS / "paper" / "vgg16_cifar10_sgd.yaml"]
SMOKE = [p for p in SMOKE if p in RUN_CONFIGS]


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def test_the_expected_files_exist():
    names = {_id(p) for p in FILES}
    for stem in ("resnet18_cifar10_adamw", "resnet18_cifar10_sgd", "vgg16_cifar10_adamw",
                 "vgg16_cifar10_sgd", "resnet50_imagenet_sgd", "resnet50_imagenet_adam"):
        assert f"paper/{stem}.yaml" in names
    assert {"cpu/sweep_cifar10_vgg.yaml", "cpu/sweep_fmnist.yaml"} <= names
    assert len([n for n in names if n.startswith("paper/sweep_")]) >= 3


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=_id)
def test_config_loads_and_validates(path: Path):
    cfg = load_config(str(path))
    assert cfg.method.name == "demp" and 0 < cfg.method.reg_peak < 1


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_plans_valid_runs(path: Path):
    runs = plan_runs(load_sweep(path))
    methods = {r.entry.method for r in runs}
    assert "demp" in methods
    assert "dense" in methods or methods <= {"demp", "scratch"}   # a comparison has its dense reference
    # (DemP alone, or against its own widths trained from scratch, needs none)
    demp_knobs = {(r.optim, r.knob) for r in runs if r.entry.method == "demp"}
    wanted = 1 if any(k in path.name for k in ("12ep", "v3", "sparse", "resnet18")) else 2   # a curve, or 12-epoch points (an SGD pair)
    for optim in {r.optim for r in runs}:
        assert len([k for o, k in demp_knobs if o == optim]) >= wanted, optim


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_study_plans_valid_runs(path: Path):
    """Each death study builds every run's config (method count) and writes under results/death-study."""
    study = load_study(path)
    assert len(plan_study(study)) >= 8 and study.out == f"results/death-study/{path.stem}"


def test_the_five_death_studies_exist():
    assert {p.stem for p in STUDIES} == {"learning_rate", "batch_size", "regulariser", "noise", "width"}


def test_cpu_cifar_sweep_compares_at_matched_units():
    """Dense, DemP at 50/65/80% and every baseline at 50/80% with AdamW; the SGD set; ablations."""
    sweep = load_sweep(CONFIGS / "cpu" / "sweep_cifar10_vgg.yaml")
    runs = plan_runs(sweep)
    assert {r.optim for r in runs if r.entry.method == "dense"} == {"adamw", "sgd"}
    demp_adamw = [r for r in runs if r.entry.method == "demp" and r.optim == "adamw" and not r.entry.variant]
    assert {r.knob for r in demp_adamw} == {0.5, 0.65, 0.8} and {r.entry.knob_key for r in demp_adamw} == {"target"}
    for method in ("snap", "cropit", "earlysnap", "earlycrop", "slimming", "magnitude", "random"):
        assert {r.knob for r in runs if r.entry.method == method and r.optim == "adamw"} == {0.5, 0.8}, method
    for method in ("demp", "snap", "cropit", "earlysnap", "earlycrop"):
        assert {r.knob for r in runs if r.entry.method == method and r.optim == "sgd"} == {0.5, 0.8}, method
    variants = {r.name for r in runs if r.entry.variant}
    assert variants == {"demp-adamw-t0.65-no-noise-s0", "demp-adamw-t0.65-no-reestimation-s0",
                        "demp-adamw-t0.65-no-push-s0", "demp-adamw-0.01-paper-s0", "demp-adamw-0.025-paper-s0"}
    cfg = run_config(sweep, next(r for r in runs if r.entry.variant == "no-noise"))
    assert cfg.method.noise_peak == 0 and cfg.method.target_units == 0.65 and cfg.label == "no-noise"
    paper = run_config(sweep, next(r for r in runs if r.entry.variant == "paper"))
    assert paper.method.shift_push == 0 and paper.method.target_units is None
    assert sweep.extra_seeds and sweep.extra_seeds.near_units_removed == (0.5, 0.8)
    assert sweep.extra_seeds.optims == ("adamw",) and not sweep.extra_seeds.variants


@pytest.mark.parametrize("path", SMOKE, ids=_id)
def test_config_trains_a_few_steps_on_synthetic_data(path: Path, tmp_path: Path):
    """Image configs train on synthetic images; text configs on a few sequences of the default corpus."""
    text = load_config(str(path)).data.name == "text"
    data = (["data.subset=16"] if text else
            ["data.name=synthetic", "data.root=null", "data.subset=null", "data.resize=32"])
    cfg = load_config(str(path), [
        *data, "model.width=0.125", "train.max_steps=2", "train.epochs=1", "train.batch_size=8",
        "train.eval_every_epoch=false", "method.prune_every=2", "data.probe_size=16",
        "data.probe_batch=16"])
    summary = train(cfg, str(tmp_path / "run"), progress=False)
    assert summary["steps"] == 2 and 0 <= summary["test_acc"] <= 1
    assert summary["optimizer"] == load_config(str(path)).optim.name


@pytest.mark.parametrize("stem, config", [("sweep_vit_cifar10", "vit_cifar10_adamw.yaml"),
                                          ("sweep_relu_lm", "relu_lm_adamw.yaml")])
def test_transformer_sweeps_compare_every_baseline_on_ffn_units(stem: str, config: str):
    """Dense and DemP (two seeds), DemP's units budget and six baselines at 50% and 80% of units."""
    sweep = load_sweep(CONFIGS / "cpu" / f"{stem}.yaml")
    runs = plan_runs(sweep)
    for method in ("demp", "snap", "cropit", "earlysnap", "earlycrop", "magnitude", "random"):
        assert {r.knob for r in runs if r.entry.method == method} == {0.5, 0.8}, method
    assert {r.seed for r in runs if r.entry.method in ("dense", "demp")} == {0, 1}
    assert {r.entry.method for r in runs} == {"dense", "demp", "scratch", "snap", "cropit", "earlysnap", "earlycrop",
                                              "magnitude", "random"}
    demp = run_config(sweep, next(r for r in runs if r.entry.method == "demp" and r.knob == 0.8))
    shipped = load_config(str(CONFIGS / "cpu" / config), ["method.target_units=0.8"])
    assert demp.method == shipped.method and (demp.model, demp.data) == (shipped.model, shipped.data)
