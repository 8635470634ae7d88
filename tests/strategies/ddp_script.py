"""The training script the multi-process tests run (copied to tmp_path and launched as a real program).

usage: python ddp_script.py OUT_DIR STRATEGY MODE
       (MODE: train | logged | ckpt | stop | early | ema | fail | fail0 | kill | stop_never)
Each rank writes OUT_DIR/rank{R}.json: final weights, metrics, global_step, and the local gradients after each
backward (to check no_sync)."""

import json
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import engine as pl

out_dir, strategy, mode = sys.argv[1], sys.argv[2], sys.argv[3]
devices = int(os.environ.get("TEST_DEVICES", "2"))
num_nodes = int(os.environ.get("TEST_NUM_NODES", "1"))
accelerator = os.environ.get("TEST_ACCELERATOR", "cpu")


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.grads: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        if mode in ("fail", "fail0", "kill") and self.trainer.global_step == 3:
            with open(os.path.join(out_dir, f"failing{self.global_rank}.txt"), "w") as f:
                f.write(repr(time.time()))  # when the failure happens (the job's end is measured from it)
        if mode == "fail" and self.global_rank == 1 and self.trainer.global_step == 3:
            raise ValueError("boom on rank 1 at step 3")
        if mode == "fail0" and self.global_rank == 0 and self.trainer.global_step == 3:
            raise ValueError("boom on rank 0 at step 3")
        if mode == "kill" and self.global_rank == 1 and self.trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_after_backward(self):
        self.grads.append(self.layer.weight.grad.flatten().tolist())

    def on_train_epoch_end(self):
        if mode == "early":  # a metric that only improves on rank 0: EarlyStopping fires on rank 1 alone
            epoch = self.trainer.current_epoch
            self.log("watch", float(-epoch if self.global_rank == 0 else epoch))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if mode == "stop" and self.global_rank == 1 and self.trainer.global_step == 3:
            self.trainer.should_stop = True  # one rank decides; every rank must stop at the same step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    epochs = {"train": 2, "stop": 10, "early": 10}.get(mode, int(os.environ.get("TEST_MAX_EPOCHS", "2")))
    callbacks = [pl.EarlyStopping("watch", patience=1, mode="min")] if mode == "early" else []
    if mode == "ema":
        from engine.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=0.5))
    logger = (pl.CSVLogger(out_dir, name="logs", version=0) if mode == "logged"
              else pl.CSVLogger(out_dir, name="logs") if mode == "ckpt" else False)
    trainer = pl.Trainer(max_epochs=epochs, accumulate_grad_batches=2, logger=logger, log_every_n_steps=1,
                         enable_progress_bar=False, enable_checkpointing=mode == "ckpt", enable_model_summary=False,
                         trace=None,
                         accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                         callbacks=callbacks)
    model = Model()
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True))
    record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
              "weights": [p.detach().flatten().tolist() for p in model.parameters()],
              "train_loss": float(trainer.callback_metrics["train_loss"]), "grads": model.grads,
              "threads": torch.get_num_threads(), "epoch": trainer.current_epoch}
    if mode == "ckpt":
        record["ckpt_dir"] = trainer.checkpoint_callback.dirpath
        record["best"] = trainer.checkpoint_callback.best_model_path
        record["log_dir"] = trainer.log_dir
        record["version"] = trainer.logger.version
    if strategy == "ddp":  # the collectives, after the fit, on every rank
        rank = trainer.global_rank
        record["all_gather"] = model.all_gather(torch.tensor([rank, 10 * rank])).tolist()
        record["broadcast"] = trainer.strategy.broadcast({"from": rank})
        record["reduce_sum"] = float(trainer.strategy.reduce(torch.tensor(rank + 1.0), "sum"))
        record["reduce_mean"] = float(trainer.strategy.reduce(torch.tensor(rank + 1.0), "mean"))
        record["reduce_max"] = float(trainer.strategy.reduce(torch.tensor(rank + 1.0), "max"))
        trainer.strategy.barrier()
    with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(record, f)
