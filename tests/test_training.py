"""Training loop on tiny synthetic data: run folder, metrics, summary, schedules, refusals."""
import json
import math

import pytest
import torch

import demp
from demp.app.export import load_run_model
from demp import DempError
from demp.app import training
from demp.app.config import available_methods, load_config
from demp.app.methods.base import method_class, setting_keys
from demp.app.training import lr_factor, train
from demp.experiments.results import death_checks, read_jsonl
from demp.experiments.text import format_summary

TINY = ["data.name=synthetic", "model.width=0.25", "train.batch_size=64", "train.epochs=2",
        "train.log_every=2", "method.prune_every=4", "method.reg_peak=0.05", "data.probe_size=256",
        "data.probe_batch=128", "threads=1", "method.recalibrate=false"]
"""512 training images of 16x16: 8 steps per epoch, a second or two per run.  The dead checks
read the running statistics as trained: 16 steps are too few for units to die for real, and
the loop's removal, logging and resume paths need removal events (re-estimation is tested in
test_pruner and test_batchnorm)."""

SUMMARY_KEYS = {"test_acc", "best_acc", "units_initial", "units_final", "units_remaining",
                "params_initial", "params_final", "params_remaining", "fwd_flops_initial",
                "fwd_flops_final", "train_flops", "wall_s", "eval_s", "prune_events", "method", "label",
                "optimizer", "knob", "knob_name", "seed", "model", "dataset", "target", "speed"}
STEP_KEYS = {"step", "epoch", "loss", "lr", "lam", "sigma", "units", "params", "fwd_flops", "wall_s"}
EPOCH_KEYS = {"epoch", "test_acc", "test_loss", "train_loss", "units", "params", "live_units", "wall_s"}


def tiny(*overrides: str):
    return load_config(None, TINY + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demp_run")
    return run_dir, train(tiny(), out_dir=str(run_dir), progress=False)


def test_run_folder_and_summary(demp_run):
    run_dir, summary = demp_run
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json",
                                                  "model.pt", "checkpoint.pt"}
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert SUMMARY_KEYS <= set(summary)
    assert summary["units_final"] < summary["units_initial"] and summary["prune_events"] >= 1
    assert summary["units_remaining"] == summary["units_final"] / summary["units_initial"]
    assert summary["params_remaining"] == summary["params_final"] / summary["params_initial"]
    assert summary["fwd_flops_final"] <= summary["fwd_flops_initial"]
    assert 0 < summary["train_flops"] < 16 * 64 * 3 * summary["fwd_flops_initial"] * 1.01
    assert summary["best_acc"] >= summary["test_acc"] > 0.5  # the toy set is easy
    assert (summary["method"], summary["knob"], summary["dataset"]) == ("demp", 0.4, "synthetic")   # the units budget
    assert summary["wall_s"] > 0 and summary["eval_s"] > 0
    assert load_config(str(run_dir / "config.yaml")) == tiny()


def test_exported_model_matches_summary(demp_run):
    run_dir, summary = demp_run
    model = load_run_model(run_dir / "model.pt")
    assert demp.count_params(model) == summary["params_final"]
    sites = demp.list_sites(model, torch.zeros(2, 3, 16, 16))
    assert {s.name: s.width for s in sites} == summary["widths_final"]
    assert sum(summary["widths_final"].values()) == summary["units_final"]


def test_metrics_lines(demp_run):
    run_dir, summary = demp_run
    records = read_metrics(run_dir)
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "test_acc" in r and "event" not in r]
    removals = [r for r in records if r.get("event") == "removal"]
    assert [r["step"] for r in steps] == list(range(2, 17, 2))
    assert all(STEP_KEYS <= set(r) and math.isfinite(r["loss"]) and r["lam"] > 0 for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2] and all(EPOCH_KEYS <= set(r) for r in epochs)
    assert len(removals) == summary["prune_events"]
    assert all(r["units_after"] < r["units_before"] for r in removals)
    assert records[-1]["event"] == "final" and records[-1]["test_acc"] == summary["test_acc"]
    units = [r["units"] for r in steps]
    assert units == sorted(units, reverse=True)  # units only ever go


