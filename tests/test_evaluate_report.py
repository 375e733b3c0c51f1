"""`dst evaluate` and `dst report` on real run directories: real dst models exported by `dst export`, prepared DVS
frames in the layout `dst data dvs` writes, a hand-written metrics.json and the resolved config.yaml."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
T, SIZE, NUM_CLASSES = 2, 16, 4          # demo_dvs: 4 classes
VAL_SAMPLES, EVAL_BATCH = 20, 8


# ------------------------------------------------------------------------------------------------ builders
def write_prepared_frames(root: Path, seed: int = 0) -> Path:
    """A prepared DVS dataset as `dst data dvs` leaves it: {train,test}_{frames,labels}.npy + meta.json."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    meta = {"format": "frames", "kind": "frames", "dataset": "dvs_gesture", "frames": T, "split_by": "number",
            "sensor_size": [SIZE, SIZE, 2], "dtype": "int16", "num_classes": NUM_CLASSES, "max_label": NUM_CLASSES - 1,
            "splits": {}}
    for split, n in (("train", 8), ("test", VAL_SAMPLES)):
        frames = rng.poisson(3.0, size=(n, T, 2, SIZE, SIZE)).astype(np.int16)  # event counts: neurons fire
        labels = (np.arange(n) % NUM_CLASSES).astype(np.int64)
        np.save(root / f"{split}_frames.npy", frames)
        np.save(root / f"{split}_labels.npy", labels)
        meta["splits"][split] = {"samples": n,
                                 "frames_file": f"{split}_frames.npy",
                                 "frames_bytes": (root / f"{split}_frames.npy").stat().st_size,
                                 "labels_file": f"{split}_labels.npy",
                                 "labels_bytes": (root / f"{split}_labels.npy").stat().st_size}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def history(aap: bool, epochs: int = 4, offset: float = 0.0) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "train/loss": 2.8 - 0.4 * e, "train/loss_fsnn": 1.45 - 0.2 * e - offset / 100, "lr": 0.05,
             "throughput": 120.0, "val/fsnn_top1": 30.0 + 6 * e + offset, "val/fsnn_top5": 100.0, "firing_rate": 0.12}
        if aap:
            h.update({"train/loss_dsnn": 1.35 - 0.2 * e, "val/dsnn_top1": 34.0 + 7 * e, "val/dsnn_top5": 100.0})
        rows.append(h)
    return rows


