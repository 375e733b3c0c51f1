"""`dst launch --config X.yaml [key.path=value ...]`: train through submitit on the config's launcher.cluster.

slurm: one SLURM job of launcher.nodes x launcher.tasks_per_node ranks (requeued with resume on preemption/time
limit); local: launcher.tasks_per_node processes on this machine; debug: one rank in this process (pdb works).
Waits for the job, prints where its logs are, and exits 1 with the tail of the failing task's log if it fails.
"""
from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """examples:
  dst launch --config config/experiments/demo_fsnn_resnet18.yaml launcher.cluster=local launcher.tasks_per_node=2
  dst launch --config exp.yaml launcher.cluster=slurm launcher.nodes=2 launcher.tasks_per_node=4 \\
      launcher.gpus_per_node=4 launcher.partition=gpu launcher.account=myproject launcher.time_min=1440
  dst launch --config exp.yaml --check launcher.cluster=slurm launcher.nodes=2   # all_reduce across the ranks only
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted overrides applied after the file, e.g. launcher.nodes=2 trainer.epochs=1")
    parser.add_argument("--check", action="store_true",
                        help="run a connectivity check (process group + all_reduce on every rank) instead of training")
    parser.add_argument("--target", default=None, metavar="MODULE:FUNCTION",
                        help="function each rank calls with the config (default: pipeline.engine:train)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return after submitting")


def run(args: argparse.Namespace) -> int:
    from pipeline import launcher
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    settings = launcher.launcher_settings(cfg.launcher)
    if args.check and args.target:
        from pipeline.errors import UsageError

        raise UsageError("--check and --target exclude each other")
    if args.check:
        target, payload = launcher.CHECK_TARGET, {"out_dir": str(launcher.job_folder(cfg) / "check")}
    else:
        target, payload = args.target or launcher.DEFAULT_TARGET, cfg
        launcher.resolve_target(target) if settings["cluster"] == "debug" else None

    def on_submit(job) -> None:
        ranks = f"{settings['nodes']} node(s) x {settings['tasks_per_node']} task(s)"
        print(f"dst launch: submitted job {job.job_id} ({settings['cluster']}: {ranks}, "
              f"{'connectivity check' if args.check else target})", flush=True)
        if settings["cluster"] != "debug":
            print(f"dst launch: logs: {job.paths.folder}/{job.job_id}_<task>_log.out|.err "
                  f"(task 0: {job.task(0).paths.stdout})", flush=True)

    def on_state(state: str) -> None:
        print(f"dst launch: job state {state}", flush=True)

    submitted = []
    try:
        result = launcher.launch(cfg, target=target, payload=payload, wait_for=not args.no_wait,
                                 on_submit=lambda job: (submitted.append(job), on_submit(job)), on_state=on_state)
    except KeyboardInterrupt:
        if submitted and settings["cluster"] == "slurm":
            job_id = submitted[0].job_id
            print(f"dst launch: interrupted; SLURM job {job_id} keeps running (cancel it: scancel {job_id})",
                  file=sys.stderr)
        return 130
    if args.no_wait:
        return 0
    outcome = result
    if not outcome.ok:
        print(outcome.failure_report(), file=sys.stderr, flush=True)
        for path in outcome.log_paths():
            if path.exists():
                print(f"dst launch: log {path}", file=sys.stderr)
        return 1
    print(f"dst launch: job {outcome.job_id} done ({outcome.state}); {len(outcome.tasks)} task(s) succeeded")
    if args.check:
        for info in outcome.results:
            print(f"dst launch: rank {info['rank']}/{info['world_size']} on {info['slurm_node'] or info['hostname']}"
                  f" master {info['master_addr']}={info['master_addr_ip']}:{info['master_port']} "
                  f"{info['backend']} all_reduce {info['all_reduce']:g} (expected {info['expected']:g})")
    else:
        print(json.dumps(outcome.results[0], default=str, sort_keys=True))
    return 0
