"""The loops' data: where each dataloader comes from and when it is (re)loaded (`DataSources`), batch limits,
sizing, sampler epochs, and the batch transfer to the device (`BatchTransfer`)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from engine.errors import MisconfigurationException, PossibleUserWarning
from engine.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext

__all__ = ["as_loader_list", "num_batches", "set_sampler_epoch", "without_shuffle", "has_len", "maybe_seed_workers",
           "check_not_empty", "overridden", "DataSources", "BatchTransfer", "loader_generators", "resume_iterator",
           "SkipBatches"]


def has_len(loader: Any) -> bool:
    """True when `len(loader)` works (an IterableDataset without __len__ has none)."""
    try:
        len(loader)
    except (TypeError, NotImplementedError):
        return False
    return True


def as_loader_list(loaders: Any, what: str) -> list[Any]:
    """One loader, a list/tuple of loaders, or a dict of loaders (in order) -> a list."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    if not hasattr(loaders, "__iter__"):
        raise MisconfigurationException(
            f"{what} must be an iterable such as a torch DataLoader, got {type(loaders).__name__}")
    return [loaders]


def num_batches(loader: Any, limit: int | float, what: str) -> int | float:
    """How many batches to draw from `loader` under `limit_*_batches` (int: at most that many; float: a fraction)."""
    if not has_len(loader):
        if isinstance(limit, float) and limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"limit_{what}_batches={limit}: a fraction needs a dataloader with a length, but the {what} "
                "dataloader has none (IterableDataset); pass an int number of batches instead")
        if isinstance(limit, int):
            return limit
        return 0 if limit == 0.0 else math.inf
    n = len(loader)
    if isinstance(limit, int):
        return min(n, limit)
    batches = int(n * limit)
    if limit > 0 and batches == 0 and n > 0:
        raise MisconfigurationException(
            f"limit_{what}_batches={limit} of a {what} dataloader with {n} batches gives {n} * {limit} < 1 batch; "
            f"increase limit_{what}_batches or pass an int")
    return batches


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call `set_epoch(epoch)` on the loader's sampler and batch sampler's sampler when they have one."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _rebuild(loader: DataLoader, **changes: Any) -> DataLoader:
    kwargs = dict(dataset=loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                  persistent_workers=loader.persistent_workers)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    if loader.batch_size is None:  # a custom batch_sampler
        kwargs.pop("batch_size")
        kwargs.pop("drop_last")
    kwargs.update(changes)
    return DataLoader(**kwargs)


def loader_generators(loader: Any) -> list[Any]:
    """The torch.Generator objects a DataLoader draws its order and worker seeds from (besides the global RNG)."""
    found: list[Any] = []
    for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None),
              getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None)):
        if g is not None and not any(g is h for h in found):
            found.append(g)
    return found


class SkipBatches:
    """A batch sampler that draws the same batches as `inner` but yields only those after the first `skip`:
    the skipped ones cost their indices, never their samples."""

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner = inner
        self.skip = skip

    def __iter__(self) -> Any:
        it = iter(self.inner)
        for _ in range(self.skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


def resume_iterator(loader: Any, skip: int) -> Any:
    """An iterator over `loader` that starts after its first `skip` batches. A map-style DataLoader replays its
    batch sampler (indices only, so skipping costs milliseconds); anything else is iterated and its first batches
    are dropped, which loads them (with a warning saying so)."""
    if skip <= 0:
        return iter(loader)
    if (isinstance(loader, DataLoader) and loader.batch_sampler is not None
            and not isinstance(loader.dataset, IterableDataset)):
        kwargs: dict[str, Any] = dict(dataset=loader.dataset, batch_sampler=SkipBatches(loader.batch_sampler, skip),
                                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                      pin_memory=loader.pin_memory, timeout=loader.timeout,
                                      worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                                      persistent_workers=loader.persistent_workers)
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
            kwargs["multiprocessing_context"] = loader.multiprocessing_context
        return iter(DataLoader(**kwargs))
    rank_zero_warn(f"resuming mid-epoch from a {type(loader).__name__} that cannot skip by index (an IterableDataset "
                   f"or a custom iterable): its first {skip} batches of the epoch are loaded and dropped",
                   category=UserWarning)
    it = iter(loader)
    for _ in range(skip):
        if next(it, None) is None:
            break
    return it


def without_shuffle(loader: Any) -> Any:
    """overfit_batches: the same first batches every epoch, so a shuffled DataLoader gets a SequentialSampler."""
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler) and loader.batch_size:
        rank_zero_warn("You requested to overfit but enabled train dataloader shuffling; statetrain replaces the "
                       "sampler with a SequentialSampler", category=UserWarning)
        return _rebuild(loader, sampler=SequentialSampler(loader.dataset))
    return loader