def make_run(runs: Path, prepared: Path, name: str, *, aap: bool, seed: int, offset: float = 0.0) -> Path:
    """A trained-looking run: config.yaml, metrics.json, and export/ written by `dst export` from a real model."""
    from dst.models import create_model

    run = runs / name
    run.mkdir(parents=True)
    cfg = {"name": name, "output_dir": str(run),
           "model": {"name": "fsnn_7b_net", "connect": "IAND", "aap": aap, "neuron": "plif"},
           "data": {"dataset": "demo_dvs", "root": str(prepared), "batch_size": 8, "eval_batch_size": EVAL_BATCH,
                    "frames": T, "resolution": SIZE, "workers": 0},
           "trainer": {"epochs": 4, "seed": 7}, "tracking": {"enabled": False}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    hist = history(aap, offset=offset)
    final = {**hist[-1], "best_fsnn_top1": hist[-1]["val/fsnn_top1"], "best_epoch": 4, "mlflow_run_id": None,
             "world_size": 1}
    (run / "metrics.json").write_text(json.dumps({"final": final, "history": hist}, indent=1))

    torch.manual_seed(seed)
    model = create_model("fsnn_7b_net", num_classes=NUM_CLASSES, aap=aap, neuron="plif")
    ckpt = run / "plain_checkpoint.pt"
    torch.save({"model_name": model.model_name, "model_kwargs": model.model_kwargs,
                "state_dict": model.state_dict(), "config": cfg}, ckpt)
    frames = torch.from_numpy(np.load(prepared / "test_frames.npy")[:4]).float()
    batch = run / "val_batch.pt"
    torch.save(frames, batch)
    args = ["export", "--checkpoint", str(ckpt), "--out", str(run / "export"), "--data-batch", str(batch)]
    assert main(args + ([] if aap else ["--no-dsnn"])) == 0
    ckpt.unlink()
    batch.unlink()
    return run


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    base = tmp_path_factory.mktemp("campaign")
    prepared = write_prepared_frames(base / "prepared")
    runs = {"dst": make_run(base / "runs", prepared, "tiny_fsnn_7b", aap=True, seed=1),
            "noaap": make_run(base / "runs", prepared, "tiny_fsnn_7b_noaap", aap=False, seed=2, offset=-3.0)}
    return {"base": base, "prepared": prepared, **runs}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def reference_accuracy(model, frames: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(torch.from_numpy(frames).float())
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(torch.from_numpy(labels)[:, None])
    return 100.0 * top[:, 0].float().mean().item(), 100.0 * top.any(dim=1).float().mean().item()


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_writes_both_streams_and_matches_a_reference(campaign, capsys):
    from dst.export import load_dsnn, load_fsnn
    from dst.monitor import FiringRateMonitor

    run = campaign["dst"]
    rc, out, err = run_cli(["evaluate", "--run", str(run)], capsys)
    assert rc == 0, err
    result = json.loads((run / "eval.json").read_text())
    for key in ("fsnn_top1", "fsnn_top5", "dsnn_top1", "dsnn_top5", "firing_rate", "samples", "export_dir"):
        assert key in result
    assert result["samples"] == VAL_SAMPLES and result["batches"] == 3 and result["complete_split"]
    assert result["export_dir"] == str(run / "export")
    assert not list(run.glob(".eval.json.tmp*"))

    # The same numbers computed independently from the exported files and the prepared arrays.
    frames = np.load(campaign["prepared"] / "test_frames.npy")
    labels = np.load(campaign["prepared"] / "test_labels.npy")
    fsnn, dsnn = load_fsnn(run / "export" / "fsnn.pt"), load_dsnn(run / "export" / "dsnn.pt")
    with FiringRateMonitor(fsnn) as monitor:
        fsnn_top1, fsnn_top5 = reference_accuracy(fsnn, frames, labels)
    dsnn_top1, dsnn_top5 = reference_accuracy(dsnn, frames, labels)
    assert result["fsnn_top1"] == pytest.approx(fsnn_top1) and result["fsnn_top5"] == pytest.approx(fsnn_top5)
    assert result["dsnn_top1"] == pytest.approx(dsnn_top1) and result["dsnn_top5"] == pytest.approx(dsnn_top5)
    assert 0 < result["firing_rate"] < 1
    assert result["firing_rate"] == pytest.approx(monitor.mean_rate, rel=1e-6)
    assert set(result["layer_firing_rates"]) == set(monitor.rates)
    # top-5 of 4 classes is every class: 100 %
    assert result["fsnn_top5"] == 100.0
    # The training-time numbers travel along for comparison.
    assert result["training"]["val/fsnn_top1"] == history(True)[-1]["val/fsnn_top1"]
    assert "FSNN top-1" in out and str(run / "eval.json") in out


def test_evaluate_without_dsnn_with_overrides_and_max_batches(campaign, tmp_path, capsys):
    run = campaign["noaap"]
    assert not (run / "export" / "dsnn.pt").exists()
    out_file = tmp_path / "sub" / "eval_partial.json"
    rc, _, err = run_cli(["evaluate", "--run", str(run), "--out", str(out_file), "--max-batches", "1",
                          "data.eval_batch_size=5"], capsys)
    assert rc == 0, err
    result = json.loads(out_file.read_text())
    assert result["dsnn_top1"] is None and result["dsnn_top5"] is None and result["files"]["dsnn"] is None
    assert result["samples"] == 5 and result["batches"] == 1 and result["complete_split"] is False
    assert not (run / "eval.json").exists()  # --out was honoured
    rc, _, err = run_cli(["evaluate", "--run", str(run)], capsys)
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["samples"] == VAL_SAMPLES


def _nir_reference(export: Path, frames: np.ndarray, labels: np.ndarray) -> dict:
    """fsnn.nir run by the consumer on the whole split in one batch (nir_run.run), and the BN-folded FSNN."""
    from dst.export import load_fsnn, nir_run
    from dst.export.nir import graph_steps

    folded = load_fsnn(export / "fsnn.pt", fold=True)
    x = torch.from_numpy(frames).float()
    outputs, _ = nir_run.run(export / "fsnn.nir", graph_steps(folded, x))
    nir_logits = outputs.mean(0)
    with torch.no_grad():
        ref = folded(x)
    y = torch.from_numpy(labels)
    return {"top1": 100.0 * nir_logits.argmax(1).eq(y).float().mean().item(),
            "bn_folded_fsnn_top1": 100.0 * ref.argmax(1).eq(y).float().mean().item(),
            "agreement": nir_logits.argmax(1).eq(ref.argmax(1)).float().mean().item(),
            "time_steps": int(outputs.shape[0]), "ref": ref}


def perturb_nir_bias(path: Path, cls: int, delta: float = 1e3) -> None:
    """Rewrite the NIR file with the head's Affine bias raised on one class: it then predicts that class."""
    import nir
    graph = nir.read(str(path))
    (name,) = [n for n, node in graph.nodes.items() if isinstance(node, nir.Affine)]
    graph.nodes[name].bias = graph.nodes[name].bias.copy()
    graph.nodes[name].bias[cls] += delta
    nir.write(str(path), graph)


@pytest.mark.parametrize("which", ["dst", "noaap"])
def test_evaluate_runs_the_nir_file_on_the_whole_split(campaign, tmp_path, capsys, which):
    """eval.json's nir section: fsnn.nir, read from disk and stepped by the consumer, on every validation sample,
    predicts what the BN-folded FSNN predicts; its numbers equal an independent run of the file on the whole split."""
    run = campaign[which]
    out_file = tmp_path / "eval.json"
    rc, out, err = run_cli(["evaluate", "--run", str(run), "--out", str(out_file)], capsys)
    assert rc == 0, err
    result = json.loads(out_file.read_text())
    nir = result["nir"]
    export = run / "export"
    assert result["files"]["nir"] == str(export / "fsnn.nir") and nir["file"] == str(export / "fsnn.nir")
    assert nir["read_from"] == f"nir.read({str(export / 'fsnn.nir')!r})"
    assert "nirtorch" in nir["consumer"] and "norse" in nir["consumer"] and "BN-folded" in nir["reference"]
    assert nir["samples"] == result["samples"] == VAL_SAMPLES and nir["batches"] == result["batches"] == 3
    assert nir["time_steps"] == T
    assert nir["prediction_agreement"] == 1.0 and nir["prediction_agreement_vs_fsnn_pt"] == 1.0
    assert 0 < nir["max_abs_logit"] and nir["max_abs_logit_diff"] <= 1e-4 * max(1.0, nir["max_abs_logit"])
    assert nir["seconds"] > 0 and nir["bn_folded_fsnn_seconds"] > 0 and nir["device"] == "cpu"

    frames = np.load(campaign["prepared"] / "test_frames.npy")
    labels = np.load(campaign["prepared"] / "test_labels.npy")
    ref = _nir_reference(export, frames, labels)
    assert nir["top1"] == pytest.approx(ref["top1"]) and nir["top1"] == pytest.approx(result["fsnn_top1"])
    assert nir["bn_folded_fsnn_top1"] == pytest.approx(ref["bn_folded_fsnn_top1"])
    assert nir["top5"] == 100.0  # 4 classes
    assert "fsnn.nir" in out and "agreement 1.0000" in out


def test_evaluate_records_a_nir_file_that_disagrees(campaign, tmp_path, capsys):
    """A NIR file whose head bias was raised on one class predicts that class everywhere: the nir section says so
    (agreement below 1, logits 1e3 apart), while the FSNN's own numbers are unchanged."""
    run = _copy_run(campaign["noaap"], tmp_path / "run")
    frames = np.load(campaign["prepared"] / "test_frames.npy")
    labels = np.load(campaign["prepared"] / "test_labels.npy")
    predicted = _nir_reference(run / "export", frames, labels)["ref"].argmax(1)
    cls = (int(predicted.mode().values) + 1) % NUM_CLASSES  # not what most samples get: agreement < 1
    perturb_nir_bias(run / "export" / "fsnn.nir", cls)
    rc, _, err = run_cli(["evaluate", "--run", str(run)], capsys)
    assert rc == 0, err
    result = json.loads((run / "eval.json").read_text())
    nir = result["nir"]
    assert nir["prediction_agreement"] == pytest.approx(float((predicted == cls).float().mean()))
    assert nir["prediction_agreement"] < 1.0 and nir["max_abs_logit_diff"] > 100
    assert nir["top1"] == pytest.approx(100.0 * float((torch.from_numpy(labels) == cls).float().mean()))
    assert result["fsnn_top1"] == pytest.approx(nir["bn_folded_fsnn_top1"])


def test_evaluate_without_a_nir_file_or_with_no_nir(campaign, tmp_path, capsys):
    run = _copy_run(campaign["noaap"], tmp_path / "run")
    rc, _, err = run_cli(["evaluate", "--run", str(run), "--no-nir"], capsys)
    assert rc == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert result["nir"] is None and result["files"]["nir"] is None and result["samples"] == VAL_SAMPLES
    (run / "export" / "fsnn.nir").unlink()
    (run / "eval.json").unlink()
    rc, out, err = run_cli(["evaluate", "--run", str(run)], capsys)
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["nir"] is None and "fsnn.nir" not in out


def test_report_logs_the_nir_numbers_to_the_experiments_mlflow_run(campaign, tmp_path, capsys):
    """`dst report` puts eval.json's nir numbers on the experiment's MLflow run beside eval/fsnn_top1."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("nir-eval")
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    run = _copy_run(campaign["dst"], tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["final"]["mlflow_run_id"] = child
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evaluate", "--run", str(run)]) == 0
    nir = json.loads((run / "eval.json").read_text())["nir"]
    rc, _, err = run_cli(["report", "--runs", str(run), "--out", str(tmp_path / "results"), "--tracking-uri", uri,
                          "--parent-run-id", parent], capsys)
    assert rc == 0, err
    logged = client.get_run(child).data.metrics
    assert logged["eval/nir_top1"] == pytest.approx(nir["top1"])
    assert logged["eval/nir_top5"] == pytest.approx(nir["top5"])
    assert logged["eval/nir_prediction_agreement"] == 1.0
    assert logged["eval/nir_max_abs_logit_diff"] == pytest.approx(nir["max_abs_logit_diff"])
    with open(tmp_path / "results" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["nir_prediction_agreement"]) == 1.0


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    (dst / "eval.json").unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("case", ["no_export", "corrupt_fsnn", "corrupt_nir", "corrupt_config", "unknown_override",
                                  "other_model", "missing_data"])
def test_evaluate_errors_name_the_file_and_write_nothing(campaign, tmp_path, capsys, case):
    run = _copy_run(campaign["noaap"], tmp_path / "run")
    extra: list[str] = []
    if case == "no_export":
        import shutil
        shutil.rmtree(run / "export")
        expected = str(run / "export")
    elif case == "corrupt_fsnn":
        (run / "export" / "fsnn.pt").write_bytes(b"this is not a torch file")
        expected = str(run / "export" / "fsnn.pt")
    elif case == "corrupt_nir":
        (run / "export" / "fsnn.nir").write_bytes(b"this is not an HDF5 file")
        expected = str(run / "export" / "fsnn.nir")
    elif case == "corrupt_config":
        (run / "config.yaml").write_text("model: [unclosed\n")
        expected = str(run / "config.yaml")
    elif case == "unknown_override":
        extra = ["data.no_such_key=1"]
        expected = "data.no_such_key"
    elif case == "other_model":
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"]["name"] = "fsnn_wide_7b_net"
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        expected = str(run / "export" / "fsnn.pt")
    else:
        extra = [f"data.root={tmp_path / 'nowhere'}"]
        expected = str(tmp_path / "nowhere")
    rc, _, err = run_cli(["evaluate", "--run", str(run), *extra], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dst evaluate: error:"), err
    assert expected in lines[0]
    assert not (run / "eval.json").exists() and not list(run.glob(".eval.json*"))


# ------------------------------------------------------------------------------------------------ report
def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_report_table_summary_and_plots(campaign, tmp_path, capsys):
    runs = [campaign["dst"], campaign["noaap"]]
    for run in runs:
        if not (run / "eval.json").exists():
            assert main(["evaluate", "--run", str(run)]) == 0
    out = tmp_path / "results" / "tiny"
    rc, stdout, err = run_cli(["report", "--runs", *map(str, runs), "--out", str(out)], capsys)
    assert rc == 0, err
    ev = {r.name: json.loads((r / "eval.json").read_text()) for r in runs}
    ex = {r.name: json.loads((r / "export" / "report.json").read_text()) for r in runs}

    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| tiny_fsnn_7b")]
    assert len(table) >= 2
    row = next(line for line in table if line.startswith("| tiny_fsnn_7b |")).split("|")[1:-1]
    cells = [c.strip() for c in row]
    e, x = ev["tiny_fsnn_7b"], ex["tiny_fsnn_7b"]
    assert cells[:5] == ["tiny_fsnn_7b", "fsnn_7b_net", str(T), "IAND", "yes"]
    assert cells[5] == f"{e['fsnn_top1']:.2f} / {e['fsnn_top5']:.2f}"
    assert cells[6] == f"{e['dsnn_top1']:.2f} / {e['dsnn_top5']:.2f}"
    assert float(cells[9]) == pytest.approx(x["fsnn"]["energy_mj"], rel=1e-2)
    assert float(cells[10]) == pytest.approx(e["firing_rate"], abs=1e-4)
    base_row = [c.strip() for c in next(line for line in table if "tiny_fsnn_7b_noaap" in line).split("|")[1:-1]]
    assert base_row[0] == "tiny_fsnn_7b_noaap (baseline)" and base_row[4] == "no" and base_row[6] == "n/a"
    assert "![Training curves: FSNN vs DSNN](plots/training_curves.png)" in md
    assert "## Cost of keeping the AAP (DSNN)" in md

    with open(out / "summary.csv") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tiny_fsnn_7b", "tiny_fsnn_7b_noaap"}
    assert float(rows["tiny_fsnn_7b"]["fsnn_top1"]) == pytest.approx(e["fsnn_top1"])
    assert float(rows["tiny_fsnn_7b"]["acs_g"]) == pytest.approx(x["fsnn"]["acs"] / 1e9)
    assert float(rows["tiny_fsnn_7b"]["macs_g"]) == pytest.approx(x["fsnn"]["macs"] / 1e9)
    assert rows["tiny_fsnn_7b"]["accuracy_source"] == "eval" and rows["tiny_fsnn_7b"]["missing"] == ""
    assert rows["tiny_fsnn_7b_noaap"]["dsnn_top1"] == "" and rows["tiny_fsnn_7b_noaap"]["role"].startswith("baseline")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["experiment"] for r in summary["experiments"]] == ["tiny_fsnn_7b", "tiny_fsnn_7b_noaap"]

    for rel in summary["plots"].values():
        width, height = _png_ok(out / rel)
        assert width >= 600 and height >= 400
    assert sorted(p.name for p in (out / "plots" / "curves").iterdir()) == ["tiny_fsnn_7b.png",
                                                                             "tiny_fsnn_7b_noaap.png"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert str(out / "report.md") in stdout


@pytest.mark.parametrize("case", ["truncated_metrics", "missing_config", "export_key_missing", "bad_eval",
                                  "eval_not_a_percentage", "missing_run_dir"])
def test_report_errors_name_the_file_and_leave_outputs_alone(campaign, tmp_path, capsys, case):
    good = _copy_run(campaign["dst"], tmp_path / "good")
    bad = _copy_run(campaign["noaap"], tmp_path / "bad")
    out = tmp_path / "results"
    assert main(["report", "--runs", str(good), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if case == "truncated_metrics":
        target = bad / "metrics.json"
        target.write_text(target.read_text()[:40])
    elif case == "missing_config":
        target = bad / "config.yaml"
        target.unlink()
    elif case == "export_key_missing":
        target = bad / "export" / "report.json"
        data = json.loads(target.read_text())
        del data["fsnn"]["energy_mj"]
        target.write_text(json.dumps(data))
    elif case == "bad_eval":
        target = bad / "eval.json"
        target.write_text(json.dumps({"fsnn_top1": "high"}))
    elif case == "eval_not_a_percentage":
        target = bad / "eval.json"
        target.write_text(json.dumps({"fsnn_top1": 0.61, "fsnn_top5": 180.0, "dsnn_top1": None, "dsnn_top5": None,
                                      "firing_rate": 0.1, "samples": 20, "export_dir": "export"}))
    else:
        target = tmp_path / "no_such_run"
        bad = target
    rc, _, err = run_cli(["report", "--runs", str(good), str(bad), "--out", str(out)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dst report: error:") and str(target) in lines[0], err
    if case == "export_key_missing":
        assert "fsnn.energy_mj" in lines[0]
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous report is intact, nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_console_script_in_a_subprocess(tmp_path):
    """The installed `dst` entry point: exit status 2 and one stderr line for a bad input; --help works."""
    dst = Path(sys.executable).parent / "dst"
    cmd = [str(dst)] if dst.exists() else [sys.executable, "-m", "pipeline.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    bad = subprocess.run(cmd + ["report", "--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert str(tmp_path / "missing") in bad.stderr and not (tmp_path / "r").exists()
    helped = subprocess.run(cmd + ["evaluate", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert helped.returncode == 0 and "--max-batches" in helped.stdout and "KEY=VALUE" in helped.stdout


def test_evaluate_and_report_onto_a_full_disk_fail_in_one_line_and_leave_nothing(campaign, small_filesystem, capsys):
    """A 64 KiB filesystem holds neither the report's plots nor, once filled, the evaluation: one line naming the
    output (exit 1, no traceback), and no partial or temporary files."""
    runs = [campaign["dst"], campaign["noaap"]]
    for run in runs:
        if not (run / "eval.json").exists():
            assert main(["evaluate", "--run", str(run)]) == 0
    fs = small_filesystem.mount(64 << 10)
    out = fs / "report"
    rc, _, err = run_cli(["report", "--runs", *map(str, runs), "--out", str(out)], capsys)
    assert rc == 1
    assert err.strip().splitlines() == [f"dst report: error: cannot write the report to {out}: "
                                        "no space left on device (or over quota)"]
    assert list(fs.iterdir()) == []

    small_filesystem.fill()
    eval_out = fs / "eval.json"
    rc, _, err = run_cli(["evaluate", "--run", str(campaign["dst"]), "--out", str(eval_out)], capsys)
    assert rc == 1
    assert err.strip().splitlines()[-1] == (f"dst evaluate: error: cannot write the evaluation {eval_out}: "
                                            "no space left on device (or over quota)")
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]
