"""Atomic writes: a failed or killed write leaves the old file, and its temp file can be removed."""
import json
import os
import signal
import subprocess
import sys

import pytest

from demp.core.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temps


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"old": 1})

    def crash(*args):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", crash)  # dies after writing the temp file, before the rename
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(path, b'{"new": 2}')
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_a_killed_writer_leaves_the_old_file_and_a_removable_temp(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    code = ("import os, sys, time\nfrom demp.core import atomic\n"
            "def stuck(fd):\n    print('writing', flush=True); time.sleep(60)\n"
            "atomic.os.fsync = stuck\n"
            f"atomic.atomic_write_bytes({str(path)!r}, b'x' * 10_000_000)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == b"old"
    assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) == 1
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
