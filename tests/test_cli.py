"""The demp command: a real train from the shell, export, report's output folder, and one-line
errors with exit code 2."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from demp.cli import build_parser, cmd_report, delegate, main
from demp.errors import DempError
from test_results import sweep  # noqa: F401 - a fixture
from test_training import TINY

DEMP = shutil.which("demp", path=str(Path(sys.executable).parent)) or "demp"


def sets(*overrides: str) -> list[str]:
    return [arg for o in (*TINY, *overrides) for arg in ("--set", o)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`demp train --set train.epochs=1 ...` run as a user would, through the console script."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = subprocess.run([DEMP, "train", *sets("train.epochs=1"), "--out", str(run_dir)],
                            capture_output=True, text=True, timeout=300)
    return run_dir, result


def test_train_from_the_command_line(cli_run):
    run_dir, result = cli_run
    assert result.returncode == 0, result.stderr
    for line in ("test accuracy", "units", "parameters", "forward FLOPs/example", "wall time",
                 f"run folder: {run_dir}", "epoch 1/1"):
        assert line in result.stdout
    assert (run_dir / "summary.json").is_file() and (run_dir / "model.pt").is_file()


def test_export_onnx(cli_run, capsys):
    pytest.importorskip("onnx")
    run_dir, _ = cli_run
    assert main(["export", str(run_dir), "--onnx"]) == 0
    assert (run_dir / "model.onnx").stat().st_size > 0
    assert "small_cnn with" in capsys.readouterr().out


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    return captured.err


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "optim.lr=0"], "optim.lr must be > 0"),
    (["train", "--set", "model.name=resnet9"], "valid: densenet_tiny"),
    (["train", "--set", "train.epoch=1"], "unknown key 'train.epoch'"),
    (["train", "--config", "missing.yaml"], "config file missing.yaml not found"),
    (["export", "nowhere"], "nowhere: no such folder"),
    (["train", "--resume", "nowhere"], "--resume nowhere: no such folder"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert message in error_of(argv, capsys)


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert "is not a run folder" in error_of(["export", str(tmp_path)], capsys)


def test_missing_dataset_says_how_to_install_it(tmp_path, capsys):
    err = error_of(["train", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert "apt-get install -y dataset-fashion-mnist" in err and "data.root" in err


def test_resume_refusals(cli_run, tmp_path, capsys):
    run_dir, _ = cli_run
    assert "already finished" in error_of(["train", "--resume", str(run_dir)], capsys)
    assert "name different folders" in error_of(["train", "--resume", str(run_dir), "--out", str(tmp_path)], capsys)


def test_missing_subcommand_module_is_a_clear_error(capsys):
    import argparse
    with pytest.raises(DempError, match="'demp report' is not available: this installation has no "
                                        "demp.experiments.no_such"):
        delegate("no_such", cmd_report)(argparse.Namespace(command="report"))


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "demp.cli", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0
    for command in ("train", "export", "report", "sweep"):
        assert command in result.stdout


def test_subcommands_parse_without_loading_the_experiments():
    """The arguments of report, sweep and study are the CLI's own: parsing them imports neither
    torch nor demp.experiments."""
    code = ("import sys; from demp.cli import build_parser; p = build_parser(); "
            "p.parse_args(['report', 'a', 'b', '--plot-runs', '']); "
            "p.parse_args(['sweep', 's.yaml', '--workers', '2', '--dry-run']); "
            "a = p.parse_args(['study', 's.yaml', '--out', 'o', '--retry-failed']); "
            "print(a.study, a.out, a.workers, a.retry_failed, 'torch' in sys.modules, "
            "any(m.startswith('demp.experiments') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["s.yaml", "o", "1", "True", "False", "False"]


def test_report_benchmark_dir_and_errors(sweep: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    assert cmd_report(parser.parse_args(["report", str(sweep), "--benchmark", "fab", "--plot-runs", ""])) == 0
    assert (tmp_path / "results" / "fab" / "summary.csv").is_file()
    assert not (tmp_path / "results" / "fab" / "run_plots").exists()
    assert "18 runs" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(DempError, match="no finished run"):
        cmd_report(parser.parse_args(["report", str(tmp_path / "empty")]))
    with pytest.raises(DempError, match="not a folder"):
        cmd_report(parser.parse_args(["report", str(tmp_path / "missing")]))


def test_report_from_a_summary_csv_writes_next_to_it(sweep: Path, tmp_path: Path, monkeypatch, capsys):
    """`demp report results/x/summary.csv` regenerates results/x (the run folders not needed);
    FLOPs points outside (0, 1) are refused."""
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    cmd_report(parser.parse_args(["report", str(sweep), "--out", "x", "--plot-runs", ""]))
    (tmp_path / "x" / "report.md").unlink()
    assert cmd_report(parser.parse_args(["report", "x/summary.csv", "--flops-points", "0.5", "0.9"])) == 0
    assert "| 90% |" in (tmp_path / "x" / "report.md").read_text() and "18 runs" in capsys.readouterr().out
    with pytest.raises(DempError, match="between 0 and 1"):
        cmd_report(parser.parse_args(["report", "x/summary.csv", "--flops-points", "75"]))


def test_importing_demp_has_no_side_effects():
    """`import demp` neither loads torch nor changes the process environment; the CLI sets
    OMP_WAIT_POLICY for itself."""
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); import demp, demp.cli; "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]
