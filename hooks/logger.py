"""The `Logger` base class (Lightning's API) and what the file loggers share: versioned run directories, params
flattening and sanitizing, atomic file writes, and the write-failure guard that keeps a full disk from ever
stopping training (the first OSError is reported once, the logger goes quiet, `logger.error` keeps it).

`save_dir` may be an fsspec URL (`memory://`, `s3://`, ...; `file://` is a local path): directories and files then go
through fsspec, with the atomicity each backend allows (see `engine.utilities.cloud_io`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import IO, Any

from engine.errors import LoggerError
from engine.log import log
from engine.utilities import cloud_io

__all__ = [
    "Logger", "LoggerError", "write_guard", "params_to_dict", "flatten_params", "sanitize_params", "yaml_safe",
    "add_prefix", "next_version", "allocate_version", "atomic_open", "write_hparams_yaml", "RunDirLogger",
    "NoOpExperiment",
]


class Logger(ABC):
    """Base class of experiment loggers: Lightning's surface, plus `strict` and `error` for write failures.

    Subclasses implement `name`, `version`, `log_metrics` and `log_hyperparams`; the rest has no-op defaults.
    """

    group_separator: str = "/"
    # Class-level defaults so subclasses that skip `super().__init__()` still work with the Trainer.
    strict: bool = False
    error: BaseException | None = None

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.error = None

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment name."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment version."""

    @property
    def save_dir(self) -> str | None:
        """The directory the logger was given, or None when it keeps nothing locally."""
        return None

    @property
    def root_dir(self) -> str | None:
        """The directory that holds every version of this experiment, or None."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The directory of this run (this version), or None."""
        return None

    @property
    def experiment(self) -> Any:
        """The backend object (e.g. a SummaryWriter), for writes the Logger API does not cover."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record `metrics` at x-axis position `step`."""

    @abstractmethod
    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters."""

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model's graph (no-op unless the backend supports it)."""

    def save(self) -> None:
        """Push buffered data to storage."""

    def finalize(self, status: str) -> None:
        """Last call of a run (`status` is 'success' or 'failed'): save and release resources."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after ModelCheckpoint saved a checkpoint."""

    def record_failure(self, error: BaseException, path: str | None) -> None:
        """Keep the first write failure and report it once; callers then skip further writes."""
        if getattr(self, "error", None) is not None:
            return
        self.error = error
        then = ("no more writes from this logger; the run will end with LoggerError (strict=True)"
                if getattr(self, "strict", False)
                else "no more writes from this logger; training continues")
        log.error("logger write failed", logger=type(self).__name__, path=path, error=repr(error), then=then)


@contextlib.contextmanager
def write_guard(logger: Any, path: str | None) -> Iterator[None]:
    """Run a write; an OSError (read-only dir, full disk) is recorded on `logger` (a Logger, or any object that
    takes an `error` attribute) instead of propagating."""
    try:
        yield
    except OSError as exc:
        Logger.record_failure(logger, exc, path)


class NoOpExperiment:
    """Stands in for a backend that could not be opened: every method call does nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


# -- params -----------------------------------------------------------------------------------------------------------
def params_to_dict(params: Any) -> dict[str, Any]:
    """None, a Namespace, a dataclass or a Mapping as a plain dict (what log_hyperparams accepts)."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"log_hyperparams(params=...) got {type(params).__name__}; expected a dict, an "
                    "argparse.Namespace or a dataclass instance")


def flatten_params(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Nested mappings (and Namespaces, dataclasses, non-empty lists of mappings) become 'a/b' keys."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, delimiter, name))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for i, item in enumerate(value):
                flat.update(flatten_params(item, delimiter, f"{name}{delimiter}{i}"))
        else:
            flat[name] = value
    return flat


def _scalar_item(value: Any) -> Any:
    """A one-element tensor / numpy value as a Python number, else `value` unchanged."""
    numel = getattr(value, "numel", None)  # torch.Tensor.numel(); numpy has .size
    count = numel() if callable(numel) else getattr(value, "size", None)
    if count == 1 and callable(getattr(value, "item", None)):
        return value.item()
    return value


def sanitize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params with values TensorBoard's HPARAMS understands: bool/int/float/str kept (one-element
    tensors/arrays become numbers), anything else becomes its str()."""
    clean: dict[str, Any] = {}
    for key, value in params.items():
        value = _scalar_item(value)
        clean[key] = value if type(value) in (bool, int, float, str) else str(value)
    return clean


def yaml_safe(value: Any) -> Any:
    """`value` made of the types yaml.safe_dump writes (nesting kept, enums by name, other objects as str)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, float, bool)) else k: yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    for base in (bool, int, float, str):  # subclasses such as numpy.float64: safe_dump wants the exact type
        if isinstance(value, base):
            return base(value)
    item = _scalar_item(value)
    if item is not value:
        return yaml_safe(item)
    return str(value)


