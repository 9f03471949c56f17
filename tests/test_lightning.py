"""DemonPruning callback on an unmodified LightningModule (skipped without Lightning)."""
import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from ddp_workers import BatchNormNet, batches, dying  # noqa: E402
from demp.integrations.lightning import DemonPruning, load_checkpoint  # noqa: E402


class Tiny(pl.LightningModule):
    """A plain LightningModule: AdamW with a step LR schedule; nothing DemP-specific."""

    def __init__(self, lr: float = 2e-2):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = dying(BatchNormNet())

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 5, 0.5),
                                                     "interval": "step"}}


def trainer(tmp_path, steps: int, callback) -> "pl.Trainer":
    return pl.Trainer(max_steps=steps, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      enable_checkpointing=False)


def loader(batches: list) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None)   # the batches as they are


def callback():
    probe = [x for x, _ in batches(2, 32, seed=100)]
    return DemonPruning(probe, reg_peak=0.2, noise_peak=1e-3, prune_every=4, schedule="constant")


def test_callback_prunes_an_unmodified_module_and_checkpoints_load_back(tmp_path):
    data = batches(24, 16)
    module, cb = Tiny(), callback()
    fit = trainer(tmp_path, 12, cb)
    fit.fit(module, train_dataloaders=loader(data[:12]))
    widths = dict(cb.pruner.widths)
    assert cb.pruner.history[0].units_before == 32 and sum(widths.values()) < 32
    assert fit.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(2e-2 * 0.5 ** 2)
    optimizer = fit.optimizers[0]
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in module.parameters()}
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in module.parameters())

    path = tmp_path / "pruned.ckpt"
    fit.save_checkpoint(path)
    fresh = load_checkpoint(Tiny, str(path))
    x = data[0][0]
    assert torch.equal(fresh.eval()(x), module.eval()(x))

    resumed_cb = callback()
    resume = trainer(tmp_path, 24, resumed_cb)
    resume.fit(Tiny(), train_dataloaders=loader(data[12:]), ckpt_path=str(path))
    assert resume.global_step == 24 and resumed_cb.pruner.step_count == 24
    assert sum(resumed_cb.pruner.widths.values()) <= sum(widths.values())