def maybe_seed_workers(loader: Any, global_rank: int) -> Any:
    """With seed_everything(workers=True), give a multi-worker DataLoader without worker_init_fn a seeded one."""
    if (os.environ.get("PL_SEED_WORKERS") == "1" and isinstance(loader, DataLoader) and loader.num_workers > 0
            and loader.worker_init_fn is None and not isinstance(loader.dataset, IterableDataset)):
        from functools import partial

        from engine.seed import worker_init_function

        sampler = loader.sampler if loader.batch_size is not None else None
        changes: dict[str, Any] = {"worker_init_fn": partial(worker_init_function, rank=global_rank)}
        if sampler is not None:
            changes["sampler"] = sampler
        else:
            changes["batch_sampler"] = loader.batch_sampler
        return _rebuild(loader, **changes)
    return loader


def check_not_empty(loaders: Sequence[Any], what: str) -> None:
    """A train dataloader of length 0 is a mistake: say which one and why it is empty (a documented departure:
    Lightning warns, then trains nothing)."""
    for i, dl in enumerate(loaders):
        if has_len(dl) and len(dl) == 0:
            suffix = f" #{i}" if len(loaders) > 1 else ""
            raise MisconfigurationException(
                f"the {what} dataloader{suffix} has length 0{_why_empty(dl)}; it yields no batch")


def _why_empty(dl: Any) -> str:
    """Why a sized dataloader has no batch, with the fix that applies."""
    ds, bs, drop = getattr(dl, "dataset", None), getattr(dl, "batch_size", None), getattr(dl, "drop_last", None)
    if ds is None or not has_len(ds):
        return ""
    if len(ds) == 0:
        return " (dataset of 0 samples: give it data)"
    if drop and bs is not None and len(ds) < bs:
        return (f" (dataset of {len(ds)} samples, batch_size={bs}, drop_last=True: lower batch_size or set "
                "drop_last=False)")
    return f" (dataset of {len(ds)} samples, batch_size={bs}, drop_last={drop}: its sampler yields nothing)"


def warn_if_empty(loaders: Sequence[Any]) -> None:
    """An empty validation/test/predict dataloader: Lightning's warning; the loop then skips it (0 batches)."""
    for dl in loaders:
        if has_len(dl) and len(dl) == 0:
            rank_zero_warn(f"Total length of `{type(dl).__name__}` across ranks is zero. Please make sure this was "
                           f"your intention.{_why_empty(dl)}", category=UserWarning)


# -- where the loops get their data ----------------------------------------------------------------------------------
def overridden(obj: Any, base: type, name: str) -> bool:
    """Whether `obj` overrides `base.name`: in its class, or assigned on the instance (a function, a mock);
    `None` there turns the hook off (`model.validation_step = None`), as in Lightning."""
    if getattr(obj, name, None) is None:
        return False
    if name in getattr(obj, "__dict__", ()):
        return True
    return getattr(type(obj), name, None) is not getattr(base, name, None)


