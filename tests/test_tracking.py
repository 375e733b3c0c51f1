"""MLflow tracking: a transient failure during training is retried and never raises; non-zero ranks log nothing."""
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
