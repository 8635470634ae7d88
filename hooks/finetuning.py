"""Finetuning callbacks (Lightning's `callbacks.finetuning`): freeze part of a model before training, then unfreeze
it at a chosen epoch and train it as a new optimizer param group.

`BaseFinetuning` calls `freeze_before_training(pl_module)` in `setup` (before `configure_optimizers`, so the optimizer
can be built over the trainable parameters only) and `finetune_function(pl_module, epoch, optimizer)` at every
training epoch start for each optimizer. The param groups it (or the user) adds are remembered by parameter name in
`state_dict()`, so a resumed fit rebuilds them in `on_fit_start`. `BackboneFinetuning` is the ready-made policy:
freeze `pl_module.backbone`, unfreeze it at `unfreeze_backbone_at_epoch` with a lower learning rate, then raise that
rate each epoch by `lambda_func(epoch + 1)`, never above the main group's when `should_align`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Iterable
from typing import Any

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from engine.errors import MisconfigurationException, user_stacklevel
from engine.log import log
from hooks.callback import Callback

__all__ = ["BaseFinetuning", "BackboneFinetuning"]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default `lambda_func`: the backbone's learning rate grows by 1.5x per epoch."""
    return 1.5


class BaseFinetuning(Callback):
    """Subclass and implement `freeze_before_training` and `finetune_function`; the static helpers freeze, unfreeze
    and add param groups."""

    def __init__(self) -> None:
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizers' param groups, parameters given by name (plain data: loadable with weights_only=True)."""
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the param groups; they are applied to the optimizers in `on_fit_start`."""
        self._restarting = True
        # checkpoints written before Lightning 1.6 hold the metadata at the top level
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", state_dict)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """After a restore, rebuild the optimizers' param groups (including those added by unfreezing)."""
        if not self._restarting:
            return
        named = dict(pl_module.named_parameters())
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            groups = self._internal_optimizer_metadata.get(opt_idx)
            if groups is None:
                continue
            missing = [n for g in groups for n in g["params"] if n not in named]
            if missing:
                raise MisconfigurationException(
                    f"{type(self).__name__}: the checkpoint's param groups name parameters the model does not have "
                    f"({missing[:3]}); resume with the model the checkpoint was written from")
            optimizer.param_groups = self._apply_mapping_to_param_groups(groups, named)
        self._restarting = False

    # -- helpers (static, usable on their own) -----------------------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Module | Iterable[Module]) -> list[Module]:
        """The leaf modules of `modules` plus every parent that holds parameters itself."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found: list[Module] = []
            for m in modules:
                found.extend(BaseFinetuning.flatten_modules(m))
            candidates: Iterable[Module] = found
        else:
            candidates = modules.modules()
        return [m for m in candidates
                if not list(m.children()) or any(True for _ in m.parameters(recurse=False))]

    @staticmethod
    def filter_params(modules: Module | Iterable[Module], train_bn: bool = True,
                      requires_grad: bool = True) -> Generator[torch.nn.Parameter, None, None]:
        """Parameters of `modules` whose `requires_grad` equals `requires_grad` (BatchNorm skipped unless train_bn)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            for param in mod.parameters(recurse=False):  # parents are listed too: no recursion, no duplicates
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Module | Iterable[Module]) -> None:
        """Unfreeze every parameter of `modules` (BatchNorm layers track running stats again)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze `module`'s own parameters (a BatchNorm layer also stops tracking running stats)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Module | Iterable[Module], train_bn: bool = True) -> None:
        """Freeze `modules`; BatchNorm layers stay trainable when `train_bn`."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """`params` minus those already in one of `optimizer`'s param groups (warns when some were)."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        out, removed = [], []
        for param in params:
            (removed if id(param) in present else out).append(param)
        if removed:
            warnings.warn(
                "The provided params to be frozen already exist within another group of this optimizer. Those "
                "parameters will be skipped.\nHINT: Did you init your optimizer in `configure_optimizer` as such:\n"
                f" torch.optim.{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...) ",
                UserWarning, stacklevel=user_stacklevel())
        return out

    @staticmethod
    def unfreeze_and_add_param_groups(modules: Module | Iterable[Module], optimizer: Optimizer,
                                      lr: float | None = None, initial_denom_lr: float = 10.0,
                                      train_bn: bool = True) -> None:
        """Unfreeze `modules` and add their parameters to `optimizer` as a new param group, at `lr` when given,
        otherwise at the first group's lr divided by `initial_denom_lr`."""
        BaseFinetuning.make_trainable(modules)
        params_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denom_lr = initial_denom_lr if lr is None else 1.0
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        params = BaseFinetuning.filter_on_optimizer(optimizer, params)
        if params:
            optimizer.add_param_group({"params": params, "lr": params_lr / denom_lr})

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Run `finetune_function` for each optimizer and remember the param groups it left."""
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            num_param_groups = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, opt_idx, num_param_groups, optimizer.param_groups)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        """Called at each training epoch start for each optimizer: unfreeze layers, add param groups."""
        raise NotImplementedError(f"{type(self).__name__} must implement finetune_function(pl_module, epoch, "
                                  "optimizer)")

    def freeze_before_training(self, pl_module: Any) -> None:
        """Called in `setup`, before `configure_optimizers`: freeze what should not train at first."""
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(pl_module)")

    # -- internals ------------------------------------------------------------------------------------------------
    @staticmethod
    def _apply_mapping_to_param_groups(param_groups: list[dict[str, Any]], mapping: dict) -> list[dict[str, Any]]:
        out = []
        for group in param_groups:
            state = {k: v for k, v in group.items() if k != "params"}
            state["params"] = [mapping[p] for p in group["params"]]
            out.append(state)
        return out

    def _store(self, pl_module: Any, opt_idx: int, num_param_groups: int,
               current_param_groups: list[dict[str, Any]]) -> None:
        names = {p: n for n, p in pl_module.named_parameters()}
        if opt_idx not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[opt_idx] = self._apply_mapping_to_param_groups(current_param_groups,
                                                                                             names)
        elif num_param_groups != len(current_param_groups):  # groups added this epoch (by us or the user)
            self._internal_optimizer_metadata[opt_idx].extend(
                self._apply_mapping_to_param_groups(current_param_groups[num_param_groups:], names))


class BackboneFinetuning(BaseFinetuning):
    """Freeze `pl_module.backbone`; at `unfreeze_backbone_at_epoch` add it as a param group with lr
    `backbone_initial_lr` (default: the main lr times `backbone_initial_ratio_lr`), then multiply that lr by
    `lambda_func(epoch + 1)` each epoch, capped at the main lr when `should_align`."""

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 1e-1, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        if not isinstance(unfreeze_backbone_at_epoch, int) or unfreeze_backbone_at_epoch < 0:
            raise MisconfigurationException(
                f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): expected an epoch "
                "index >= 0")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata,
                "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), Module):
            raise MisconfigurationException(
                f"BackboneFinetuning: the LightningModule should have a nn.Module `backbone` attribute; "
                f"{type(pl_module).__name__}.backbone is {type(getattr(pl_module, 'backbone', None)).__name__}")
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        if epoch == self.unfreeze_backbone_at_epoch:
            current_lr = optimizer.param_groups[0]["lr"]
            initial_backbone_lr = (self.backbone_initial_lr if self.backbone_initial_lr is not None
                                   else current_lr * self.backbone_initial_ratio_lr)
            self.previous_backbone_lr = initial_backbone_lr
            self.unfreeze_and_add_param_groups(pl_module.backbone, optimizer, initial_backbone_lr,
                                               train_bn=self.train_bn, initial_denom_lr=self.initial_denom_lr)
            if self.verbose:
                log.info("backbone unfrozen", lr=round(current_lr, self.rounding),
                         backbone_lr=round(initial_backbone_lr, self.rounding))
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            current_lr = optimizer.param_groups[0]["lr"]
            next_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and next_lr > current_lr:
                next_lr = current_lr
            optimizer.param_groups[-1]["lr"] = next_lr
            self.previous_backbone_lr = next_lr
            if self.verbose:
                log.info("backbone lr", lr=round(current_lr, self.rounding), backbone_lr=round(next_lr, self.rounding))
