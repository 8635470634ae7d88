"""`python -m engine ...`: show a machine (`graph`, built-in or `--machine module:callable`), train a tiny demo model
(`demo`), work with event traces (`trace schema|show|summary|diff|replay`), or turn a sharded (FSDP) checkpoint
into one file (`checkpoint consolidate`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _graph(args: argparse.Namespace) -> int:
    from engine.loops import build_eval_machine, build_fit_machine

    if args.machine in ("fit", "evaluate"):
        machine = build_fit_machine() if args.machine == "fit" else build_eval_machine()
    else:  # a user's machine: module:callable returning a Machine (or module:NAME holding one)
        from engine.machine import Machine
        from engine.trace.cli import load_object

        obj = load_object(args.machine, "--machine")
        machine = obj if isinstance(obj, Machine) else obj()
        if not isinstance(machine, Machine):
            raise SystemExit(f"--machine {args.machine!r}: expected a Machine or a callable returning one, got "
                             f"{type(machine).__name__}")
    render = {"mermaid": machine.to_mermaid, "dot": machine.to_dot, "text": machine.__str__}[args.format]
    print(render())
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import engine as pl

    class Demo(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(10, 1)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = nn.functional.mse_loss(self.linear(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.05)

    pl.seed_everything(args.seed)
    x = torch.randn(512, 10)
    y = x @ torch.randn(10, 1)
    trainer = pl.Trainer(max_epochs=args.epochs, enable_model_summary=False)
    trainer.fit(Demo(), DataLoader(TensorDataset(x, y), batch_size=32))
    print(f"epochs={trainer.current_epoch} steps={trainer.global_step} "
          f"train_loss={trainer.progress_bar_metrics['train_loss']:.4f}")
    return 0


def _consolidate(args: argparse.Namespace) -> int:
    from engine.errors import CheckpointError
    from engine.sharded_checkpoint import consolidate_to_file

    try:
        out = consolidate_to_file(args.directory, args.output)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("graph", help="print a machine as Mermaid, dot or text")
    g.add_argument("--machine", default="fit", help="fit, evaluate, or module:callable returning a Machine")
    g.add_argument("--format", choices=("mermaid", "dot", "text"), default="mermaid")
    g.set_defaults(run=_graph)
    d = sub.add_parser("demo", help="train a tiny regression model on CPU")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=_demo)
    c = sub.add_parser("checkpoint", help="checkpoint tools")
    csub = c.add_subparsers(dest="checkpoint_command", required=True)
    cc = csub.add_parser("consolidate", help="a sharded (FSDP state_dict_type='sharded') checkpoint directory into "
                         "one file that loads with torch.load(weights_only=True) and in any strategy")
    cc.add_argument("directory", help="the sharded checkpoint directory (holds .metadata and meta.pt)")
    cc.add_argument("output", help="the file to write (atomically)")
    cc.set_defaults(run=_consolidate)
    from engine.trace.cli import add_trace_parser

    add_trace_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
