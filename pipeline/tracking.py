"""MLflow tracking for rank 0: one run per experiment, params with the same names across runs, retried logging.

A tracking server that cannot be reached when the run starts is a clear error (before any training); a transient
failure during training is retried a few times, then reported as a warning: losing a metric never kills training.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.config import ExperimentConfig, flatten
from pipeline.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg_uri: str | None) -> str:
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _quiet_mlflow_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Fail fast at start-up on an unreachable server instead of retrying for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


# user:password@ in a URL (e.g. tracking.uri=https://me:token@mlflow.example.org): a secret that must not reach
# MLflow params, the logged config.yaml, or error messages in logs.
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact_uri(text: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://***@host/...` (anywhere in `text`)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


# MLflow 3 keeps an experiment's kind in this tag (the UI's kind selector writes it). Ours train models: unmarked,
# an experiment can open on the UI's GenAI page ("Send your first trace") rather than on its runs. MLflow 3.18's UI
# takes the kind from its GenAI / Model training switch instead, which the URL below sets.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The runs page on the best FSNN first. Sorting by a metric also lists nested runs by name (sorted by start time,
# the UI folds them under their parent). workflowType picks the UI's "Model training" side over "GenAI".
RUNS_PAGE_QUERY = "workflowType=machine_learning&orderByKey=metrics.%60val%2Ffsnn_top1%60&orderByAsc=false"


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag `experiment` (an mlflow Experiment) as a model-training experiment, unless it already has a kind (one a
    user chose in the UI stays)."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def training_experiment(client: Any, name: str) -> str:
    """The id of the experiment `name`, created if missing, marked as a model-training experiment either way (so
    experiments created before the mark get it too)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:  # created meanwhile by another job of the same workflow
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    mark_model_training(client, experiment)
    return experiment.experiment_id


def runs_page_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs, e.g. http://127.0.0.1:5000/#/experiments/1/runs?..."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_PAGE_QUERY}"


def check_reachable(uri: str) -> None:
    """Raise UsageError naming the URI (without credentials) if the tracking store cannot be used."""
    from mlflow.tracking import MlflowClient
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:
        raise UsageError(f"MLflow tracking server {redact_uri(uri)} is not reachable: {type(err).__name__}: "
                         f"{redact_uri(str(err).splitlines()[0]) if str(err) else ''}") from None


class Tracker:
    """Rank 0 logs; every other rank holds a disabled Tracker whose calls do nothing."""

    def __init__(self, cfg: ExperimentConfig, enabled: bool, retries: int = 3, retry_wait_s: float = 2.0):
        self.cfg = cfg
        self.enabled = enabled and cfg.tracking.enabled
        self.retries, self.retry_wait_s = retries, retry_wait_s
        self.run_id: str | None = None
        self.uri = tracking_uri(cfg.tracking.uri)

    def start(self, resume_run_id: str | None, tags: dict[str, str]) -> str | None:
        if not self.enabled:
            return None
        _quiet_mlflow_env()
        import mlflow
        check_reachable(self.uri)
        from mlflow.tracking import MlflowClient
        mlflow.set_tracking_uri(self.uri)
        t = self.cfg.tracking
        experiment_id = training_experiment(MlflowClient(tracking_uri=self.uri), t.experiment)
        parent = t.parent_run_id or os.environ.get("DST_PARENT_RUN_ID") or None
        run = mlflow.start_run(
            run_id=resume_run_id, experiment_id=experiment_id,
            run_name=None if resume_run_id else (t.run_name or self.cfg.name),
            parent_run_id=None if resume_run_id else parent,
            log_system_metrics=t.log_system_metrics)
        self.run_id = run.info.run_id
        if resume_run_id is None:
            params = flatten(self.cfg.model_dump(mode="json"))
            # MLflow params are strings of at most 6000 chars; log them in batches of 100 (the API limit).
            items = [(k, "" if v is None else redact_uri(str(v))[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self._call(mlflow.log_params, dict(items[i:i + 100]))
        self._call(mlflow.set_tags, {k: redact_uri(str(v)) for k, v in {**t.tags, **tags}.items()})
        return self.run_id

    def _call(self, fn: Callable, *args: Any, **kw: Any) -> None:
        for attempt in range(1, self.retries + 1):
            try:
                fn(*args, **kw)
                return
            except Exception as err:  # transient server trouble must never kill training
                if attempt == self.retries:
                    log.warning("MLflow %s failed after %d tries, continuing: %s", fn.__name__, attempt, err)
                    return
                time.sleep(self.retry_wait_s * attempt)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and self.run_id:
            import mlflow
            self._call(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self.run_id:
            import mlflow
            self._call(mlflow.log_artifact, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and self.run_id:
            import mlflow
            self._call(mlflow.set_tags, tags)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            import mlflow
            self._call(mlflow.end_run, status)


def run_tags(world_size: int) -> dict[str, str]:
    """Tags that say where a run ran. Never the environment at large: it may hold tokens and passwords."""
    tags = {"git_commit": git_commit(), "host": socket.gethostname(), "world_size": str(world_size)}
    for var, tag in (("SLURM_JOB_ID", "slurm_job_id"), ("SLURM_ARRAY_JOB_ID", "slurm_array_job_id"),
                     ("SLURM_JOB_NUM_NODES", "slurm_nodes")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags
