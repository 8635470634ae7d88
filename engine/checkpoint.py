"""The checkpoint format: build it from the run's `state_dict()`s, save it atomically, load it safely, migrate it.

One dict, Lightning's keys where they exist, so a statetrain checkpoint loads in Lightning and a Lightning one here:

    epoch, global_step           the epoch (last completed, at an epoch boundary) and optimizer steps
    pytorch-lightning_version    the Lightning checkpoint layout these keys follow
    state_dict                   the module's weights
    optimizer_states             one per optimizer (not with weights_only)
    lr_schedulers                one per scheduler (not with weights_only)
    callbacks                    {state_key: state} of every stateful handler (not with weights_only)
    hyper_parameters, hparams_name                       from save_hyperparameters(), plain types only
    datamodule_hyper_parameters, <DataModule qualname>   the datamodule's hyperparameters and state_dict()
    loops                        {} (Lightning's loop trackers have no statetrain equivalent; see `engine`)
    engine                       format, version, the run state (progress, control, results, metrics), where
                                 the fit goes on (`resume`: the next state, and whether the write happened at a
                                 boundary, where resume is exact), RNG states, the data position, strategy state

Everything is tensors and plain Python types: `torch.load(weights_only=True)` reads it, and so do we. Writes go to a
temporary file in the target's directory, are flushed and fsync'ed, then renamed over the target: a crash at any
moment leaves the old file or the new one, never half of one; the file gets the mode `open()` would give it (0644
under the usual umask). A path may be an fsspec URL (`memory://`, `s3://`, ...; `file://` is local): the checkpoint
is serialised in memory and written with the backend's atomic write (`engine.utilities.cloud_io`).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointError, user_stacklevel
from engine.utilities import cloud_io

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext

__all__ = ["FORMAT_VERSION", "LIGHTNING_LAYOUT", "save", "load", "build", "rng_state", "set_rng_state",
           "plain_hparams", "safe_globals", "instantiate", "load_module", "load_datamodule", "migrate"]

FORMAT_VERSION = 1
LIGHTNING_LAYOUT = "2.6.6"  # the Lightning release whose checkpoint keys this format follows


# -- RNG states as plain data -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch, CUDA (when initialised), Python and NumPy RNG states, as tensors and plain types."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": {"version": version, "state": list(internal), "gauss": gauss}}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- hyperparameters as plain data ----------------------------------------------------------------------------------
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def _as_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_as_plain(v) for v in value)
    return value


def plain_hparams(hparams: Any, owner: str) -> dict[str, Any]:
    """The hyperparameters a checkpoint can hold without pickle: plain values are kept (dict subclasses become
    dicts); any other value is left out with a warning naming it, since loading it would need pickle."""
    out: dict[str, Any] = {}
    dropped = []
    for key, value in dict(hparams).items():
        if _plain(value):
            out[key] = _as_plain(value)
        else:
            dropped.append(f"{key} ({type(value).__name__})")
    if dropped:
        warnings.warn(f"{owner}: hyperparameters {', '.join(dropped)} are not plain data (str, numbers, bool, None, "
                      "tensors, lists/dicts of them) and are not saved in the checkpoint (loading them would need "
                      "pickle); pass them again to load_from_checkpoint(..., name=value), or leave them out with "
                      "save_hyperparameters(ignore=[...])", UserWarning, stacklevel=user_stacklevel())
    return out


# -- what a weights-only load may build besides tensors and plain containers ---------------------------------------
def safe_globals() -> list[Any]:
    """Classes allowed by name in a weights-only load: filesystem paths (Lightning keeps `pathlib` paths that users
    pass as hyperparameters). Lightning 2.6's own checkpoints need nothing else: their hyperparameters are a plain
    dict, and its AttributeDict could not be allowed anyway (torch's weights-only unpickler fills only dict,
    OrderedDict and Counter), so statetrain writes plain dicts too."""
    import pathlib

    return [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


# -- I/O ------------------------------------------------------------------------------------------------------------
def save(checkpoint: dict[str, Any], path: str | os.PathLike) -> Any:
    """Write `checkpoint` to `path` atomically (temporary file in the same directory, fsync, rename); returns the
    path (a Path, or the URL string for an fsspec URL)."""
    if cloud_io.is_remote(path):
        return _save_remote(checkpoint, cloud_io.normalize(path))
    target = Path(cloud_io.normalize(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, cloud_io.default_file_mode())  # not mkstemp's 0600: the file a plain open() would make
    except OSError as exc:
        raise CheckpointError(f"cannot write the checkpoint {target}: {exc.strerror or exc} (the directory "
                              f"{target.parent} is not writable?)") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write the checkpoint {target}: {exc.strerror or exc}; the previous file "
                                  "(if any) is untouched") from exc
        raise
    _fsync_dir(target.parent)
    return target


def _save_remote(checkpoint: dict[str, Any], url: str) -> str:
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    parent = url.rstrip("/").rpartition("/")[0]
    try:
        if parent and not parent.endswith(":/"):
            cloud_io.makedirs(parent)
        cloud_io.atomic_write(url, buf.getvalue())
    except OSError as exc:
        raise CheckpointError(f"cannot write the checkpoint {url}: {exc}; the previous file (if any) is "
                              "untouched") from exc
    return url


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover  (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike, map_location: Any = None, weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint safely (no pickle unless `weights_only=False` is asked for) and migrate it; `path` may be
    an fsspec URL."""
    source: Any
    if cloud_io.is_remote(path):
        url = cloud_io.normalize(path)
        if not cloud_io.isfile(url):
            raise CheckpointError(f"checkpoint {url} does not exist"
                                  + (" (it is a directory)" if cloud_io.isdir(url) else ""))
        data = io.BytesIO(cloud_io.read_bytes(url))
        return _load_from(data, url, map_location, weights_only)
    source = Path(cloud_io.normalize(path))
    from engine import sharded_checkpoint

    if sharded_checkpoint.is_sharded(source):  # FSDP's sharded directory: gathered into one checkpoint here
        return sharded_checkpoint.consolidate(source)
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist" + (" (it is a directory)" if source.is_dir()
                                                                        else ""))
    return _load_from(source, source, map_location, weights_only)


