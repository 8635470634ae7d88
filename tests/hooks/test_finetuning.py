"""BaseFinetuning / BackboneFinetuning: freeze before training, unfreeze into a new param group, Lightning's lr
schedule for the backbone, and the param groups saved by name and rebuilt on resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import engine as pl
from engine.callbacks import BackboneFinetuning, BaseFinetuning


def _backbone_model(kit: Any, lr: float = 0.1) -> Any:
    class M(kit.Model):
        def __init__(self) -> None:
            super().__init__(lr=lr)
            self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU())
            self.layer = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.backbone(x))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=self.lr)

    return M()


class LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.groups: list[list[float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.groups.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_static_helpers_freeze_unfreeze_and_filter() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2)))
    BaseFinetuning.freeze(net, train_bn=True)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True, False, False]
    BaseFinetuning.freeze(net, train_bn=False)
    assert not any(p.requires_grad for p in net.parameters())
    assert net[1].track_running_stats is False
    assert len(BaseFinetuning.flatten_modules(net)) == 3
    BaseFinetuning.make_trainable(net)
    assert all(p.requires_grad for p in net.parameters()) and net[1].track_running_stats
    assert len(list(BaseFinetuning.filter_params(net, train_bn=False))) == 4

    opt = torch.optim.SGD(net[0].parameters(), lr=1.0)
    with pytest.warns(UserWarning, match="already exist within another group") as caught:
        BaseFinetuning.unfreeze_and_add_param_groups(net, opt, initial_denom_lr=4.0)
    assert caught[0].filename == __file__  # the warning points at the user's line
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.25
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in [*net[1].parameters(),
                                                                                  *net[2].parameters()]}


def test_backbone_frozen_then_unfrozen_with_lightnings_lr_schedule(kit: Any) -> None:
    model = _backbone_model(kit, lr=0.1)
    start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    rec = LrRecorder()
    ft = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0,
                            backbone_initial_ratio_lr=0.1)
    trainer = kit.trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[ft, rec], limit_val_batches=0)
    with pytest.warns(UserWarning, match="already exist within another group"):  # the BatchNorm params
        trainer.fit(model, kit.loader(8, batch_size=4))
    # epoch 0: one group; epoch 1: backbone added at 0.1 * 0.1; then x2 per epoch, capped at the main lr (0.1)
    assert [len(g) for g in rec.groups] == [1, 2, 2, 2]
    assert sum(rec.groups, []) == pytest.approx([0.1, 0.1, 0.01, 0.1, 0.02, 0.1, 0.04])
    # trained after unfreezing (BatchNorm stayed trainable throughout: train_bn=True); the Linear's bias gets no
    # gradient through the BatchNorm that follows it, so it is not checked
    moved = {n: not torch.equal(start[n], p) for n, p in model.backbone.named_parameters()}
    assert moved["0.weight"] and moved["1.weight"] and moved["1.bias"]
    state = ft.state_dict()
    assert state["previous_backbone_lr"] == pytest.approx(0.04)
    names = state["internal_optimizer_metadata"][0][1]["params"]
    assert names == ["backbone.0.weight", "backbone.0.bias"]  # BatchNorm params were already in group 0


def test_backbone_params_do_not_change_before_the_unfreeze_epoch(kit: Any) -> None:
    model = _backbone_model(kit)
    before = model.backbone[0].weight.detach().clone()
    trainer = kit.trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)], limit_val_batches=0)
    trainer.fit(model, kit.loader(8, batch_size=4))
    assert torch.equal(model.backbone[0].weight, before)
    assert model.backbone[0].weight.requires_grad is False


def test_state_dict_round_trip_rebuilds_param_groups_on_fit_start(kit: Any) -> None:
    model = _backbone_model(kit)
    ft = BackboneFinetuning(unfreeze_backbone_at_epoch=0)
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[ft], limit_val_batches=0)
    with pytest.warns(UserWarning, match="already exist within another group"):
        trainer.fit(model, kit.loader(8, batch_size=4))
    saved = torch.load(_save(ft.state_dict()), weights_only=True)  # plain data: names, not tensors

    fresh = BackboneFinetuning(unfreeze_backbone_at_epoch=0)
    fresh.load_state_dict(saved)
    model2 = _backbone_model(kit)
    opt = torch.optim.SGD([p for n, p in model2.named_parameters() if not n.startswith("backbone.0")], lr=0.1)

    class T:
        optimizers = [opt]

    fresh.on_fit_start(T(), model2)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["params"] == [model2.backbone[0].weight, model2.backbone[0].bias]
    assert fresh.previous_backbone_lr == pytest.approx(0.01)


def _save(obj: Any) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_backbone_missing_is_a_clear_error(kit: Any) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[BackboneFinetuning()])

    class NoBackbone(BackboneFinetuning):
        def freeze_before_training(self, pl_module: Any) -> None:
            pass

    with pytest.raises(AttributeError):
        trainer.fit(kit.Model(), kit.loader(4))
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[NoBackbone()])
    with pytest.raises(pl.MisconfigurationException, match="should have a nn.Module `backbone` attribute"):
        trainer.fit(kit.Model(), kit.loader(4))


def test_base_finetuning_hooks_must_be_implemented(kit: Any) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[BaseFinetuning()])
    with pytest.raises(NotImplementedError, match="freeze_before_training"):
        trainer.fit(kit.Model(), kit.loader(4))


@pytest.mark.filterwarnings("ignore:The provided params to be frozen already exist")
def test_resume_from_a_checkpoint_rebuilds_the_unfrozen_param_group(kit: Any, tmp_path: Any) -> None:
    def run(max_epochs: int, ckpt_path: Any = None, folder: str = "ckpts") -> tuple[LrRecorder, Any]:
        rec = LrRecorder()
        ft = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0)
        ckpt = pl.ModelCheckpoint(dirpath=tmp_path / folder, save_last=True, save_top_k=0)
        trainer = kit.trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                              callbacks=[ft, rec, ckpt], limit_val_batches=0)
        trainer.fit(_backbone_model(kit), kit.loader(8, batch_size=4), ckpt_path=ckpt_path)
        return rec, ft

    full, _ = run(3, folder="uninterrupted")
    run(2)
    resumed, ft = run(3, ckpt_path=str(tmp_path / "ckpts" / "last.ckpt"))
    assert len(resumed.groups) == 1  # only epoch 2 ran
    assert resumed.groups[-1] == pytest.approx(full.groups[-1])  # [0.1, 0.02]: the backbone group came back
    assert ft.previous_backbone_lr == pytest.approx(0.02)