def test_dense_run_removes_nothing(tmp_path):
    summary = train(tiny("method.name=dense", "train.epochs=1", "train.eval_every_epoch=false"),
                    out_dir=str(tmp_path), progress=False)
    assert summary["units_final"] == summary["units_initial"] and summary["prune_events"] == 0
    assert summary["knob"] is None and summary["params_remaining"] == 1.0
    records = read_metrics(tmp_path)
    assert all("lam" not in r for r in records if "loss" in r)  # dense logs no penalty
    assert not any("test_acc" in r for r in records if r.get("event") != "final")


def test_max_steps_caps_training(tmp_path):
    summary = train(tiny("train.max_steps=5", "optim.name=sgd", "optim.lr=0.05", "optim.schedule=step"),
                    out_dir=str(tmp_path), progress=False)
    assert summary["steps"] == 5
    assert max(r["step"] for r in read_metrics(tmp_path)) == 5


def test_divergence_is_a_clear_error(tmp_path):
    with pytest.raises(DempError, match="training diverged; lower optim.lr"):
        train(tiny("method.name=dense", "optim.name=sgd", "optim.lr=1e30"), out_dir=str(tmp_path), progress=False)


def test_existing_run_folder_is_refused(demp_run):
    run_dir, _ = demp_run
    with pytest.raises(DempError, match="already holds a run"):
        train(tiny(), out_dir=str(run_dir), progress=False)
    with pytest.raises(DempError, match="already finished"):
        train(tiny(), out_dir=str(run_dir), resume=True, progress=False)


def test_lr_schedules():
    def lrs(schedule, *more):
        factor = lr_factor(load_config(None, [f"optim.schedule={schedule}", *more]), 100, 10)
        return [factor(s) for s in range(101)]
    one_cycle = lrs("one_cycle")
    assert one_cycle[0] == pytest.approx(1 / 25) and one_cycle[30] == pytest.approx(1.0)
    assert one_cycle[100] == pytest.approx(1 / 25 / 1e4)
    step = lrs("step", "optim.milestones=[0.5]", "optim.gamma=0.1")
    assert step[49] == 1.0 and step[50] == pytest.approx(0.1)
    warm = lrs("step", "optim.warmup_epochs=2", "optim.milestones=[0.5]", "optim.gamma=0.1")
    assert warm[0] == pytest.approx(1 / 20) and warm[19] == 1.0 and warm[60] == pytest.approx(0.1)
    assert lrs("cosine")[100] == pytest.approx(0.0, abs=1e-12) and lrs("constant") == [1.0] * 101


