"""LightningModule: the user's model with Lightning's hooks, `self.log`, and optimisation helpers.

Every hook here is a no-op (or Lightning's default action); the trainer subscribes only the hooks a subclass
overrides, so an unused hook costs nothing per step.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from engine.datamodule import move_data_to_device
from engine.errors import MisconfigurationException, user_stacklevel
from engine.hparams import HyperparametersMixin

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["LightningModule"]


class LightningModule(HyperparametersMixin, nn.Module):
    """Base class of a statetrain/Lightning model: implement `training_step` and `configure_optimizers`.

    Example:
        >>> class Model(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = nn.functional.mse_loss(self.layer(x), y)
        ...         self.log("train_loss", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: "Trainer | None" = None
        self._current_fx_name: str | None = None
        self._automatic_optimization = True
        self._example_input_array: Any = None
        self._strict_loading: bool | None = None
        self.prepare_data_per_node = True
        self.allow_zero_length_dataloader_with_multiple_devices = False

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and deepcopy leave the Trainer out (Lightning does too): a copied module, e.g. an averaged
        model, is the module alone, not a second Trainer with its data and process group."""
        state = dict(self.__dict__)
        state["_trainer"] = None
        return state

    # -- attributes -----------------------------------------------------------------------------------------------
    @property
    def trainer(self) -> "Trainer":
        if self._trainer is None and not getattr(self, "_exporting", False):
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(model) first")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: "Trainer | None") -> None:
        self._trainer = trainer

    @property
    def automatic_optimization(self) -> bool:
        """False: training_step steps the optimizers itself (manual_backward, opt.step())."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def example_input_array(self) -> Any:
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    @property
    def strict_loading(self) -> bool:
        return True if self._strict_loading is None else self._strict_loading

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list:
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def fabric(self) -> None:
        return None

    @property
    def device_mesh(self) -> None:
        return None

    # -- logging --------------------------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
            rank_zero_only: bool = False) -> None:
        """Record a scalar for callbacks, the progress bar and loggers (Lightning's `self.log`)."""
        trainer = self._trainer
        if trainer is None:  # Lightning warns (once) and drops the value
            if not self.__dict__.get("_warned_unattached_log"):
                self.__dict__["_warned_unattached_log"] = True
                warnings.warn(f"You are trying to `self.log({name!r}, ...)` but the `self.trainer` reference is not "
                              f"registered on {type(self).__name__} yet: it is not attached to a Trainer (the model "
                              "hasn't been passed to the `Trainer`); the value is dropped", UserWarning,
                              stacklevel=user_stacklevel())
            return
        if trainer.barebones:
            warnings.warn(f"self.log({name!r}, ...) does nothing with Trainer(barebones=True)", stacklevel=2)
            return
        results = trainer.context.results
        fx = self._current_fx_name
        if results is None and fx is not None:
            from engine.results import check_fx

            check_fx(fx, on_step, on_epoch, name=name)  # raises, naming the hook, when it may not log
        if results is None or fx is None:
            raise MisconfigurationException(
                f"self.log({name!r}, ...) was called outside of a hook run by the Trainer (e.g. from __init__ or "
                "from code the Trainer does not call); log from training_step, validation_step or a Lightning hook")
        results.log(fx, name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                    reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                    sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
                    metric_attribute=metric_attribute, rank_zero_only=rank_zero_only)

    def log_dict(self, dictionary: Mapping[str, Any], prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                 add_dataloader_idx: bool = True, batch_size: int | None = None, rank_zero_only: bool = False) -> None:
        """`self.log` for every item of `dictionary` (each metric of a torchmetrics.MetricCollection)."""
        if not isinstance(dictionary, Mapping):
            from engine.results import metric_collection_items

            dictionary = metric_collection_items(dictionary) or dictionary
        if not isinstance(dictionary, Mapping):
            raise MisconfigurationException(
                f"self.log_dict expected a mapping of names to values, got {type(dictionary).__name__}")
        for k, v in dictionary.items():
            self.log(k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
                     rank_zero_only=rank_zero_only)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` on global rank 0 only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    # -- steps ----------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(
            f"{type(self).__name__}.training_step is not implemented; `trainer.fit` needs "
            "`def training_step(self, batch, batch_idx)` returning the loss")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(f"{type(self).__name__}.validation_step is not implemented")

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(
            f"{type(self).__name__}.test_step is not implemented; `trainer.test` needs "
            "`def test_step(self, batch, batch_idx)`")

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Default: `self(batch)`."""
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        raise MisconfigurationException(
            f"{type(self).__name__}.configure_optimizers is not implemented; `trainer.fit` needs it to return an "
            "optimizer (or a list, or a dict with 'optimizer' and 'lr_scheduler')")

    def configure_callbacks(self) -> Sequence[Any] | Any:
        return []

    def configure_model(self) -> None:
        """Create layers lazily here (called inside the trainer's setup)."""

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) from configure_optimizers: one object if there is one, else a list."""
        trainer = self.trainer
        opts = trainer.context.pipeline.lightning_optimizers if use_pl_optimizer else trainer.optimizers
        if not opts:
            return None if not use_pl_optimizer else []
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from configure_optimizers: None, one object, or a list."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step `optimizer`; the closure (training_step, zero_grad, backward) must run inside it."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        optimizer.zero_grad()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward under manual optimization: fires the before/after backward hooks around `self.backward`."""
        if self.automatic_optimization:
            raise MisconfigurationException(
                "manual_backward() is for manual optimization; set `self.automatic_optimization = False` in "
                f"{type(self).__name__}.__init__, or return the loss from training_step instead")
        self.trainer.context.pipeline.manual_backward(loss, *args, **kwargs)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def clip_gradients(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradients of `optimizer`'s parameters by norm (default) or value; 0/None does nothing."""
        trainer_val = self._trainer.gradient_clip_val if self._trainer is not None else None
        if gradient_clip_val is None:
            gradient_clip_val = trainer_val or 0.0
        elif trainer_val is not None and trainer_val != gradient_clip_val:
            raise MisconfigurationException(
                f"clip_gradients(gradient_clip_val={gradient_clip_val}) conflicts with "
                f"Trainer(gradient_clip_val={trainer_val}); set it in one place only")
        algo = gradient_clip_algorithm or "norm"
        if algo not in ("norm", "value"):
            raise MisconfigurationException(
                f"clip_gradients(gradient_clip_algorithm={algo!r}): expected 'norm' or 'value'")
        if not isinstance(gradient_clip_val, (int, float)):
            raise TypeError(f"clip_gradients: gradient_clip_val must be an int or float, got {gradient_clip_val!r}")
        if gradient_clip_val <= 0:
            return
        if self._trainer is not None:  # the run's clip phase (hooks/grad_clip.py provides it)
            self._trainer.context.pipeline.clip(optimizer, gradient_clip_val, algo)
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if algo == "norm":
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze (requires_grad=False) every parameter not owned by `optimizer`; untoggle_optimizer undoes it."""
        opt = getattr(optimizer, "optimizer", optimizer)
        owned = {id(p) for g in opt.param_groups for p in g["params"]}
        saved = {}
        for o in self.trainer.optimizers:
            for g in o.param_groups:
                for p in g["params"]:
                    if id(p) not in owned and id(p) not in saved:
                        saved[id(p)] = (p, p.requires_grad)
                        p.requires_grad = False
        self._toggled = saved

    def untoggle_optimizer(self, optimizer: Any) -> None:
        for p, flag in getattr(self, "_toggled", {}).values():
            p.requires_grad = flag
        self._toggled = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather `data` from every process; on one process each tensor gains a leading dimension of size 1."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            return trainer.strategy.all_gather(data, group=group, sync_grads=sync_grads)
        if isinstance(data, Tensor):
            return data.unsqueeze(0)
        if isinstance(data, Mapping):
            return type(data)({k: self.all_gather(v) for k, v in data.items()})
        if isinstance(data, (list, tuple)):
            return type(data)(self.all_gather(v) for v in data)
        return torch.as_tensor(data).unsqueeze(0)

    def freeze(self) -> None:
        """requires_grad=False on all parameters and eval mode."""
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = True
        self.train()

    # -- hooks (no-ops unless overridden) ------------------------------------------------------------------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_zero_grad(self, optimizer: Optimizer) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict) -> None: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
        """A new module built from the checkpoint's hyperparameters (`kwargs` override them) with its weights;
        read without pickle unless `weights_only=False` (engine.checkpoint)."""
        if hparams_file is not None:
            raise NotImplementedError("load_from_checkpoint(hparams_file=...): not supported; pass the "
                                      "hyperparameters as keyword arguments instead")
        from engine.checkpoint import load_module

        return load_module(cls, checkpoint_path, map_location=map_location, strict=strict,
                           weights_only=True if weights_only is None else weights_only, **kwargs)

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    # -- data hooks -----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise MisconfigurationException(
            f"`train_dataloader` must be implemented on {type(self).__name__} (or pass a dataloader / datamodule "
            "to trainer.fit)")

    def val_dataloader(self) -> Any:
        raise MisconfigurationException(f"`val_dataloader` must be implemented on {type(self).__name__}")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException(f"`test_dataloader` must be implemented on {type(self).__name__}")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(f"`predict_dataloader` must be implemented on {type(self).__name__}")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # -- export ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def to_torchscript(self, file_path: str | None = None, method: str = "script",
                       example_inputs: Any = None, **kwargs: Any) -> Any:
        """Export with TorchScript (`method='script'` or `'trace'` with example_inputs/example_input_array)."""
        mode = self.training
        self.eval()
        self._exporting = True  # TorchScript walks every attribute; `trainer` must not raise meanwhile
        try:
            out = self._export_torchscript(method, example_inputs, **kwargs)
        finally:
            self._exporting = False
        self.train(mode)
        if file_path is not None:
            torch.jit.save(out, file_path)
        return out

    def _export_torchscript(self, method: str, example_inputs: Any, **kwargs: Any) -> Any:
        if method == "script":
            out = torch.jit.script(self, **kwargs)
        elif method == "trace":
            inputs = example_inputs if example_inputs is not None else self.example_input_array
            if inputs is None:
                raise ValueError("to_torchscript(method='trace') needs example_inputs or self.example_input_array")
            out = torch.jit.trace(self, example_inputs=inputs, **kwargs)
        else:
            raise ValueError(f"to_torchscript(method={method!r}): expected 'script' or 'trace'")
        return out

    @torch.no_grad()
    def to_onnx(self, file_path: str, input_sample: Any = None, **kwargs: Any) -> None:
        """Export to ONNX with torch.onnx.export (needs the `onnx` package)."""
        sample = input_sample if input_sample is not None else self.example_input_array
        if sample is None:
            raise ValueError("to_onnx needs input_sample or self.example_input_array")
        mode = self.training
        self.eval()
        torch.onnx.export(self, sample, file_path, **kwargs)
        self.train(mode)
