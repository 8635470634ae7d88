"""The FSDP training script the multi-process tests run (copied to tmp_path and launched as a real program).

usage: python fsdp_script.py OUT_DIR
Settings come from the environment: TEST_STATE_DICT_TYPE (full|sharded), TEST_MAX_EPOCHS, TEST_CKPT_PATH (resume
from it), TEST_ACCUMULATE, TEST_CLIP, TEST_PRECISION, TEST_ACCELERATOR, TEST_CPU_OFFLOAD, TEST_TRACE (a trace path), TEST_FAIL (rank 1 raises at step 3), TEST_VALIDATE_ONLY (load TEST_CKPT_PATH in validate, no fit).
Rank 0 writes OUT_DIR/result.json: the full weights after the run (gathered), global_step, epoch, the loss, the
local shape of the first parameter on each rank (sharding), and the checkpoint folder."""

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from strategies.fsdp import FSDPStrategy

env = os.environ.get


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
        self.scale = nn.Parameter(torch.ones(1))  # a parameter of the LightningModule itself: the root unit's

    def forward(self, x):
        return self.net(x) * self.scale

    def training_step(self, batch, batch_idx):
        if env("TEST_FAIL") and self.global_rank == 1 and self.trainer.global_step == 3:
            raise ValueError("boom on rank 1 at step 3")
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


if __name__ == "__main__":
    out_dir = sys.argv[1]
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    strategy = FSDPStrategy(auto_wrap_policy={nn.Linear}, state_dict_type=env("TEST_STATE_DICT_TYPE", "full"),
                            cpu_offload=bool(env("TEST_CPU_OFFLOAD")))
    ckpt_dir = os.path.join(out_dir, "ckpts")
    trainer = pl.Trainer(max_epochs=int(env("TEST_MAX_EPOCHS", "4")), strategy=strategy,
                         accelerator=env("TEST_ACCELERATOR", "cpu"),
                         devices=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         trace=env("TEST_TRACE") or None,
                         accumulate_grad_batches=int(env("TEST_ACCUMULATE", "1")),
                         gradient_clip_val=float(env("TEST_CLIP")) if env("TEST_CLIP") else None,
                         precision=env("TEST_PRECISION", "32-true"), num_sanity_val_steps=0,
                         callbacks=[pl.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1,
                                                       save_last=True),
                                    *([pl.OnExceptionCheckpoint(ckpt_dir)] if env("TEST_FAIL") else [])])
    model = Model()
    loader = DataLoader(data, batch_size=4, shuffle=True)
    if env("TEST_VALIDATE_ONLY"):
        trainer.validate(model, DataLoader(data, batch_size=4), ckpt_path=env("TEST_CKPT_PATH"))
    else:
        trainer.fit(model, loader, ckpt_path=env("TEST_CKPT_PATH") or None)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # the whole module on rank 0 (a collective: every rank calls it)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    weight = model.net[0].weight
    gathered = trainer.strategy.all_gather(torch.tensor(list(weight.to_local().shape)))
    if trainer.is_global_zero:
        record = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                  "weights": {k: v.flatten().tolist() for k, v in full.items()},
                  "param_type": type(weight).__name__,
                  "local_shapes": gathered.tolist(), "ckpt_dir": ckpt_dir,
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                  "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(record, f)