def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    """Keys as '<prefix><separator><key>' (unchanged when prefix is empty)."""
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


# -- version directories ------------------------------------------------------------------------------------------
def next_version(root_dir: str) -> int:
    """1 + the largest N of the `version_N` directories in `root_dir` (0 when there are none or it is unreadable)."""
    found = [-1]
    for name in cloud_io.listdir(root_dir, dirs_only=True):
        suffix = name[len("version_"):]
        if name.startswith("version_") and suffix.isdigit():
            found.append(int(suffix))
    return max(found) + 1


def allocate_version(root_dir: str, attempts: int = 10_000) -> int:
    """Create `root_dir/version_N` for the next free N and return N; os.mkdir is atomic, so concurrent runs that
    race for the same N get distinct versions (the loser retries). Raises OSError when it cannot create it.
    On an fsspec URL the next free N is taken from a listing (no lock exists there; see cloud_io)."""
    if cloud_io.is_remote(root_dir):
        candidate = next_version(root_dir)
        cloud_io.makedirs(cloud_io.join(root_dir, f"version_{candidate}"))
        return candidate
    os.makedirs(root_dir, exist_ok=True)
    candidate = next_version(root_dir)
    for _ in range(attempts):
        try:
            os.mkdir(os.path.join(root_dir, f"version_{candidate}"))
            return candidate
        except FileExistsError:
            # Someone took it (or a file has that name): move past it and past anything created meanwhile.
            candidate = max(candidate + 1, next_version(root_dir))
    raise FileExistsError(f"could not allocate a version_N directory in {root_dir} after {attempts} attempts")


# -- files ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[IO[str]]:
    """A text file that replaces `path` only when the block succeeds (temp file in the same dir + os.replace, or
    the fsspec equivalent), so readers never see a half-written file; it gets the usual 0666-minus-umask mode."""
    with cloud_io.atomic_text(path) as fh:
        yield fh


def write_hparams_yaml(path: str, params: Mapping[str, Any]) -> None:
    """Write `params` (nested, made yaml-safe) to `path` atomically with yaml.safe_dump."""
    import yaml  # lazy: only loggers that write hparams need it

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: ~10x faster, same output
    text = yaml.dump(yaml_safe(dict(params)), Dumper=dumper, default_flow_style=False)
    with atomic_open(path) as fh:
        fh.write(text)


class RunDirLogger(Logger):
    """A logger that writes into `save_dir/name/version_N`: the directory properties and version allocation
    shared by TensorBoardLogger and CSVLogger. `version=None` takes the next free version_N on first use."""

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", strict: bool = False) -> None:
        super().__init__(strict=strict)
        if version is not None and not isinstance(version, (int, str)):
            raise TypeError(f"{type(self).__name__}(version={version!r}): expected None (next free version_N), "
                            "an int N (version_N) or a str (used as the directory name)")
        self._save_dir = cloud_io.normalize(save_dir)
        self._name = name or ""
        self._version = version
        self._explicit_version = version is not None  # a reused explicit version warns if it holds files
        self._prefix = prefix

    @property
    def name(self) -> str:
        """The experiment name ('' puts the versions directly in save_dir)."""
        return self._name

    @property
    def version(self) -> int | str:
        """The run's version; when none was given, the first access creates the next free version_N directory."""
        if self._version is None:
            try:
                self._version = allocate_version(self.root_dir)
            except OSError as exc:
                self.record_failure(exc, self.root_dir)
                self._version = next_version(self.root_dir)
        return self._version

    def adopt_version(self, version: int | str) -> None:
        """Use rank 0's version (a distributed run's other ranks): they log nothing, but `version` and `log_dir`
        must name rank 0's directory, and computing their own would create an empty version_N+1."""
        if not self._explicit_version:
            self._version = version

    @property
    def save_dir(self) -> str:
        """The directory given to the constructor."""
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """save_dir/name: the parent of every version of this experiment."""
        return cloud_io.join(self._save_dir, self._name) if self._name else self._save_dir

    @property
    def log_dir(self) -> str:
        """root_dir/version_N (or root_dir/<version> for a str version): this run's directory."""
        version = self.version
        return cloud_io.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")
