"""parse_optimizers (every configure_optimizers format and error) and LightningOptimizer, with real torch objects."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.optim import SGD, Adam
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR

from engine.errors import MisconfigurationException
from engine.optim import LightningOptimizer, LRSchedulerConfig, parse_optimizers


@pytest.fixture()
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


@pytest.fixture(autouse=True)
def _no_unexpected_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def sgd(model: nn.Module) -> SGD:
    return SGD(model.parameters(), lr=0.1)


# --- accepted formats ------------------------------------------------------------------------------------------
def test_single_optimizer(model: nn.Module) -> None:
    opt = sgd(model)
    assert parse_optimizers(opt) == ([opt], [], None)


@pytest.mark.parametrize("container", [list, tuple])
def test_list_or_tuple_of_optimizers(model: nn.Module, container: type) -> None:
    a, b = sgd(model), Adam(model.parameters())
    opts, scheds, monitor = parse_optimizers(container([a, b]), automatic_optimization=False)
    assert opts == [a, b] and scheds == [] and monitor is None


def test_two_lists(model: nn.Module) -> None:
    opt = sgd(model)
    step, lam = StepLR(opt, 2), LambdaLR(opt, lambda e: 0.5**e)
    opts, configs, monitor = parse_optimizers(([opt], [step, lam]))
    assert opts == [opt] and monitor is None
    assert configs == [LRSchedulerConfig(step), LRSchedulerConfig(lam)]
    assert configs[0].interval == "epoch" and configs[0].frequency == 1 and configs[0].strict is True


def test_two_lists_second_part_single_item(model: nn.Module) -> None:
    opt = sgd(model)
    step = StepLR(opt, 2)
    _, configs, _ = parse_optimizers([[opt], step])
    assert [c.scheduler for c in configs] == [step]
    _, configs, _ = parse_optimizers(([opt], {"scheduler": step, "interval": "step", "frequency": 3, "name": "lr"}))
    assert configs == [LRSchedulerConfig(step, name="lr", interval="step", frequency=3)]


def test_two_lists_with_empty_schedulers(model: nn.Module) -> None:
    opt = sgd(model)
    assert parse_optimizers(([opt], [])) == ([opt], [], None)


def test_dict_optimizer_only(model: nn.Module) -> None:
    opt = sgd(model)
    assert parse_optimizers({"optimizer": opt}) == ([opt], [], None)


def test_dict_with_scheduler_and_monitor(model: nn.Module) -> None:
    opt = sgd(model)
    plateau = ReduceLROnPlateau(opt)
    opts, configs, monitor = parse_optimizers({"optimizer": opt, "lr_scheduler": plateau, "monitor": "val_loss"})
    assert opts == [opt] and monitor == "val_loss"
    assert configs == [LRSchedulerConfig(plateau, reduce_on_plateau=True, monitor="val_loss")]


def test_plateau_config_dict_takes_top_level_monitor(model: nn.Module) -> None:
    opt = sgd(model)
    plateau = ReduceLROnPlateau(opt)
    _, configs, _ = parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": plateau}, "monitor": "m"})
    assert configs[0].reduce_on_plateau is True and configs[0].monitor == "m"
    _, configs, _ = parse_optimizers(
        {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "own", "strict": False}, "monitor": "m"}
    )
    assert configs[0].monitor == "own" and configs[0].strict is False


def test_explicit_reduce_on_plateau_flag_is_kept(model: nn.Module) -> None:
    opt = sgd(model)
    step = StepLR(opt, 1)
    config = {"scheduler": step, "reduce_on_plateau": True, "monitor": "x"}
    _, configs, _ = parse_optimizers({"optimizer": opt, "lr_scheduler": config})
    assert configs[0].reduce_on_plateau is True and configs[0].monitor == "x"


def test_list_of_dicts_manual_optimization(model: nn.Module) -> None:
    gen, disc = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_g, opt_d = SGD(gen.parameters(), lr=0.1), Adam(disc.parameters())
    sched_d = StepLR(opt_d, 5)
    returned = (
        {"optimizer": opt_g, "monitor": "g_loss"},
        {"optimizer": opt_d, "lr_scheduler": {"scheduler": sched_d, "interval": "step"}},
    )
    opts, configs, monitor = parse_optimizers(returned, automatic_optimization=False)
    assert opts == [opt_g, opt_d]
    assert configs == [LRSchedulerConfig(sched_d, interval="step")]
    assert monitor == "g_loss"


def test_single_dict_in_list_automatic(model: nn.Module) -> None:
    opt = sgd(model)
    step = StepLR(opt, 1)
    opts, configs, _ = parse_optimizers([{"optimizer": opt, "lr_scheduler": step}])
    assert opts == [opt] and configs[0].scheduler is step and configs[0].opt_idx is None


def test_opt_idx_is_none_unless_given(model: nn.Module) -> None:
    """Lightning 2.x leaves `opt_idx` None (its field is only kept for configs that pass it)."""
    a, b = sgd(model), Adam(nn.Linear(1, 1).parameters())
    sb, sa = StepLR(b, 1), LambdaLR(a, lambda e: 1.0)
    _, configs, _ = parse_optimizers(([a, b], [sb, sa]), automatic_optimization=False)
    assert [c.opt_idx for c in configs] == [None, None]
    _, configs, _ = parse_optimizers({"optimizer": a, "lr_scheduler": {"scheduler": sa, "opt_idx": 0}})
    assert configs[0].opt_idx == 0


def test_lightning_optimizer_returned_is_unwrapped(model: nn.Module) -> None:
    opt = sgd(model)
    step = StepLR(opt, 1)
    opts, configs, _ = parse_optimizers(([LightningOptimizer(opt)], [step]))
    assert opts == [opt] and opts[0] is opt and configs[0].scheduler is step


@pytest.mark.parametrize("returned", [None, [], (), ([], [])])
def test_no_optimizer_warns(returned: object) -> None:
    with pytest.warns(UserWarning, match="`configure_optimizers` returned .*this fit will run without an optimizer"):
        assert parse_optimizers(returned) == ([], [], None)


# --- warnings --------------------------------------------------------------------------------------------------
def test_unknown_optimizer_dict_keys_warn(model: nn.Module) -> None:
    opt = sgd(model)
    with pytest.warns(RuntimeWarning, match=r"unsupported keys \['frequency'\]"):
        opts, _, _ = parse_optimizers({"optimizer": opt, "frequency": 2})
    assert opts == [opt]


def test_unknown_scheduler_dict_keys_are_dropped(model: nn.Module) -> None:
    opt = sgd(model)
    step = StepLR(opt, 1)
    with pytest.warns(RuntimeWarning, match=r"unsupported keys \['foo'\]; they are dropped"):
        _, configs, _ = parse_optimizers(
            {"optimizer": opt, "lr_scheduler": {"scheduler": step, "foo": 1, "opt_idx": 7}}
        )
    assert configs == [LRSchedulerConfig(step, opt_idx=7)]


def test_one_cycle_with_epoch_interval_warns(model: nn.Module) -> None:
    opt = sgd(model)
    cycle = OneCycleLR(opt, max_lr=0.5, total_steps=10)
    with pytest.warns(RuntimeWarning, match="`OneCycleLR` scheduler is using 'interval': 'epoch'"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": cycle}})
    _, configs, _ = parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": cycle, "interval": "step"}})
    assert configs[0].interval == "step"


def test_manual_optimization_ignores_plateau_keys(model: nn.Module) -> None:
    opt = sgd(model)
    plateau = ReduceLROnPlateau(opt)
    with pytest.warns(RuntimeWarning, match=r"\['monitor', 'strict'\], which are ignored under manual optimization"):
        _, configs, _ = parse_optimizers(
            {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": plateau, "monitor": "x", "strict": False, "interval": "step"},
            },
            automatic_optimization=False,
        )
    assert configs == [LRSchedulerConfig(plateau, interval="step")]
    # a bare plateau scheduler needs no monitor under manual optimization
    _, configs, _ = parse_optimizers(([opt], [plateau]), automatic_optimization=False)
    assert configs[0].reduce_on_plateau is False and configs[0].monitor is None


# --- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("returned", "shown"),
    [
        ("adam", r"type str: 'adam'"),
        (3, r"type int: 3"),
        ([1, 2], r"type list: \[1, 2\]"),
        ((SGD, StepLR), r"type tuple"),
    ],
)
def test_unusable_return_value(returned: object, shown: str) -> None:
    expected = rf"`configure_optimizers` returned an unsupported value of {shown}"
    with pytest.raises(MisconfigurationException, match=expected):
        parse_optimizers(returned)


def test_optimizer_scheduler_pair_is_not_two_lists(model: nn.Module) -> None:
    opt = sgd(model)
    with pytest.raises(MisconfigurationException, match=r"(?s)unsupported value of type tuple.*two lists"):
        parse_optimizers((opt, StepLR(opt, 1)))


def test_dict_without_optimizer(model: nn.Module) -> None:
    expected = r"(?s)a dict with no 'optimizer' key .*'lr_scheduler'.*Return one of"
    with pytest.raises(MisconfigurationException, match=expected):
        parse_optimizers({"lr_scheduler": StepLR(sgd(model), 1)})
    with pytest.raises(MisconfigurationException, match=r"a dict with 'optimizer': str"):
        parse_optimizers({"optimizer": "sgd"})


def test_scheduler_of_another_optimizer(model: nn.Module) -> None:
    opt, other = sgd(model), sgd(model)
    expected = "`StepLR` belongs to no optimizer returned by configure_optimizers"
    with pytest.raises(MisconfigurationException, match=expected):
        parse_optimizers(([opt], [StepLR(other, 1)]))
    with pytest.raises(MisconfigurationException, match="`ReduceLROnPlateau` belongs to no optimizer"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": ReduceLROnPlateau(other), "monitor": "x"})


def test_plateau_without_monitor(model: nn.Module) -> None:
    opt = sgd(model)
    plateau = ReduceLROnPlateau(opt)
    expected = r"`ReduceLROnPlateau` scheduler without a monitor.*\"monitor\": \"val_loss\""
    with pytest.raises(MisconfigurationException, match=expected):
        parse_optimizers(([opt], [plateau]))
    with pytest.raises(MisconfigurationException, match=r"must include a 'monitor' when a `ReduceLROnPlateau`"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": plateau}})


@pytest.mark.parametrize("interval", ["batch", "epochs", None])
def test_bad_interval(model: nn.Module, interval: object) -> None:
    opt = sgd(model)
    with pytest.raises(MisconfigurationException, match=rf"'interval': {interval!r}; it must be 'step' or 'epoch'"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), "interval": interval}})


@pytest.mark.parametrize("frequency", [0, -1, 1.5, True, "2"])
def test_bad_frequency(model: nn.Module, frequency: object) -> None:
    opt = sgd(model)
    with pytest.raises(MisconfigurationException, match=r"'frequency': .*; it must be an int >= 1"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), "frequency": frequency}})


def test_scheduler_dict_without_scheduler_key(model: nn.Module) -> None:
    opt = sgd(model)
    with pytest.raises(MisconfigurationException, match=r"has no 'scheduler' key \(keys: \['interval'\]\)"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"interval": "step"}})


def test_non_scheduler_in_scheduler_slot(model: nn.Module) -> None:
    a, b = sgd(model), sgd(model)
    with pytest.raises(MisconfigurationException, match=r"\(type SGD\) where an LR scheduler was expected"):
        parse_optimizers([[a], [b]])
    with pytest.raises(MisconfigurationException, match=r"\(type list\) where an LR scheduler was expected"):
        parse_optimizers({"optimizer": a, "lr_scheduler": [StepLR(a, 1)]})


def test_scheduler_without_state_dict_is_type_error(model: nn.Module) -> None:
    opt = sgd(model)

    class Bare:
        def __init__(self, optimizer: SGD) -> None:
            self.optimizer = optimizer

        def step(self) -> None:
            pass

    with pytest.raises(TypeError, match="`Bare` .* needs `state_dict` and `load_state_dict`"):
        parse_optimizers(([opt], [Bare(opt)]))


def test_several_optimizers_need_manual_optimization(model: nn.Module) -> None:
    a, b = sgd(model), Adam(model.parameters())
    expected = r"returned 2 optimizers.*`self.automatic_optimization = False`"
    with pytest.raises(MisconfigurationException, match=expected):
        parse_optimizers([a, b])
    with pytest.raises(MisconfigurationException, match="returned 2 optimizers"):
        parse_optimizers([{"optimizer": a}, {"optimizer": b}])


def test_error_repr_is_truncated(model: nn.Module) -> None:
    with pytest.raises(MisconfigurationException) as info:
        parse_optimizers("x" * 1000)
    assert "..." in str(info.value) and len(str(info.value)) < 800


# --- LightningOptimizer ----------------------------------------------------------------------------------------
def test_lightning_optimizer_delegates(model: nn.Module) -> None:
    opt = Adam(model.parameters(), lr=0.01)
    lopt = LightningOptimizer(opt)
    assert lopt.optimizer is opt
    assert lopt.param_groups is opt.param_groups
    assert lopt.defaults is opt.defaults
    assert lopt.state is opt.state
    lopt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})  # via __getattr__
    assert len(opt.param_groups) == 2
    lopt.param_groups[0]["lr"] = 0.5
    assert opt.param_groups[0]["lr"] == 0.5
    assert "LightningOptimizer(Adam" in repr(lopt)
    assert LightningOptimizer(lopt).optimizer is opt  # no double wrapping
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = lopt.no_such_thing


def test_lightning_optimizer_step_hooks_and_update(model: nn.Module) -> None:
    opt = sgd(model)
    calls: list[str] = []
    lopt = LightningOptimizer(
        opt,
        on_before_step=lambda o: calls.append(f"before:{o is opt}"),
        on_after_step=lambda o: calls.append(f"after:{o is opt}"),
    )
    before = model.weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    assert lopt.step() is None
    assert calls == ["before:True", "after:True"]
    assert not torch.equal(model.weight, before)
    lopt.zero_grad()
    assert model.weight.grad is None
    model(torch.ones(2, 3)).sum().backward()
    lopt.zero_grad(set_to_none=False)
    assert torch.equal(model.weight.grad, torch.zeros_like(model.weight))


def test_lightning_optimizer_closure_result_and_kwargs(model: nn.Module) -> None:
    opt = sgd(model)
    lopt = LightningOptimizer(opt)
    order: list[str] = []

    def closure() -> torch.Tensor:
        order.append("closure")
        opt.zero_grad()
        loss = model(torch.ones(2, 3)).pow(2).sum()
        loss.backward()
        return loss

    loss = lopt.step(closure)
    assert order == ["closure"] and isinstance(loss, torch.Tensor)
    with pytest.raises(MisconfigurationException, match="closure of type int; it must be callable"):
        lopt.step(closure=3)


def test_lightning_optimizer_step_fn_replaces_step(model: nn.Module) -> None:
    opt = sgd(model)
    seen: list[tuple] = []
    lopt = LightningOptimizer(opt, step_fn=lambda o, c, **kw: seen.append((o, c, kw)) or "scaled")
    assert lopt.step(foo=1) == "scaled"
    assert seen == [(opt, None, {"foo": 1})]


def test_lightning_optimizer_state_dict_round_trip(model: nn.Module) -> None:
    opt = Adam(model.parameters(), lr=0.01)
    lopt = LightningOptimizer(opt)
    model(torch.ones(1, 3)).sum().backward()
    lopt.step()
    sd = copy.deepcopy(lopt.state_dict())
    fresh = Adam(model.parameters(), lr=0.5)
    LightningOptimizer(fresh).load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.01
    assert torch.equal(fresh.state[model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])
    clone = pickle.loads(pickle.dumps(LightningOptimizer(opt)))
    assert isinstance(clone.optimizer, Adam)
