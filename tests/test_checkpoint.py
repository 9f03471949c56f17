"""RNG capture, checkpoint loading, and resuming a really killed run to the same result."""
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import demp
from demp.app.export import load_run_model
from demp import DempError
from demp.app.checkpoint import load_checkpoint, rng_state, set_rng_state
from demp.app.config import config_to_dict
from demp.app.training import train
from test_training import read_metrics, tiny

KILL_RUN = ("train.epochs=6", "train.checkpoint_every=5", "method.prune_every=3")


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(DempError, match="no checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DempError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def _kill_after_first_checkpoint(run_dir, cfg) -> None:
    """Start `demp train` in a subprocess and SIGKILL it as soon as a checkpoint exists."""
    config = run_dir.parent / "kill.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    proc = subprocess.Popen([sys.executable, "-m", "demp.cli", "train", "--config", str(config),
                             "--out", str(run_dir), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny(*KILL_RUN)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_after_first_checkpoint(killed, cfg)
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    assert load_checkpoint(killed / "checkpoint.pt")["progress"]["step"] < 48

    resumed = train(cfg, out_dir=str(killed), resume=True, progress=False)
    reference = train(cfg, out_dir=str(whole), progress=False)

    a = load_run_model(killed / "model.pt").state_dict()
    b = load_run_model(whole / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"wall_s", "eval_s", "run_dir", "seconds", "check_s"}
    assert {k: v for k, v in resumed.items() if k not in timing} == \
           {k: v for k, v in reference.items() if k not in timing}
    assert resumed["prune_events"] >= 1

    def strip(records):
        return [{k: v for k, v in r.items() if k not in timing} for r in records]
    assert strip(read_metrics(killed)) == strip(read_metrics(whole))


def test_resume_with_a_changed_config_is_refused(tmp_path):
    cfg = tiny("train.epochs=1")
    train(cfg, out_dir=str(tmp_path), progress=False)
    (tmp_path / "summary.json").unlink()  # pretend it was interrupted after its last checkpoint
    with pytest.raises(DempError, match=r"changed config \(method.reg_peak: 0.05 -> 0.1; optim.lr: 0.01 -> 0.02\)"):
        train(tiny("train.epochs=1", "method.reg_peak=0.1", "optim.lr=0.02"), out_dir=str(tmp_path),
              resume=True, progress=False)
    with pytest.raises(DempError, match="not a run folder"):
        train(cfg, out_dir=str(tmp_path / "nothing"), resume=True, progress=False)
