"""The runnable examples (examples/*.py) run, do what their docstrings say, and the README's
snippets are taken from them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
pytest.importorskip("sklearn")


def test_plain_loop_prunes_and_evaluates_like_batch_statistics():
    import plain_loop
    r = plain_loop.main()
    assert r["units_after"] < r["units_before"] and r["budget_met"]
    # the trap of a plain loop: eval mode far below batch statistics; finish() settles it
    assert abs(r["test_acc"] - r["test_acc_batch_statistics"]) < 0.03 and r["test_acc"] > 0.9
    assert r["reload_change"] == 0.0       # save_pruned / load_pruned give back the same network


def test_transformer_ffn_loses_hidden_units_in_both_linear_layers():
    import transformer_ffn
    r = transformer_ffn.main()
    assert r["hidden_after"] < r["hidden_before"] and r["down_inputs"] == r["hidden_after"]
    assert r["test_acc"] > 0.8


def test_lightning_callback_prunes_and_the_checkpoint_reloads():
    pytest.importorskip("lightning.pytorch")
    import lightning_callback
    r = lightning_callback.main()
    assert r["units_removed"] > 0.1 and r["params"] < r["params_dense"] and r["test_acc"] > 0.9


def test_hf_trainer_prunes_and_the_saved_model_reloads_in_one_call():
    pytest.importorskip("transformers")
    import hf_trainer
    r = hf_trainer.main()
    assert r["budget_met"] and r["units_removed"] >= 0.25 and r["reloaded_identical"]
    assert sum(r["widths_after"]) < sum(r["widths_before"]) and r["eval_loss"] < 4.0


def test_ddp_under_torchrun_keeps_ranks_identical(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(EXAMPLES / "ddp_torchrun.py"), "--epochs", "4", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=EXAMPLES,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in out.stderr.splitlines() if "Warning" not in line and "warn" not in line]
    assert out.returncode == 0, "\n".join(errors[:40] + ["..."] + errors[-20:])   # the ranks' own lines first
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["same_widths_as_rank0"] and r["world"] == 2 for r in ranks)
    assert ranks[0]["units"] == ranks[1]["units"] < 160


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_snippets_come_from_the_examples():
    """Every line of the README's Python snippets that mentions demp appears in an example."""
    examples = "\n".join(p.read_text() for p in EXAMPLES.glob("*.py"))
    normal = {line.strip() for line in examples.splitlines()}
    missing = [line.strip() for block in _code_blocks((ROOT / "README.md").read_text())
               for line in block.splitlines()
               if ("demp" in line or "pruner" in line) and not line.strip().startswith("#")
               and line.strip() not in normal]
    assert not missing, f"README lines not in examples/: {missing}"


def test_building_blocks_remove_exactly():
    import building_blocks
    r = building_blocks.main()
    assert r["units_removed"] == 16 and r["output_change"] < 1e-5 and r["optimizer_follows"]