def _load_from(source: Any, name: Any, map_location: Any, weights_only: bool) -> dict[str, Any]:
    """torch.load of a checked file or buffer, with errors that name the checkpoint `name`."""
    if not zipfile.is_zipfile(source):
        raise CheckpointError(f"checkpoint {name} is truncated or corrupt (not a torch zip archive); use an "
                              "earlier checkpoint")
    if isinstance(source, io.BytesIO):
        source.seek(0)  # is_zipfile read the end of the buffer
    try:
        if weights_only:
            with torch.serialization.safe_globals(safe_globals()):
                ckpt = torch.load(source, map_location=map_location, weights_only=True)
        else:
            ckpt = torch.load(source, map_location=map_location, weights_only=False)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise CheckpointError(
                f"checkpoint {name} needs pickle to load: it contains {_unsafe_global(text)}, and unpickling can "
                "run arbitrary code. If you trust the file (you wrote it), pass weights_only=False") from exc
        raise CheckpointError(f"checkpoint {name} is corrupt: {text}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {name} is truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); use an earlier "
                              "checkpoint") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {name} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return migrate(ckpt, name)


def _unsafe_global(text: str) -> str:
    """The global torch's weights-only unpickler refused, from its message."""
    import re

    for pattern in (r"Unsupported global: GLOBAL ([\w.]+)", r"unsupported GLOBAL ([\w.]+)", r"GLOBAL ([\w.]+)"):
        found = re.search(pattern, text)
        if found:
            return f"the global {found.group(1)}"
    return "objects that need pickle"


def migrate(ckpt: dict[str, Any], source: Path | str = "<checkpoint>") -> dict[str, Any]:
    """Bring an older statetrain format up to FORMAT_VERSION; refuse a newer one. Lightning checkpoints (no
    `engine` key) pass as they are: their weights, optimizer/scheduler states and hyperparameters are read
    directly."""
    engine = ckpt.get("engine")
    if engine is None:
        return ckpt
    version = int(engine.get("format", 0))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {source} has format {version}, written by a newer statetrain (this one reads formats up to "
            f"{FORMAT_VERSION}); upgrade statetrain to load it")
    if version < 1:  # format 0: the draft layout without a resume record
        engine.setdefault("resume", {"next": "epoch_start", "exact": False})
        engine["format"] = 1
    return ckpt


# -- building ---------------------------------------------------------------------------------------------------
def handler_states(run: "RunContext") -> dict[str, Any]:
    """{state_key: state_dict()} of every stateful handler of the run (Lightning's `callbacks` key)."""
    states: dict[str, Any] = {}
    for cb in run.callbacks:
        fn = getattr(cb, "state_dict", None)
        if not callable(fn):
            continue
        state = fn()
        if state:
            states[getattr(cb, "state_key", type(cb).__qualname__)] = state
    return states


