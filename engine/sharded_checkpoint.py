"""Sharded checkpoints: a directory written by every rank with torch.distributed.checkpoint (DCP), for
`FSDPStrategy(state_dict_type='sharded')`, where no rank ever holds the whole model.

    <name>.ckpt/                 a directory with the checkpoint's usual name
        .metadata                DCP's index of the shards
        __<rank>_0.distcp        each rank's shards: "state_dict" (the module) and "optimizer_<i>" (optimizer i,
                                 its states keyed by parameter names, as torch.distributed.checkpoint.state_dict
                                 gives them)
        meta.pt                  everything else of the checkpoint (rank 0's), readable with weights_only=True

The directory is written next to its target as `.<name>.partial` and renamed into place once every rank's shards
and the metadata are on disk, so a crash leaves the previous checkpoint or the new one. `consolidate` turns a
sharded checkpoint into the single-file format of `engine.checkpoint` (optimizer states in torch's index layout),
offline and without a process group: `python -m engine checkpoint consolidate DIR OUT`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from engine.errors import CheckpointError

__all__ = ["META_NAME", "SHARDED_KEY", "is_sharded", "save", "load_meta", "consolidate", "consolidate_to_file",
           "optimizer_state_to_ids", "optimizer_state_to_names"]

META_NAME = "meta.pt"
SHARDED_KEY = "sharded_checkpoint"  # in what `load_meta` returns: the directory the shards are in


def is_sharded(path: str | os.PathLike) -> bool:
    """A local directory holding a sharded checkpoint (DCP's `.metadata` and our `meta.pt`)."""
    p = Path(path)
    return p.is_dir() and (p / ".metadata").is_file() and (p / META_NAME).is_file()


# -- optimizer states: parameter names (DCP, FSDP) <-> indices (torch's Optimizer.state_dict) -----------------------
def optimizer_state_to_ids(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter names into torch's layout (parameters numbered across the groups in
    order), which `Optimizer.load_state_dict` and Lightning read."""
    groups = state.get("param_groups", [])
    index = {name: i for i, name in enumerate(n for g in groups for n in g["params"])}
    return {"state": {index[name]: s for name, s in state.get("state", {}).items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]}


def optimizer_state_to_names(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch's layout into parameter names; `names[i]` is the name of the optimizer's i-th parameter."""
    groups = state.get("param_groups", [])
    if sum(len(g["params"]) for g in groups) != len(names):
        raise CheckpointError(f"the checkpoint's optimizer state has {sum(len(g['params']) for g in groups)} "
                              f"parameters, the optimizer {len(names)}; was it saved from another model or "
                              "configure_optimizers?")
    return {"state": {names[int(i)]: s for i, s in state.get("state", {}).items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in groups]}


# -- writing (every rank) -------------------------------------------------------------------------------------------
def save(checkpoint: dict[str, Any], path: str | os.PathLike, is_global_zero: bool,
         barrier: Callable[[], None]) -> Path:
    """Write `checkpoint` as a sharded directory at `path`; every rank calls this with its own shards (its
    `state_dict` and `optimizer_states` hold DTensors) and rank 0's other entries become `meta.pt`."""
    import torch.distributed.checkpoint as dcp

    if "://" in os.fspath(path) and not os.fspath(path).startswith("file://"):
        raise CheckpointError(f"sharded checkpoint {path}: sharded checkpoints are written to a local (or mounted "
                              "shared) directory; use a local dirpath, or FSDPStrategy(state_dict_type='full')")
    target = Path(os.fspath(path).removeprefix("file://")).absolute()
    partial = target.with_name(f".{target.name}.partial")
    payload: dict[str, Any] = {"state_dict": checkpoint["state_dict"]}
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    if "optimizer_states" in checkpoint:
        meta["optimizer_states"] = []
        for i, state in enumerate(checkpoint["optimizer_states"]):
            if state.get("state"):
                payload[f"optimizer_{i}"] = state
                meta["optimizer_states"].append({"sharded": f"optimizer_{i}"})
            else:  # no step yet: only the param groups (plain data), in torch's layout
                meta["optimizer_states"].append(state)
    try:
        if is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        barrier()
        import torch.distributed as dist

        # returns on every rank once all shards are written; one process without a group writes alone
        dcp.save(payload, checkpoint_id=str(partial), no_dist=not dist.is_initialized())
        if is_global_zero:
            with open(partial / META_NAME, "wb") as f:
                torch.save(meta, f)
                f.flush()
                os.fsync(f.fileno())
            _swap(partial, target)
    except BaseException as exc:
        if is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write the sharded checkpoint {target}: {exc.strerror or exc}; the "
                                  "previous checkpoint (if any) is untouched") from exc
        raise
    barrier()
    return target


def _swap(new: Path, target: Path) -> None:
    """Put the finished directory `new` at `target`, replacing what was there (moved aside first, then deleted)."""
    old = target.with_name(f".{target.name}.old")
    if os.path.lexists(old):
        _delete(old)
    if os.path.lexists(target):
        os.replace(target, old)
    os.replace(new, target)
    if os.path.lexists(old):
        _delete(old)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# -- reading --------------------------------------------------------------------------------------------------------
def load_meta(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """The checkpoint without its shards (rank 0's meta.pt), with `SHARDED_KEY` naming the directory: a sharded
    strategy loads the module and optimizer shards from there into its own (sharded) tensors."""
    from engine.checkpoint import migrate, safe_globals

    directory = Path(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            meta = torch.load(directory / META_NAME, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} is not a sharded checkpoint (no {META_NAME} in it)") from exc
    meta[SHARDED_KEY] = str(directory)
    return migrate(meta)


def read_shards(path: str | os.PathLike) -> dict[str, Any]:
    """Every shard of the directory as full tensors (DCP's offline conversion, no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards.pt"
        dcp_to_torch_save(str(path), str(out))
        return torch.load(out, weights_only=True)


def consolidate(path: str | os.PathLike) -> dict[str, Any]:
    """A sharded checkpoint as one single-file checkpoint dict (full weights, optimizer states in torch's layout)."""
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint (expected a directory with .metadata and "
                              f"{META_NAME})")
    meta = load_meta(path)
    meta.pop(SHARDED_KEY)
    shards = read_shards(path)
    ckpt: dict[str, Any] = {}
    for key, value in meta.items():
        ckpt[key] = value
        if key == "global_step":
            ckpt["state_dict"] = shards["state_dict"]  # Lightning's key order: state_dict after the counters
    ckpt.setdefault("state_dict", shards["state_dict"])
    if "optimizer_states" in meta:
        ckpt["optimizer_states"] = [
            optimizer_state_to_ids(shards[s["sharded"]]) if set(s) == {"sharded"} else s
            for s in meta["optimizer_states"]]
    return ckpt


def consolidate_to_file(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """`consolidate` written atomically to `out` (a checkpoint `torch.load(weights_only=True)` and any strategy
    read)."""
    from engine import checkpoint

    return checkpoint.save(consolidate(path), out)
