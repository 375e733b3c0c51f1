"""`dst track start|end|url`: the parent MLflow run of one workflow invocation, under which each experiment nests,
and the MLflow UI's page of an experiment's runs.

    dst track start --experiment dst-demo --run-name demo --out runs/demo/parent_run_id
    dst track end --run-id-file runs/demo/parent_run_id
    dst track url --experiment dst-demo           # http://127.0.0.1:5000/#/experiments/<id>/runs?...
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import storage
from pipeline.errors import UsageError


EXAMPLES = """examples:
  dst track start --experiment dst-demo --run-name demo --out runs/demo/parent_run_id
  dst track end --run-id-file runs/demo/parent_run_id
  dst track url --experiment dst-demo --tracking-uri sqlite:///mlflow.db --ui-url http://127.0.0.1:5000
"""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="create the parent run and write its id to --out")
    start.add_argument("--experiment", required=True, help="MLflow experiment name")
    start.add_argument("--run-name", required=True)
    start.add_argument("--out", required=True, type=Path, help="file that receives the run id")
    start.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    start.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="logged on the parent run")
    end = sub.add_parser("end", help="mark the parent run finished")
    end.add_argument("--run-id-file", required=True, type=Path)
    end.add_argument("--tracking-uri", default=None)
    end.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    url = sub.add_parser("url", help="print the MLflow UI's page of the experiment's runs")
    url.add_argument("--experiment", required=True, help="MLflow experiment name")
    url.add_argument("--tracking-uri", default=None)
    url.add_argument("--ui-url", default="http://127.0.0.1:5000",
                     help="where `mlflow ui` or `mlflow server` serves (default: %(default)s, mlflow ui's own)")


def run(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import (_quiet_mlflow_env, check_reachable, git_commit, mark_model_training,
                                   redact_uri, runs_page_url, tracking_uri, training_experiment)
    _quiet_mlflow_env()
    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    if args.action == "start":
        params = dict(p.split("=", 1) for p in args.param if "=" in p)
        bad = [p for p in args.param if "=" not in p]
        if bad:
            raise UsageError(f"--param {bad[0]!r} is not KEY=VALUE")
        experiment_id = training_experiment(client, args.experiment)
        run = client.create_run(experiment_id, run_name=args.run_name,
                                tags={"dst.role": "workflow", "git_commit": git_commit()})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        try:
            storage.write_atomically(args.out, "the parent run's id to",
                                     lambda tmp: tmp.write_text(run.info.run_id + "\n"))
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")  # no workflow will ever end it
            raise
        print(f"parent run {run.info.run_id} in experiment {args.experiment!r} ({uri})")
        return 0
    if args.action == "url":
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise UsageError(f"--experiment {args.experiment!r}: no such experiment in {redact_uri(uri)}")
        mark_model_training(client, experiment)  # one made before the mark opens on its runs too
        print(runs_page_url(args.ui_url, experiment.experiment_id))
        return 0
    if not args.run_id_file.is_file():
        raise UsageError(f"run id file {args.run_id_file} does not exist")
    client.set_terminated(args.run_id_file.read_text().strip(), status=args.status)
    return 0