class DataSources:
    """The run's dataloaders: where each comes from (an argument, the datamodule or the module's hook), when it is
    (re)loaded, how many batches each gives, and the strategy's `process_dataloader` on every load.

    The Trainer's `train_dataloader`, `val_dataloaders`, `num_training_batches`, ... are views of this object."""

    def __init__(self, ctx: "RunContext") -> None:
        self.ctx = ctx
        self.train_source: Callable[[], Any] | None = None
        self.val_source: Callable[[], Any] | None = None
        self.eval_source: Callable[[], Any] | None = None
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.num_training_batches: int | float = math.inf
        self.num_sanity_val_batches: list[int | float] = []
        self.num_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.val_check_batch: int | float = math.inf
        self.train_sized = True
        self.last_train_reload = -1
        self.val_loaders: list[Any] | None = None
        self.last_val_reload = -1
        self.warned_log_interval = False

    # -- sources ----------------------------------------------------------------------------------------------------
    def prepare(self, fn: str, model: Any, datamodule: Any, train: Any = None, val: Any = None,
                eval_loaders: Any = None) -> None:
        """Remember where each dataloader of run `fn` comes from: an argument, the datamodule, or the module's hook."""
        from engine.datamodule import LightningDataModule
        from engine.module import LightningModule

        ctx = self.ctx

        def source(given: Any, hook: str) -> Callable[[], Any] | None:
            if given is not None:
                return lambda: given
            owner = datamodule if datamodule is not None and overridden(datamodule, LightningDataModule, hook) else None
            if owner is None and overridden(model, LightningModule, hook):
                owner = model
            if owner is None:
                return None
            return lambda: ctx.call_hook(owner, hook)

        if fn == "fit":
            self.train_source = source(train, "train_dataloader")
            self.val_source = source(val, "val_dataloader")
            if self.val_source is not None and not overridden(model, LightningModule, "validation_step"):
                rank_zero_warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
                               category=UserWarning)
        else:
            hook = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}[fn]
            self.eval_source = source(eval_loaders, hook)
            if self.eval_source is None:
                raise MisconfigurationException(
                    f"trainer.{fn}: no data; pass dataloaders=..., a datamodule, or define "
                    f"{type(model).__name__}.{hook}()")
        self.val_loaders = None
        self.last_val_reload = -1

    def _process(self, loader: Any, stage: str) -> Any:
        return self.ctx.strategy.process_dataloader(maybe_seed_workers(loader, self.ctx.global_rank), stage)

    # -- fit ----------------------------------------------------------------------------------------------------------
    def load_train(self) -> None:
        """Call the train source, size it under limit_train_batches and compute val_check_batch."""
        ctx = self.ctx
        s = ctx.settings
        assert self.train_source is not None
        loaders = as_loader_list(self.train_source(), "train_dataloaders")
        if len(loaders) != 1:
            raise MisconfigurationException(
                f"trainer.fit: expected one train dataloader, got {len(loaders)}; combine them into one")
        loader = loaders[0]
        check_not_empty([loader], "train")
        if s.overfit_batches:
            loader = without_shuffle(loader)
        loader = self._process(loader, "overfit" if s.overfit_batches else "fit")  # overfit: no shuffling
        self.train_dataloader = loader
        self.train_sized = has_len(loader)
        self.num_training_batches = num_batches(loader, s.limit_train_batches, "train")
        every = s.log_every_n_steps
        if ctx.loggers and every and self.num_training_batches < every and not self.warned_log_interval:
            self.warned_log_interval = True
            rank_zero_warn(f"The number of training batches ({self.num_training_batches}) is smaller than the logging "
                           f"interval Trainer(log_every_n_steps={every}). Set a lower value for log_every_n_steps if "
                           "you want to see logs for the training epoch.", category=PossibleUserWarning)
        self.last_train_reload = ctx.progress.epoch
        vci = s.val_check_interval
        if isinstance(vci, int) and not isinstance(vci, bool):
            if s.check_val_every_n_epoch is not None and self.train_sized and vci > self.num_training_batches:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}) must be <= the number of training batches "
                    f"({self.num_training_batches}); to validate by total batches across epochs set "
                    "check_val_every_n_epoch=None, to disable validation set limit_val_batches=0")
            self.val_check_batch = vci
        elif not self.train_sized or self.num_training_batches == math.inf:
            if vci != 1.0:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}): with a train dataloader without a length, "
                    "val_check_interval must be 1.0 or an int number of batches")
            self.val_check_batch = math.inf
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * vci))

    def estimated_train_batches(self) -> int | float:
        """Batches per training epoch, loading the train dataloader if that has not happened yet."""
        if self.train_dataloader is None and self.train_source is not None:
            loader = as_loader_list(self.train_source(), "train_dataloaders")[0]
            return num_batches(loader, self.ctx.settings.limit_train_batches, "train")
        return self.num_training_batches

    def load_val(self, stage: str) -> list[Any]:
        """Validation loaders inside fit: loaded the first time, then every reload_dataloaders_every_n_epochs."""
        n = self.ctx.settings.reload_dataloaders_every_n_epochs
        epoch = self.ctx.progress.epoch
        if self.val_loaders is None or (stage == "validate" and n and epoch - self.last_val_reload >= n):
            assert self.val_source is not None
            loaders = [self._process(dl, "validate") for dl in as_loader_list(self.val_source(), "val_dataloaders")]
            warn_if_empty(loaders)
            self.val_loaders = loaders
            self.last_val_reload = epoch
            self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        return self.val_loaders

    # -- validate / test / predict ------------------------------------------------------------------------------------
    def load_eval(self, stage: str) -> tuple[list[Any], list[int | float]]:
        """The loaders of trainer.validate/test/predict and their batch limits."""
        assert self.eval_source is not None
        loaders = [self._process(dl, stage) for dl in as_loader_list(self.eval_source(), f"{stage} dataloaders")]
        warn_if_empty(loaders)
        what = {"validate": "val", "test": "test", "predict": "predict"}[stage]
        limits = [num_batches(dl, getattr(self.ctx.settings, f"limit_{what}_batches"), what) for dl in loaders]
        attr = {"validate": "val_dataloaders", "test": "test_dataloaders", "predict": "predict_dataloaders"}[stage]
        setattr(self, attr, loaders[0] if len(loaders) == 1 else loaders)
        setattr(self, f"num_{what}_batches", limits)
        return loaders, limits


