"""A run folder (demp.app.rundir): its default name, the checks before a run starts or resumes,
and metrics.jsonl cut back to a checkpoint's offset on resume."""
import json

import pytest

from demp import DempError
from demp.app.config import load_config
from demp.app.rundir import (CONFIG_NAME, SUMMARY_NAME, MetricsLog, check_run_dir, default_run_dir,
                             start_run_dir)


def test_default_name_and_a_new_folder(tmp_path):
    cfg = load_config(None, ["data.name=synthetic"])
    name = default_run_dir(cfg)
    assert name.parent.name == "runs" and name.name.startswith("synthetic-small_cnn-demp-")
    run = tmp_path / "run"
    assert check_run_dir(cfg, run, resume=False) is None
    (run).mkdir()
    (run / ".config.yaml.abc.tmp").write_text("half")          # left by a killed write
    start_run_dir(cfg, run)
    assert (run / CONFIG_NAME).is_file() and not list(run.glob(".*.tmp"))
    with pytest.raises(DempError, match="already holds a run"):
        check_run_dir(cfg, run, resume=False)


def test_resume_refuses_what_cannot_be_resumed(tmp_path):
    cfg = load_config(None, ["data.name=synthetic"])
    with pytest.raises(DempError, match="is not a run folder"):
        check_run_dir(cfg, tmp_path, resume=True)
    start_run_dir(cfg, tmp_path)
    (tmp_path / SUMMARY_NAME).write_text("{}")
    with pytest.raises(DempError, match="has already finished"):
        check_run_dir(cfg, tmp_path, resume=True)


def test_metrics_log_appends_and_drops_lines_after_the_resume_offset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, 0, None, 0) as log:
        log.write({"step": 1}, 1)
        keep = log.offset()
        log.write({"step": 2}, 2)                                # written after the checkpoint
    with MetricsLog(path, keep, None, 1) as log:               # resuming from the checkpoint
        log.write({"step": 2, "again": True}, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1}, {"step": 2, "again": True}]
