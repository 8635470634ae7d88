"""save_hyperparameters / hparams / AttributeDict, on real nn.Module subclasses."""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import warnings
from argparse import Namespace
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from engine.hparams import AttributeDict, HyperparametersMixin


class Net(HyperparametersMixin, nn.Module):
    """Stand-in for LightningModule(HyperparametersMixin, nn.Module)."""

    def __init__(self) -> None:
        super().__init__()


class AllArgs(Net):
    def __init__(self, hidden: int, lr: float = 0.1, act: str = "relu") -> None:
        super().__init__()
        self.layer = nn.Linear(2, hidden)
        self.save_hyperparameters()


def test_all_init_args_are_saved_with_defaults() -> None:
    m = AllArgs(4, lr=0.5)
    assert m.hparams == {"hidden": 4, "lr": 0.5, "act": "relu"}
    assert isinstance(m.hparams, AttributeDict)
    assert m.hparams.lr == 0.5
    assert m._hparams_name == "kwargs"
    assert m._log_hyperparams is True


def test_module_stays_a_working_nn_module() -> None:
    m = AllArgs(3)
    assert [n for n, _ in m.named_parameters()] == ["layer.weight", "layer.bias"]
    assert set(m.state_dict()) == {"layer.weight", "layer.bias"}
    assert m.layer(torch.ones(1, 2)).shape == (1, 3)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.hparams == {"hidden": 3, "lr": 0.1, "act": "relu"}
    assert loaded.hparams_initial == m.hparams_initial


def test_hparams_defaults_before_saving() -> None:
    m = Net()
    assert m.hparams == {} and isinstance(m.hparams, AttributeDict)
    assert m.hparams_initial == {}
    assert m._log_hyperparams is False


def test_selected_names_and_logger_flag() -> None:
    class Sel(Net):
        def __init__(self, a: int, b: int, c: int) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c", logger=False)

    m = Sel(1, 2, 3)
    assert m.hparams == {"a": 1, "c": 3}
    assert m._hparams_name == "kwargs"
    assert m._log_hyperparams is False


def test_unknown_name_raises_key_error() -> None:
    class Bad(Net):
        def __init__(self, a: int) -> None:
            super().__init__()
            self.save_hyperparameters("a", "zz")

    with pytest.raises(KeyError, match=r"\['zz'\].*available: \['a'\]"):
        Bad(1)


@pytest.mark.parametrize("ignore", ["net", ["net"], ("net", 3)])
def test_ignore_forms(ignore: object) -> None:
    class Ign(Net):
        def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=ignore)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no nn.Module warning once it is ignored
        m = Ign(nn.Linear(1, 1))
    assert m.hparams == {"lr": 0.1}


def test_nn_module_argument_is_kept_but_warned() -> None:
    class WithNet(Net):
        def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()

    net = nn.Linear(1, 1)
    with pytest.warns(UserWarning, match=r"Attribute 'net' is an instance of `nn.Module`.*ignore=\['net'\]"):
        m = WithNet(net)
    assert m.hparams.net is net
    assert m.hparams.lr == 0.1


@pytest.mark.parametrize("config", [{"p": 1, "q": "x"}, Namespace(p=1, q="x")])
def test_single_dict_or_namespace_argument(config: object) -> None:
    class Cfg(Net):
        def __init__(self, cfg: object, other: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)

    m = Cfg(config)
    assert m.hparams == {"p": 1, "q": "x"}
    assert isinstance(m.hparams, AttributeDict)
    assert m._hparams_name == "cfg"
    if isinstance(config, dict):
        assert m.hparams is not config  # copied into an AttributeDict


def test_empty_container_is_a_no_op() -> None:
    class Empty(Net):
        def __init__(self, cfg: dict) -> None:
            super().__init__()
            self.save_hyperparameters(cfg, logger=False)

    m = Empty({})
    assert m.hparams == {}
    assert not hasattr(m, "_hparams_name")
    assert m._log_hyperparams is False


@pytest.mark.parametrize("value", [5, 1.5, True])
def test_primitive_argument_rejected(value: object) -> None:
    class Prim(Net):
        def __init__(self, a: object) -> None:
            super().__init__()
            self.save_hyperparameters(a)

    with pytest.raises(ValueError, match="primitive"):
        Prim(value)


def test_unsupported_config_type_rejected() -> None:
    class Odd(Net):
        def __init__(self, a: object) -> None:
            super().__init__()
            self.save_hyperparameters(a)

    with pytest.raises(ValueError, match="unsupported config type list"):
        Odd([1, 2])


