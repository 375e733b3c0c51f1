"""`dst train --config X.yaml [key=value ...]`: train one experiment in this process (one rank of N when
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are set, e.g. by torchrun or the launcher)."""
from __future__ import annotations

import logging
import sys

EXAMPLE = """examples:
  dst train --config config/experiments/demo_fsnn_resnet18.yaml
  dst train --config config/experiments/demo_fsnn_resnet18.yaml trainer.epochs=2 model.T=2
  torchrun --nproc-per-node 2 -m pipeline.cli train --config config/experiments/demo_fsnn_resnet18.yaml
  dst train --config config/experiments/demo_fsnn_resnet18.yaml --debug     # one process, a few steps, pdb works
"""


def configure(parser) -> None:
    parser.epilog = EXAMPLE
    parser.add_argument("--config", required=True, help="experiment YAML (see config/experiments/)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="dotted overrides, e.g. trainer.epochs=2")
    parser.add_argument("--debug", action="store_true",
                        help="one process, fp32, no ZeRO, a few steps, no workers, no tracking: for pdb")


DEBUG_OVERRIDES = ["trainer.zero_stage=0", "trainer.precision=fp32", "trainer.epochs=1",
                   "trainer.max_steps_per_epoch=3", "trainer.max_eval_batches=2", "data.workers=0",
                   "tracking.enabled=false"]


def run(args) -> int:
    from pipeline.config import load_config
    overrides = list(args.overrides)
    if args.debug:
        overrides += DEBUG_OVERRIDES
    cfg = load_config(args.config, overrides)
    if args.debug:
        cfg.output_dir = cfg.output_dir.rstrip("/") + "-debug"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from pipeline.engine import TrainingDiverged, train
    try:
        final = train(cfg)
    except TrainingDiverged as err:
        print(f"dst train: error: {err}", file=sys.stderr)
        return 1
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"finished {cfg.name}: " + " ".join(f"{k}={v}" for k, v in final.items()))
    return 0
