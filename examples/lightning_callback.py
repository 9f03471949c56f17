"""DemP for an unmodified LightningModule: one callback.

``DemonPruning`` adds the penalty's gradient after backward, applies the live-only noise and the
dead checks after the optimizer step, and slices the optimizer Lightning holds, so the module's
``training_step`` and ``configure_optimizers`` stay as they are. A pruned checkpoint loads back
into a fresh module with ``load_checkpoint``. Needs Lightning (``pip install -e '.[lightning]'``
from a checkout). Run:

    python examples/lightning_callback.py    # a few seconds on 2 CPU cores
"""
from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from demp.integrations.lightning import DemonPruning, load_checkpoint
from plain_loop import MyNet, digits


class DigitsModule(pl.LightningModule):
    """A plain LightningModule: nothing DemP-specific."""

    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = MyNet(width=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)


def main(epochs: int = 8, seed: int = 0) -> dict:
    pl.seed_everything(seed, verbose=False)
    x_train, y_train, x_test, y_test = digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=64,
                                         shuffle=True)
    probe = [(x_train[:512], y_train[:512]), (x_train[512:1024], y_train[512:1024])]
    callback = DemonPruning(probe, target_units=0.2, target_by=0.7, reg_peak=5e-2, prune_every=10)
    module = DigitsModule()
    folder = tempfile.mkdtemp(prefix="demp-lightning-")
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=folder, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, loader)
    path = f"{folder}/pruned.ckpt"
    trainer.save_checkpoint(path)
    pruned = load_checkpoint(DigitsModule, path).eval()     # a fresh module at the pruned widths
    with torch.no_grad():
        acc = (pruned(x_test).argmax(1) == y_test).float().mean().item()
    return {"units_removed": callback.pruner.budget_reached, "budget_met": callback.pruner.budget_met,
            "test_acc": acc, "params": sum(p.numel() for p in pruned.parameters()),
            "params_dense": sum(p.numel() for p in DigitsModule().parameters())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    r = main(parser.parse_args().epochs)
    print(f"{100 * r['units_removed']:.1f}% of units removed (budget {'met' if r['budget_met'] else 'NOT met'}); "
          f"reloaded checkpoint: {r['params']:,} of {r['params_dense']:,} parameters, test accuracy {100 * r['test_acc']:.1f}%")
