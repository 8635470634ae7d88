"""Lightning's `lightning.pytorch.core.saving`: read and write the `hparams.yaml` files loggers write."""

from __future__ import annotations

import os
import tempfile
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]


def load_hparams_from_yaml(config_yaml: str | os.PathLike, use_omegaconf: bool = True) -> dict[str, Any]:
    """The hyperparameters in `config_yaml` as a dict ({} with a RuntimeWarning when the file is missing, as
    Lightning does); an OmegaConf DictConfig when `use_omegaconf` and omegaconf is installed."""
    import yaml  # lazy: `import engine` stays light

    path = os.fspath(config_yaml)
    if not os.path.isfile(path):
        warnings.warn(f"Missing Tags: {path}.", RuntimeWarning, stacklevel=2)
        return {}
    with open(path, encoding="utf-8") as fh:
        hparams = yaml.safe_load(fh) or {}
    if not isinstance(hparams, dict):
        raise ValueError(f"load_hparams_from_yaml({path!r}): the file holds a {type(hparams).__name__}, expected "
                         "a mapping of hyperparameter names to values (the hparams.yaml a logger writes)")
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            return hparams
        return OmegaConf.create(hparams)  # type: ignore[return-value]
    return hparams


def save_hparams_to_yaml(config_yaml: str | os.PathLike, hparams: Mapping[str, Any] | Namespace,
                         use_omegaconf: bool = True) -> None:
    """Write `hparams` to `config_yaml` with yaml.safe_dump, atomically (temp file, then rename), mode 0644."""
    import yaml

    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    elif not isinstance(hparams, Mapping):
        raise TypeError(f"save_hparams_to_yaml(hparams={type(hparams).__name__}): expected a dict or an "
                        "argparse.Namespace")
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            pass
        else:
            if OmegaConf.is_config(hparams):
                hparams = OmegaConf.to_container(hparams, resolve=True)  # type: ignore[assignment]
    text = yaml.safe_dump(dict(hparams), default_flow_style=False)
    path = os.fspath(config_yaml)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hparams-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