def build(run: "RunContext", weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint of the run as it is now (see the module docstring for the keys)."""
    module = run.module
    if module is None:
        raise CheckpointError("trainer.save_checkpoint: no model; call it during or after trainer.fit(model)")
    p = run.progress
    resume = run.resume_record()
    epoch = p.epoch - 1 if resume["epoch_done"] else p.epoch
    ckpt: dict[str, Any] = {
        "epoch": max(epoch, 0),
        "global_step": p.global_step,
        "pytorch-lightning_version": LIGHTNING_LAYOUT,
        "state_dict": _call(run.strategy, "model_state_dict", module, default=module.state_dict),
        "loops": {},
    }
    name = type(module).__name__
    if module.hparams:
        ckpt["hyper_parameters"] = plain_hparams(module.hparams, name)
        ckpt["hparams_name"] = module.hparams_name
    if not weights_only:  # Lightning's order: the handlers' states, then the datamodule's
        ckpt["callbacks"] = handler_states(run)
        ckpt.update(run.pipeline.state_dict())
        optimizer_state = getattr(run.strategy, "optimizer_state_dict", None)
        if optimizer_state is not None:  # e.g. FSDP: gathered (full) or the shards (sharded), by parameter names
            ckpt["optimizer_states"] = [optimizer_state(o) for o in run.pipeline.optimizers]
    dm = run.datamodule
    if dm is not None:
        if dm.hparams:
            ckpt["datamodule_hyper_parameters"] = plain_hparams(dm.hparams, type(dm).__name__)
            ckpt["datamodule_hparams_name"] = dm.hparams_name
        dm_state = dm.state_dict()
        if dm_state:
            ckpt[type(dm).__qualname__] = dm_state
    engine: dict[str, Any] = {"format": FORMAT_VERSION, "version": _engine_version(), "resume": resume,
                              "timestamp": list(p.timestamp()), "run": run.state_dict(), "rng": rng_state(),
                              "weights_only": weights_only}
    if not weights_only:
        engine["data"] = run.data_position()
        if run.precision is not None and run.precision.state_dict():
            engine["precision"] = run.precision.state_dict()  # e.g. the GradScaler of '16-mixed'
            ckpt[type(run.precision).__name__] = engine["precision"]
        if run.pipeline.window_open():  # mid accumulation window: the gradients summed so far are state too
            engine["grads"] = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
        engine["strategy"] = run.strategy.state_dict()
    ckpt["engine"] = engine
    return ckpt


def _call(owner: Any, name: str, *args: Any, default: Any) -> Any:
    """`owner.name(*args)` when the owner (a strategy) offers that seam, else `default()`."""
    fn = getattr(owner, name, None)
    return fn(*args) if fn is not None else default()


def instantiate(cls: type, ckpt: dict[str, Any], key: str, name_key: str, overrides: dict[str, Any]) -> Any:
    """`cls(**hyperparameters)` from a checkpoint, as Lightning does: the saved hyperparameters (under one init
    argument when they were saved from one), the overrides on top, filtered to `cls.__init__`'s parameters unless it
    takes **kwargs."""
    import inspect

    kwargs: dict[str, Any] = dict(ckpt.get(key) or {})
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = [q.name for q in params if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    args_name = ckpt.get(name_key)
    if args_name and args_name != "kwargs" and args_name in names:
        kwargs = {args_name: kwargs}
    kwargs.update(overrides)
    if not any(q.kind is q.VAR_KEYWORD for q in params):
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return cls(**kwargs)


def load_module(cls: type, path: str | os.PathLike, map_location: Any = None, strict: bool | None = None,
                weights_only: bool = True, **overrides: Any) -> Any:
    """`LightningModule.load_from_checkpoint`: build the module from the saved hyperparameters (and
    `overrides`), run its `on_load_checkpoint`, load its weights; on the device the weights were mapped to."""
    from engine.loops.resume import load_weights

    ckpt = load(path, map_location=map_location, weights_only=weights_only)
    module = instantiate(cls, ckpt, "hyper_parameters", "hparams_name", overrides)
    module.on_load_checkpoint(ckpt)
    load_weights(module, ckpt, strict=module.strict_loading if strict is None else strict, source=str(path))
    device = next((t.device for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor)), None)
    return module.to(device) if device is not None else module


def load_datamodule(cls: type, path: str | os.PathLike, map_location: Any = None, weights_only: bool = True,
                    **overrides: Any) -> Any:
    """`LightningDataModule.load_from_checkpoint`: build it from the saved datamodule hyperparameters and restore
    its `state_dict()`."""
    ckpt = load(path, map_location=map_location, weights_only=weights_only)
    dm = instantiate(cls, ckpt, "datamodule_hyper_parameters", "datamodule_hparams_name", overrides)
    if cls.__qualname__ in ckpt:
        dm.load_state_dict(ckpt[cls.__qualname__])
    return dm


def _engine_version() -> str:
    import engine

    return getattr(engine, "__version__", "0")
