"""MLflow tracking: a transient failure during training is retried and never raises; non-zero ranks log nothing;
`dst track` starts and ends the workflow's parent run, and marks it FAILED when it cannot write the run's id; the
experiments are marked as model-training ones (new or existing), and `dst track url` names their runs page."""
import logging

from pipeline.config import config_from_dict
from pipeline.tracking import Tracker, run_tags

CFG = config_from_dict({"name": "t", "output_dir": "runs/t", "model": {"name": "fsnn_resnet18"},
                        "data": {"dataset": "demo_images", "root": "x"}})


def flaky(failures: int):
    calls = []

    def fn(*args, **kw):
        calls.append(args)
        if len(calls) <= failures:
            raise ConnectionError("server hiccup")
    return fn, calls


def test_transient_failure_is_retried():
    tracker = Tracker(CFG, enabled=True, retries=3, retry_wait_s=0)
    fn, calls = flaky(2)
    tracker._call(fn, {"val/fsnn_top1": 1.0})
    assert len(calls) == 3


def test_persistent_failure_warns_and_never_raises(caplog):
    tracker = Tracker(CFG, enabled=True, retries=3, retry_wait_s=0)
    fn, calls = flaky(10)
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        tracker._call(fn)
    assert len(calls) == 3
    assert "failed after 3 tries" in caplog.text


def test_disabled_tracker_does_nothing(monkeypatch):
    tracker = Tracker(CFG, enabled=False)
    assert tracker.start(None, {}) is None
    tracker.log_metrics({"x": 1.0}, step=1)  # no run, no store touched
    tracker.end()


def test_run_tags_never_copy_the_environment(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    tags = run_tags(world_size=2)
    assert tags["slurm_job_id"] == "42" and tags["world_size"] == "2"
    assert not any("hf_secret_value" in str(v) for v in tags.values())


def _parent_runs(uri: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("wf")
    return {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}


def test_track_start_and_end_the_parent_run(tmp_path, monkeypatch):
    from pipeline.cli import main
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri, run_id_file = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run" / "parent_run_id"
    assert main(["track", "start", "--experiment", "wf", "--run-name", "demo", "--out", str(run_id_file),
                 "--tracking-uri", uri]) == 0
    run_id = run_id_file.read_text().strip()
    assert _parent_runs(uri) == {run_id: "RUNNING"}
    assert main(["track", "end", "--run-id-file", str(run_id_file), "--tracking-uri", uri]) == 0
    assert _parent_runs(uri) == {run_id: "FINISHED"}


def test_track_start_onto_a_full_disk_fails_the_parent_run(tmp_path, small_filesystem, capsys, monkeypatch):
    from pipeline.cli import main
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    fs = small_filesystem.mount(4 << 10)
    small_filesystem.fill()
    uri, run_id_file = f"sqlite:///{tmp_path}/mlflow.db", fs / "parent_run_id"
    assert main(["track", "start", "--experiment", "wf", "--run-name", "demo", "--out", str(run_id_file),
                 "--tracking-uri", uri]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dst track: error: cannot write the parent run's id to {run_id_file}: no space left on device (or over quota)")
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]
    assert list(_parent_runs(uri).values()) == ["FAILED"]  # not left RUNNING for ever


KIND = "mlflow.experimentKind"


def test_experiments_are_marked_as_model_training_new_or_old(tmp_path, monkeypatch, capsys):
    """The Tracker (training), `dst track start` (the workflow) and `dst track url` (make demo) each mark the
    experiment they create or find, so the UI opens it on its runs; a kind someone chose stays."""
    from mlflow.tracking import MlflowClient

    from pipeline.cli import main
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    old = {name: client.create_experiment(name) for name in ("by-train", "by-start", "by-url")}  # made before the mark
    chosen = client.create_experiment("chosen", tags={KIND: "genai_development"})

    cfg = config_from_dict({**CFG.model_dump(mode="json"), "output_dir": str(tmp_path / "run"),
                            "tracking": {"uri": uri, "experiment": "by-train", "log_system_metrics": False}})
    tracker = Tracker(cfg, enabled=True)
    tracker.start(None, {})
    tracker.end()
    for name in ("by-start", "new", "chosen"):
        assert main(["track", "start", "--experiment", name, "--run-name", "demo", "--out",
                     str(tmp_path / name / "parent_run_id"), "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert main(["track", "url", "--experiment", "by-url", "--tracking-uri", uri, "--ui-url", "http://ui:5000/"]) == 0
    assert capsys.readouterr().out == (f"http://ui:5000/#/experiments/{old['by-url']}/runs?workflowType=machine_learning"
                                       "&orderByKey=metrics.%60val%2Ffsnn_top1%60&orderByAsc=false\n")

    kinds = {e.name: e.tags.get(KIND) for e in client.search_experiments()}
    assert kinds == {"Default": None, "by-train": "custom_model_development", "by-start": "custom_model_development",
                     "by-url": "custom_model_development", "new": "custom_model_development",
                     "chosen": "genai_development"}
    assert client.get_experiment_by_name("chosen").experiment_id == chosen


def test_track_url_of_an_unknown_experiment_is_one_error_line(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["track", "url", "--experiment", "nope", "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == f"dst track: error: --experiment 'nope': no such experiment in {uri}"