class BatchTransfer:
    """on_before_batch_transfer -> transfer_batch_to_device -> on_after_batch_transfer (Lightning's order), planned
    once per run: the datamodule's hook where it overrides one, else the module's; the default move is the
    strategy's `batch_to_device`."""

    def __init__(self, ctx: "RunContext") -> None:
        from engine.datamodule import LightningDataModule
        from engine.module import LightningModule

        self.ctx = ctx
        dm, model = ctx.datamodule, ctx.module
        plan = []
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            if dm is not None and overridden(dm, LightningDataModule, name):
                plan.append((dm, name))
            elif overridden(model, LightningModule, name):
                plan.append((model, name))
            elif name == "transfer_batch_to_device":
                plan.append((None, name))
        provider = ctx.bus.providers.get("convert_input")  # precision: floating inputs to its dtype
        if provider is not None:
            plan.insert(0, (provider[1], "convert_input"))
        self.plan = tuple(plan) if len(plan) > 1 or plan[0][0] is not None else None
        self.to_device = ctx.strategy.batch_to_device
        # the whole transfer when no hook is overridden: the loops call it directly (one call per batch)
        self.direct = self.to_device if self.plan is None else None

    def __call__(self, batch: Any, dataloader_idx: int) -> Any:
        plan = self.plan
        if plan is None:
            return self.to_device(batch)
        ctx = self.ctx
        device = ctx.strategy.root_device
        for owner, name in plan:
            if owner is None:
                batch = self.to_device(batch)
            elif name == "convert_input":
                batch = owner(batch)
            elif name == "transfer_batch_to_device":
                batch = ctx.call_hook(owner, name, batch, device, dataloader_idx)
            else:
                batch = ctx.call_hook(owner, name, batch, dataloader_idx)
        return batch
