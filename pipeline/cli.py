"""The `dst` command line: one subcommand per pipeline stage.

Each subcommand lives in its own module under pipeline/commands/ and exposes
`configure(parser)` (adds its arguments) and `run(args) -> int` (exit status).
Modules are imported only when their subcommand runs, so `dst --help` stays fast
and a missing optional dependency of one stage never breaks the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import StorageError, UsageError
from pipeline.storage import OUT_OF_SPACE_ERRNOS

# name -> (module, one-line help). Order is the order of the pipeline.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("pipeline.commands.data", "prepare datasets: ImageNet -> FFCV, DVS -> frames, demo data"),
    "train": ("pipeline.commands.train", "train one experiment with DeepSpeed (one process or N ranks)"),
    "launch": ("pipeline.commands.launch", "launch training through submitit (slurm | local | debug)"),
    "export": ("pipeline.commands.export", "export an AAP-stripped FSNN (+ DSNN) with its full-spike and energy report"),
    "evaluate": ("pipeline.commands.evaluate", "evaluate exported FSNN/DSNN on a validation split"),
    "report": ("pipeline.commands.report", "tables and plots across experiments"),
    "track": ("pipeline.commands.track", "the parent MLflow run of a workflow invocation"),
}

EPILOG = """examples:
  dst data demo --out datasets/demo
  dst train --config config/experiments/demo_fsnn_resnet18.yaml trainer.epochs=2
  dst export --checkpoint runs/demo/demo_fsnn_resnet18/checkpoints --out runs/demo/demo_fsnn_resnet18/export
"""


def build_parser(load_subcommands: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dst",
        description="Full-Spike Neural Networks with Dual-Stream Training: data, training, export, report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if load_subcommands is None or name in load_subcommands:
            mod = importlib.import_module(module)
            p.epilog = getattr(mod, "EXAMPLES", None)  # every subcommand's help ends with examples
            mod.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen subcommand's module is imported (heavy stacks: deepspeed, ffcv, mlflow).
    chosen = [a for a in argv if a in SUBCOMMANDS][:1]
    parser = build_parser(load_subcommands=chosen)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UsageError as err:
        print(f"dst {args.command}: error: {err}", file=sys.stderr)
        return 2
    except StorageError as err:
        print(f"dst {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in OUT_OF_SPACE_ERRNOS:
            raise
        # A write no stage wraps in storage.writing: Python's OSError names the file when it has one.
        where = f" (writing {err.filename})" if err.filename else ""
        print(f"dst {args.command}: error: {err.strerror}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
