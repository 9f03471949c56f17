"""DemP inside an unmodified Hugging Face ``Trainer``: one callback, and a one-call reload.

A small OPT language model (ReLU FFNs, built from a config: nothing is downloaded) learns the
bytes of Python's own source files.  ``DemonPruningCallback`` adds the penalty's gradient before
each optimizer step, applies the noise and the dead checks after it, and removes dead FFN units
from the model and the optimizer until the units budget is met.  ``trainer.save_model()`` writes
the pruned widths next to the weights; ``from_pretrained_pruned`` rebuilds the model from them.
Needs transformers (``pip install -e '.[hf]'`` from a checkout). Run:

    python examples/hf_trainer.py    # some seconds on 2 CPU cores
"""
from __future__ import annotations

import argparse
import sysconfig
import tempfile
import warnings
from pathlib import Path

import torch
import transformers

from demp.integrations.hf import DemonPruningCallback, from_pretrained_pruned

SEQ = 32


class SourceBytes(torch.utils.data.Dataset):
    """Windows of SEQ bytes of local Python source files (inputs are their own labels)."""

    def __init__(self, n: int, offset: int = 0):
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        text = b"".join(p.read_bytes() for p in sorted(stdlib.glob("[a-c]*.py"))[:20])
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
        self.rows = data[offset * SEQ:(offset + n) * SEQ].view(n, SEQ)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def ffn_widths(model: transformers.OPTForCausalLM) -> list[int]:
    return [layer.fc1.out_features for layer in model.model.decoder.layers]


def main(steps: int = 40, seed: int = 0) -> dict:
    transformers.set_seed(seed)
    transformers.utils.logging.disable_progress_bar()
    config = transformers.OPTConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, ffn_dim=128,
                                    num_attention_heads=4, max_position_embeddings=SEQ, word_embed_proj_dim=32,
                                    activation_function="relu", pad_token_id=0, bos_token_id=0, eos_token_id=0)
    model = transformers.OPTForCausalLM(config)
    train, held_out = SourceBytes(1024), SourceBytes(16, offset=1024)
    probe = [{"input_ids": train.rows[:64]}, {"input_ids": train.rows[64:128]}]
    callback = DemonPruningCallback(probe, target_units=0.3, target_by=0.6, reg_peak=2e-2, prune_every=4)
    before = ffn_widths(model)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
            weight_decay=0.01, warmup_steps=5, lr_scheduler_type="cosine", save_strategy="no",
            logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=seed)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
        trainer.remove_callback(transformers.PrinterCallback)        # quiet: the summary is printed below
        trainer.train()
        loss = trainer.evaluate(held_out)["eval_loss"]
        trainer.save_model(f"{out}/final")
        reloaded = from_pretrained_pruned(transformers.OPTForCausalLM, f"{out}/final")
    x = {"input_ids": held_out.rows[:4]}
    with torch.no_grad():
        same = torch.equal(reloaded(**x).logits, model.eval()(**x).logits)
    assert same and ffn_widths(reloaded) == ffn_widths(model), "the reloaded model differs"
    return {"widths_before": before, "widths_after": ffn_widths(model), "eval_loss": loss,
            "units_removed": 1 - sum(ffn_widths(model)) / sum(before), "budget_met": callback.pruner.budget_met,
            "reloaded_identical": same}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    r = main(opts.steps, opts.seed)
    print(f"FFN widths {r['widths_before']} -> {r['widths_after']} ({100 * r['units_removed']:.0f}% of units "
          f"removed, budget met: {r['budget_met']}); held-out loss {r['eval_loss']:.3f}; reloaded in one call "
          f"with identical logits: {r['reloaded_identical']}")