def test_format_summary_table(demp_run):
    _, summary = demp_run
    table = format_summary(summary)
    for word in ("test accuracy", "units", "parameters", "forward FLOPs/example", "wall time"):
        assert word in table
    assert f"{summary['units_initial']:,}" in table and f"{summary['params_final']:,}" in table


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny("method.name=dense", "train.epochs=1"), out_dir=str(tmp_path), progress=False, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_imagefolder_data(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = torch.randint(0, 256, (20, 20, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    summary = train(tiny("data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.resize=16",
                         "train.batch_size=4", "train.epochs=1", "data.probe_size=8"),
                    out_dir=str(tmp_path / "run"), progress=False)
    assert summary["steps"] == 3 and 0 <= summary["test_acc"] <= 1


def method_settings(name: str, demp_run) -> list[str]:
    """Overrides that make method ``name`` train in a tiny run: a budget for the pruning methods,
    the finished DemP run as the source of scratch's widths."""
    if name == "scratch":
        return [f"method.widths_from={demp_run[0]}"]
    return ["method.target=0.3"] if "target" in setting_keys(method_class(name)) else []   # count has none


def killed_and_resumed(cfg, out, monkeypatch, at: int = 11) -> dict:
    """Train ``cfg`` into ``out``, interrupted at step ``at`` (after the checkpoint at step 9, in
    the second epoch), then resume it to the end; the resumed run's summary."""
    real_step, calls = training.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(training, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=str(out), progress=False)
    monkeypatch.setattr(training, "train_step", real_step)
    return train(cfg, out_dir=str(out), resume=True, progress=False)


@pytest.mark.filterwarnings("ignore:.*early trigger never fired")
@pytest.mark.parametrize("name", available_methods())
def test_every_method_trains_and_resumes_exactly(name, tmp_path, monkeypatch, demp_run):
    """Interrupt each registered method after a mid-epoch checkpoint; the resumed run ends identical."""
    cfg = tiny(f"method.name={name}", *method_settings(name, demp_run), "train.checkpoint_every=3")
    reference = train(cfg, out_dir=str(tmp_path / "whole"), progress=False)
    assert reference["units_final"] <= reference["units_initial"]

    resumed = killed_and_resumed(cfg, tmp_path / "cut", monkeypatch)

    a = load_run_model(tmp_path / "cut" / "model.pt").state_dict()
    b = load_run_model(tmp_path / "whole" / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_acc"] == reference["test_acc"] and resumed["train_flops"] == reference["train_flops"]
    deaths = [death_checks(read_jsonl(tmp_path / d / "metrics.jsonl")) for d in ("cut", "whole")]
    assert deaths[0] == deaths[1]            # the count method's records survive the resume


def test_a_budget_run_reports_target_and_reached(tmp_path):
    summary = train(tiny("method.target_units=null", "method.target_flops=0.2", "method.prune_every=2",
                         "method.reg_peak=0.2"),
                    out_dir=str(tmp_path / "run"), progress=False)
    assert (summary["target"], summary["measure"], summary["knob_name"]) == (0.2, "fwd_flops", "target_flops")
    assert summary["reached"] == pytest.approx(1 - summary["fwd_flops_final"] / summary["fwd_flops_initial"])
    assert isinstance(summary["met"], bool) and isinstance(summary["gave_up"], bool)
    assert summary["met"] == (summary["reached"] >= 0.2 - 0.01 - 1e-9)
    text = format_summary(summary)
    assert "budget: remove 20.0% of forward FLOPs; reached" in text
    assert summary["speed"]["how"].startswith("default") and "training format: float32" in text


@pytest.mark.filterwarnings("ignore:.*early trigger never fired")
@pytest.mark.parametrize("name", available_methods())
def test_sparse_training_with_every_method_resumes_exactly(name, tmp_path, monkeypatch, demp_run):
    """RigL next to a structured method: masks hold to the end and through removal, the summary
    counts non-zero parameters and sparse FLOPs, a killed run resumes bit-identical, and the exported
    model has its zeros in place."""
    from demp.core.sparsity import nonzero_params
    budget = method_settings(name, demp_run) if name != "scratch" else []
    cfg = tiny(f"method.name={name}", *method_settings(name, demp_run), "train.checkpoint_every=3",
               "sparse.method=rigl", "sparse.density=0.3", "sparse.every=2")
    reference = train(cfg, out_dir=str(tmp_path / "whole"), progress=False)
    assert reference["sparse"]["method"] == "rigl"
    assert reference["nonzero_params_final"] < 0.6 * reference["params_final"]
    assert reference["sparse_fwd_flops_final"] < reference["fwd_flops_final"]
    if budget and name not in ("earlysnap", "earlycrop"):     # the early ones may not trigger in 16 steps
        assert reference["units_final"] < reference["units_initial"]
    resumed = killed_and_resumed(cfg, tmp_path / "cut", monkeypatch)
    a = load_run_model(tmp_path / "cut" / "model.pt")
    b = load_run_model(tmp_path / "whole" / "model.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert resumed["nonzero_params_final"] == reference["nonzero_params_final"] == nonzero_params(a)
    assert "sparse: rigl" in format_summary(reference)


def test_a_collapse_is_caught_recorded_and_said(tmp_path):
    """A push far too strong: the run stops pushing at the collapse it sees on the probe, ends
    above chance, and summary.json and the end-of-run table say what happened."""
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="collapsed"):
        s = train(tiny("method.reg_peak=20", "optim.lr=0.05", "train.epochs=4"), out_dir=str(run_dir), progress=False)
    c = s["collapsed"]
    assert c is not None and c["signal"] in ("output spread", "probe loss") and "lambda" in c["cause"]
    assert s["stopped"] and not s["met"] and s["test_acc"] > 1.25 / 10
    assert json.loads((run_dir / "summary.json").read_text())["collapsed"] == c
    text = format_summary(s)
    assert f"COLLAPSED at step {c['step']}" in text and "(stopped by a collapse)" in text


def test_a_final_accuracy_at_chance_is_a_collapse(tmp_path, monkeypatch):
    """Whatever the method saw, a final network at chance is not a success."""
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: (0.1, 2.3))
    s = train(tiny("method.name=dense"), out_dir=str(tmp_path / "run"), progress=False)
    assert s["collapsed"]["signal"] == "final accuracy" and s["collapsed"]["after"] == 0.1


def test_a_budget_line_gives_deaths_and_observed_causes():
    s = {"test_acc": 0.5, "best_acc": 0.5, "units_initial": 10, "units_final": 8, "units_remaining": 0.8,
         "params_initial": 10, "params_final": 8, "params_remaining": 0.8, "fwd_flops_initial": 1e6,
         "fwd_flops_final": 8e5, "fwd_flops_remaining": 0.8, "train_flops": 1e12, "prune_events": 1,
         "wall_s": 1.0, "eval_s": 1.0, "method": "demp", "dataset": "synthetic", "model": "small_cnn",
         "width": 0.25, "optimizer": "adamw", "lr": 0.01, "epochs": 1, "steps": 10, "knob": 0.4,
         "knob_name": "target_units", "target": 0.4, "measure": "units", "reached": 0.2, "dead": 0.5,
         "met": True, "overshoot": 0.09, "causes": ["2 dead units are tied to live ones"]}
    text = format_summary(s)
    assert "reached 20.0%, 50.0% dead (met)" in text and "overshot the budget by 9.0%" in text
    assert "shortfall: 2 dead units are tied to live ones" in text


# ----------------------------------------------------------------------------- byte-level text

LM = ["data.name=text", "model.name=relu_lm", "model.width=0.25", "model.kwargs={depth: 2}", "data.context=32",
      "data.subset=96", "train.batch_size=32", "train.epochs=2", "train.log_every=2", "method.prune_every=2",
      "method.reg_peak=0.05", "data.probe_size=64", "data.probe_batch=32", "threads=1", "train.checkpoint_every=4"]
"""The default corpus, 96 sequences of 32 bytes: 3 steps per epoch, a few seconds per run."""


def test_text_run_reports_bits_per_byte_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = load_config(None, LM)
    summary = train(cfg, out_dir=str(tmp_path / "whole"), progress=False)
    assert summary["dataset"] == "text" and summary["test_bpb"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["best_bpb"] <= summary["test_bpb"] < 8.5          # 8 bits per byte is a uniform guess
    epochs = [r for r in read_metrics(tmp_path / "whole") if "test_bpb" in r and "event" not in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and summary["best_bpb"] == min(r["test_bpb"] for r in epochs
                                                                                  + [summary])
    assert "validation bits/byte" in format_summary(summary)
    model = load_run_model(tmp_path / "whole" / "model.pt")
    sites = demp.list_sites(model, torch.zeros(2, 32, dtype=torch.long))
    assert {s.name: s.width for s in sites} == summary["widths_final"]
    resumed = killed_and_resumed(cfg, tmp_path / "cut", monkeypatch, at=5)   # after the checkpoint at step 4
    assert resumed["test_bpb"] == summary["test_bpb"] and resumed["train_flops"] == summary["train_flops"]


def test_text_with_an_image_model_is_refused(tmp_path):
    with pytest.raises(DempError, match="text data needs a sequence model"):
        train(load_config(None, LM + ["model.name=vit_tiny"]), out_dir=str(tmp_path), progress=False)


def test_transformers_model_trains_on_text(tmp_path):
    pytest.importorskip("transformers")
    cfg = load_config(None, LM + ["model.name=hf:OPTForCausalLM", "model.width=1", "method.name=snap",
                                  "method.target=0.5", "method.score_batches=1",
                                  "model.kwargs={hidden_size: 32, ffn_dim: 64, num_hidden_layers: 2, "
                                  "num_attention_heads: 2, word_embed_proj_dim: 32, dropout: 0.0}"])
    summary = train(cfg, out_dir=str(tmp_path), progress=False)
    assert summary["units_initial"] == 128 and summary["units_final"] == 64 and "test_bpb" in summary
    model = load_run_model(tmp_path / "model.pt")
    assert [layer.fc1.out_features for layer in model.model.model.decoder.layers] == list(
        summary["widths_final"].values())