def test_reassigned_argument_var_args_and_kwargs() -> None:
    class Kw(Net):
        def __init__(self, c: int, *extra: int, d: int = 4, **kw: int) -> None:
            c = c * 2  # the value at save time is what gets stored
            super().__init__()
            self.save_hyperparameters()

    m = Kw(3, 7, 8, e=9)
    assert m.hparams == {"c": 6, "d": 4, "e": 9}  # *extra dropped, **kw flattened


def test_base_class_saves_and_child_args_are_merged() -> None:
    class Base(Net):
        def __init__(self, a: int, b: int = 2, **kwargs: int) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, c: int, a: int = 10, **kw: int) -> None:
            super().__init__(a=1, **kw)

    m = Child(3, extra=9)
    # the child's (outermost) values win: a=10, not the a=1 passed to Base
    assert m.hparams == {"a": 10, "b": 2, "extra": 9, "c": 3}


def test_child_ignore_removes_what_base_saved() -> None:
    class Base(Net):
        def __init__(self, a: int, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, z: int = 1) -> None:
            super().__init__(a=z)
            self.save_hyperparameters(ignore=["b"])

    assert Child().hparams == {"a": 1, "z": 1}


def test_composed_module_does_not_see_outer_arguments() -> None:
    class Inner(Net):
        def __init__(self, same: str, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    class OuterModule(Net):
        def __init__(self, same: str = "outer", x: int = 5) -> None:
            super().__init__()
            self.inner = Inner("inner")
            self.save_hyperparameters()

    class PlainOuter:
        def __init__(self, same: str = "outer", x: int = 5) -> None:
            super().__init__()
            self.inner = Inner("inner")

    outer = OuterModule()
    assert outer.inner.hparams == {"same": "inner", "b": 2}
    assert outer.hparams == {"same": "outer", "x": 5}
    assert PlainOuter().inner.hparams == {"same": "inner", "b": 2}


def test_init_without_super_finds_nothing() -> None:
    class NoSuper(Net):
        def __init__(self, a: int) -> None:
            Net.__init__(self)  # no `super()`: the frame has no __class__ cell, as in Lightning
            self.save_hyperparameters()

    m = NoSuper(1)
    assert m.hparams == {}
    assert m._hparams_name is None


def test_explicit_frame_from_helper() -> None:
    class Helper(Net):
        def __init__(self, a: int, b: int = 2) -> None:
            super().__init__()
            self._save(inspect.currentframe())

        def _save(self, frame: object) -> None:
            self.save_hyperparameters(frame=frame)

    assert Helper(1).hparams == {"a": 1, "b": 2}


def test_second_call_merges_dicts() -> None:
    class Twice(Net):
        def __init__(self, a: int, b: int) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="a")
            self.save_hyperparameters({"q": 1})

    m = Twice(1, 2)
    assert m.hparams == {"b": 2, "q": 1}
    assert m.hparams_initial == {"b": 2, "q": 1}
    assert m._hparams_name is None  # the dict is not one of the init args


def test_hparams_initial_is_a_frozen_deep_copy() -> None:
    class Nested(Net):
        def __init__(self, sizes: list, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()

    sizes = [1, 2]
    m = Nested(sizes)
    m.hparams.lr = 0.9
    m.hparams.sizes.append(3)  # hparams keeps the user's object (mutable)
    assert m.hparams.lr == 0.9 and sizes == [1, 2, 3]
    initial = m.hparams_initial
    assert initial == {"sizes": [1, 2], "lr": 0.1}
    initial.sizes.append(99)
    assert m.hparams_initial.sizes == [1, 2]  # each read is a fresh copy


def test_dataclass_uses_init_fields() -> None:
    @dataclass(eq=False)
    class DC(HyperparametersMixin):
        a: int
        b: str = "x"

        def __post_init__(self) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert DC(1).hparams == {"a": 1, "b": "x"}


def test_tensor_argument_does_not_break_name_lookup() -> None:
    class T(Net):
        def __init__(self, w: torch.Tensor, cfg: dict) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)

    m = T(torch.ones(3), {"k": 1})
    assert m.hparams == {"k": 1}
    assert m._hparams_name == "cfg"


def test_attribute_dict_access_repr_and_pickle() -> None:
    ad = AttributeDict({"key1": 1, "key2": "abc"})
    ad.update({"my-key": 3.14})
    ad.new_key = 42
    ad.key1 = 2
    assert ad["new_key"] == 42 and ad.key1 == 2
    assert repr(ad) == '"key1":    2\n"key2":    abc\n"my-key":  3.14\n"new_key": 42'
    assert repr(AttributeDict()) == ""
    del ad.new_key
    assert "new_key" not in ad
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = ad.missing
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        del ad.missing
    clone = pickle.loads(pickle.dumps(ad))
    assert type(clone) is AttributeDict and clone == ad
    assert copy.deepcopy(ad) == ad
