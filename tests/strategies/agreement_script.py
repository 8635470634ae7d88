"""The script the agreement tests run (copied to tmp_path, launched with strategy='ddp', 2 CPU processes).

usage: python agreement_script.py OUT_DIR MODE
MODE: plain (no handler may skip) | nan (rank 1's loss is NaN at batch 2, on_nonfinite_loss='skip') | nan_acc (the
same with accumulate_grad_batches=2) | sigterm (rank 0 gets SIGTERM during batch 1).
Each rank writes OUT_DIR/rank{R}.json at the end of training or when the fit stops on an exception: global_step,
weights, the sync handler's collective count."""

import json
import os
import signal
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import engine as pl

out_dir, mode = sys.argv[1], sys.argv[2]


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if mode in ("nan", "nan_acc") and self.global_rank == 1 and batch_idx == 2 and self.current_epoch == 0:
            loss = loss * float("nan")
        if mode == "sigterm" and self.global_rank == 0 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to rank 0 only (the launcher's process)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    def _write(self, trainer, pl_module):
        sync = [h for h in trainer.context.run_handlers if type(h).__name__ == "DDPSync"]
        record = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                  "weights": [p.detach().flatten().tolist() for p in pl_module.parameters()],
                  "collectives": sync[0].collectives if sync else None,
                  "skipped": next((cb.skipped for cb in trainer.callbacks if hasattr(cb, "skipped")), None)}
        with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)

    def on_train_end(self, trainer, pl_module):
        self._write(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self._write(trainer, pl_module)


if __name__ == "__main__":
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, trace=None,
                         accumulate_grad_batches=2 if mode == "nan_acc" else 1,
                         on_nonfinite_loss="skip" if mode in ("nan", "nan_acc") else "error",
                         callbacks=[Record(), pl.ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpts"))])
    trainer.fit(Model(), DataLoader(data, batch_size=4, shuffle=True))
