"""`dst export`: artifacts, report, round trip in a fresh process, and refusals."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from dst.energy import count_ops
from dst.export import StreamView, strip_aap
from dst.models import create_model
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SHAPE = "3,16,16"


def trained_looking(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, T=2, num_classes=10, **kw)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def plain_checkpoint(path: Path, model: nn.Module, config: dict | None = None) -> Path:
    torch.save({"model_name": model.model_name, "model_kwargs": model.model_kwargs,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "config": config or {"data": {"resolution": 16}}}, path)
    return path


def export(*args: str) -> int:
    return main(["export", *map(str, args)])


@pytest.fixture
def fsnn_ckpt(tmp_path):
    model = trained_looking("fsnn_resnet18")
    return model, plain_checkpoint(tmp_path / "ckpt.pt", model)


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_export_writes_verified_artifacts_that_reload_in_a_fresh_process(tmp_path, fsnn_ckpt, capsys):
    model, ckpt = fsnn_ckpt
    out = tmp_path / "export"
    assert export("--checkpoint", ckpt, "--out", out, "--batch-size", 2) == 0
    assert "full-spike ok" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["dsnn.pt", "fsnn.nir", "fsnn.pt", "fsnn.ts", "report.json"]
    assert leftovers(tmp_path) == []

    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["source"].startswith("random Gaussian") and report["inputs"]["shape"] == [2, 3, 16, 16]
    assert report["full_spike_check"]["ok"] is True and report["full_spike_check"]["offending_layers"] == []
    assert report["model"]["name"] == "fsnn_resnet18"
    params = report["parameters"]
    assert params["fsnn"] == sum(p.numel() for p in strip_aap(model).parameters())
    assert params["dsnn"] == sum(p.numel() for p in model.parameters()) == params["fsnn"] + params["aap"]
    fs, ds = report["fsnn"], report["dsnn"]
    assert fs["macs"] > 0 and fs["acs"] > 0 and fs["energy_mj"] > 0 and fs["neuron_firing_rates"]
    assert {r["layer"] for r in fs["layers"] if r["op"] == "MAC"} == {"stem_conv", "fc"}
    assert ds["macs"] > fs["macs"] and any("aap_transition" in r["layer"] for r in ds["layers"])
    # What was measured, on the 2 samples: stripping and the .pt files change no logit at all; BN folding and the
    # TorchScript trace only by float rounding.
    checks, measured = report["checks"], report["artifacts"]
    assert checks["fsnn_vs_training_stream"] == {"max_abs_logit_diff": 0.0, "samples": 2}
    bn_fold = checks["bn_fold"]
    assert bn_fold["unfolded_batchnorms"] == [] and bn_fold["samples"] == 2
    assert bn_fold["spike_agreement"] > 0.999 and bn_fold["max_abs_logit_diff"] < 1e-2
    assert sorted(measured) == sorted(report["files"]) == ["dsnn.pt", "fsnn.nir", "fsnn.pt", "fsnn.ts"]
    assert all(m["samples"] == 2 for m in measured.values())
    assert measured["fsnn.pt"]["max_abs_logit_diff"] == 0.0 and measured["dsnn.pt"]["max_abs_logit_diff"] == 0.0
    assert "FSNN" in measured["fsnn.pt"]["reference"] and "DSNN" in measured["dsnn.pt"]["reference"]
    assert measured["fsnn.ts"]["max_abs_logit_diff_vs_bn_folded_fsnn"] < 1e-4
    assert measured["fsnn.ts"]["max_abs_logit_diff"] <= bn_fold["max_abs_logit_diff"] + 1e-4
    # fsnn.nir, read back from the file and run by the third-party consumer: the BN-folded FSNN's spikes, all of them.
    nir_check = measured["fsnn.nir"]
    assert report["nir"] == nir_check
    run = nir_check["execution"]
    assert run["read_from"].startswith("nir.read(") and run["read_from"].endswith("fsnn.nir')")  # the file on disk
    assert "nirtorch" in run["consumer"] and "norse" in run["consumer"]
    assert run["samples"] == 2 and run["time_steps"] == 2 and run["neurons"] == 20
    assert run["spikes_compared"] > 0 and run["spike_mismatches"] == 0 and run["argmax_agreement"] == 1.0
    assert run["max_abs_logit_diff_vs_bn_folded_fsnn"] < 1e-5
    assert nir_check["max_abs_logit_diff"] <= bn_fold["max_abs_logit_diff"] + 1e-5
    assert nir_check["dt"] == 1.0 and "Euler" in nir_check["dt_convention"] and "mean over the T steps" in \
        nir_check["readout"]
    assert nir_check["node_types"]["IF"] == 20 and nir_check["node_types"]["Threshold"] == 9  # 8 IAND + the pool
    assert nir_check["nodes"] == sum(nir_check["node_types"].values()) and nir_check["edges"] > nir_check["nodes"]

    # A fresh process with only torch + dst reproduces the logits of the training model's streams.
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        z = model(x)
    torch.save({"x": x, "fsnn": z.fsnn, "dsnn": z.dsnn}, tmp_path / "io.pt")
    code = f"""
        import sys
        sys.modules['pipeline'] = None
        import torch
        from dst.export import load_fsnn, load_dsnn
        io = torch.load('io.pt')
        with torch.no_grad():
            assert torch.equal(load_fsnn('{out}/fsnn.pt')(io['x']), io['fsnn'])
            assert torch.equal(load_dsnn('{out}/dsnn.pt')(io['x']), io['dsnn'])
            ts = torch.jit.load('{out}/fsnn.ts')  # the BN-folded FSNN
            torch.testing.assert_close(ts(io['x']), load_fsnn('{out}/fsnn.pt', fold=True)(io['x']))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr

    # Exporting again replaces the previous export as a whole.
    assert export("--checkpoint", ckpt, "--out", out, "--batch-size", 1, "--no-dsnn", "--format", "ts") == 0
    assert sorted(p.name for p in out.iterdir()) == ["fsnn.pt", "fsnn.ts", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["dsnn"] is None and sorted(report["artifacts"]) == ["fsnn.pt", "fsnn.ts"]
    assert report["artifacts"]["fsnn.pt"] == {**measured["fsnn.pt"], "samples": 1}
    assert leftovers(tmp_path) == []


def test_firing_rates_are_measured_on_the_given_data_batch(tmp_path, fsnn_ckpt):
    model, ckpt = fsnn_ckpt
    images = torch.rand(3, 3, 16, 16)
    torch.save((images, torch.tensor([0, 1, 2])), tmp_path / "val.pt")  # (inputs, targets), as a loader yields
    out = tmp_path / "export"
    assert export("--checkpoint", ckpt, "--out", out, "--data-batch", tmp_path / "val.pt", "--no-dsnn") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["source"] == f"data batch file {tmp_path / 'val.pt'}"
    assert report["inputs"]["samples"] == 3  # fewer than --batch-size (4): all of them
    assert report["checks"]["fsnn_vs_training_stream"]["samples"] == report["artifacts"]["fsnn.pt"]["samples"] == 3
    expected = count_ops(strip_aap(model), images)
    assert report["fsnn"]["acs"] == pytest.approx(expected.acs)
    assert [r["input_firing_rate"] for r in report["fsnn"]["layers"]] == pytest.approx(
        [r.input_firing_rate for r in expected.rows])


def test_deepspeed_checkpoint_directory(tmp_path):
    """The layout pipeline.checkpoint reads: <ckpts>/latest -> tag dir with DeepSpeed model states + client state."""
    model = trained_looking("fsnn_resnet18")
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "epoch0002").mkdir(parents=True)
    torch.save({"module": model.state_dict(),
                "dst": {"model_name": model.model_name, "model_kwargs": model.model_kwargs, "config": {}}},
               ckpts / "epoch0002" / "mp_rank_00_model_states.pt")
    (ckpts / "latest").write_text("epoch0002\n")
    out = tmp_path / "export"
    assert export("--checkpoint", ckpts, "--out", out, "--input-shape", SHAPE, "--batch-size", 1) == 0
    assert json.loads((out / "report.json").read_text())["checkpoint_kind"].startswith("DeepSpeed checkpoint")


# ------------------------------------------------------------------------------------------------ refusals
def refused(capsys, *args) -> str:
    assert export(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dst export: error:") and len(err.splitlines()) == 1, err
    return err


def test_refuses_an_fsnn_that_is_not_full_spike_unless_told_it_is_a_baseline(tmp_path, capsys):
    ckpt = plain_checkpoint(tmp_path / "sew.pt", trained_looking("sew_resnet18"))
    out = tmp_path / "export"
    err = refused(capsys, "--checkpoint", ckpt, "--out", out, "--input-shape", "3,32,32")
    assert "not full-spike" in err and "blocks.1.residual.0.0" in err and "--allow-not-full-spike" in err
    assert not out.exists() and leftovers(tmp_path) == []

    assert export("--checkpoint", ckpt, "--out", out, "--input-shape", "3,32,32", "--batch-size", 2,
                  "--allow-not-full-spike") == 0
    assert "NOT full-spike" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["exported_despite_failed_check"] is True and report["full_spike_check"]["ok"] is False
    assert report["dsnn"] is None and not (out / "dsnn.pt").exists()  # no AAP: FSNN only, by default
    macs = {r["layer"] for r in report["fsnn"]["layers"] if r["op"] == "MAC"}
    assert "blocks.1.residual.0.0" in macs and set(report["full_spike_check"]["offending_layers"]) <= macs


def perturbed(model: nn.Module) -> nn.Module:
    """A copy whose logits are all 1e-3 off: what a bug in stripping or in the file format would look like."""
    model = copy.deepcopy(model)
    fc = (model.model if isinstance(model, StreamView) else model).fc
    with torch.no_grad():
        fc.bias += 1e-3
    return model


def test_refuses_a_stripped_fsnn_that_differs_from_the_training_stream(tmp_path, capsys, fsnn_ckpt, monkeypatch):
    import dst.export
    _, ckpt = fsnn_ckpt
    strip = dst.export.strip_aap
    monkeypatch.setattr(dst.export, "strip_aap", lambda model: perturbed(strip(model)))
    out = tmp_path / "export"
    err = refused(capsys, "--checkpoint", ckpt, "--out", out, "--batch-size", 2)
    assert "the stripped FSNN differs from the training model's FSNN stream by up to 0.001" in err
    assert "of 2 samples" in err and "bug in dst" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("artifact", ["fsnn.pt", "dsnn.pt"])
def test_refuses_a_pt_file_that_does_not_reproduce_its_stream(tmp_path, capsys, fsnn_ckpt, monkeypatch, artifact):
    """The check reads the file back from disk: a file written from other weights than the stream's is caught."""
    import dst.export
    _, ckpt = fsnn_ckpt
    save = dst.export.save_exported

    def save_wrong(model, path):
        save(perturbed(model) if Path(path).name == artifact else model, path)
    monkeypatch.setattr(dst.export, "save_exported", save_wrong)
    out = tmp_path / "export"
    stream = "DSNN" if artifact == "dsnn.pt" else "FSNN"
    err = refused(capsys, "--checkpoint", ckpt, "--out", out, "--batch-size", 3)
    assert f"{artifact} differs from the training model's {stream} stream by up to 0.001" in err
    assert "of 3 samples" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_torchscript_difference_is_measured_on_the_file(tmp_path, fsnn_ckpt, monkeypatch):
    """fsnn.ts may differ by float rounding, so it is not refused; the report says by how much, read off the file."""
    import dst.export
    _, ckpt = fsnn_ckpt
    trace = dst.export.to_torchscript
    monkeypatch.setattr(dst.export, "to_torchscript", lambda model, example: trace(perturbed(model), example))
    out = tmp_path / "export"
    assert export("--checkpoint", ckpt, "--out", out, "--batch-size", 2, "--no-dsnn") == 0
    ts = json.loads((out / "report.json").read_text())["artifacts"]["fsnn.ts"]
    assert ts["samples"] == 2 and ts["max_abs_logit_diff_vs_bn_folded_fsnn"] == pytest.approx(1e-3, rel=1e-3)


def test_dsnn_is_exported_only_when_there_is_an_aap(tmp_path, capsys):
    ckpt = plain_checkpoint(tmp_path / "noaap.pt", trained_looking("fsnn_resnet18", aap=False))
    err = refused(capsys, "--checkpoint", ckpt, "--out", tmp_path / "export", "--dsnn")
    assert "no AAP" in err and "--dsnn" in err
    assert not (tmp_path / "export").exists()
    assert export("--checkpoint", ckpt, "--out", tmp_path / "export", "--batch-size", 1) == 0
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["fsnn.nir", "fsnn.pt", "fsnn.ts", "report.json"]


def test_refuses_unreadable_checkpoints(tmp_path, capsys, fsnn_ckpt):
    out = tmp_path / "export"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    assert "cannot read checkpoint" in refused(capsys, "--checkpoint", garbage, "--out", out)
    assert "does not exist" in refused(capsys, "--checkpoint", tmp_path / "missing", "--out", out)
    (tmp_path / "emptydir").mkdir()
    assert "not a checkpoint" in refused(capsys, "--checkpoint", tmp_path / "emptydir", "--out", out)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    assert "missing: model_name" in refused(capsys, "--checkpoint", tmp_path / "other.pt", "--out", out)

    model, _ = fsnn_ckpt
    wrong = {"model_name": "fsnn_resnet34", "model_kwargs": model.model_kwargs, "state_dict": model.state_dict()}
    torch.save(wrong, tmp_path / "wrong.pt")
    assert "do not fit fsnn_resnet34" in refused(capsys, "--checkpoint", tmp_path / "wrong.pt", "--out", out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_refuses_an_out_dir_holding_other_files(tmp_path, capsys, fsnn_ckpt):
    _, ckpt = fsnn_ckpt
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "not an export" in refused(capsys, "--checkpoint", ckpt, "--out", out)
    assert (out / "notes.txt").read_text() == "mine"


def test_format_chooses_the_files_and_bad_formats_are_refused(tmp_path, capsys, fsnn_ckpt):
    _, ckpt = fsnn_ckpt
    out = tmp_path / "export"
    assert export("--checkpoint", ckpt, "--out", out, "--batch-size", 1, "--no-dsnn", "--format", "pt") == 0
    assert sorted(p.name for p in out.iterdir()) == ["fsnn.pt", "report.json"]
    assert export("--checkpoint", ckpt, "--out", out, "--batch-size", 1, "--no-dsnn", "--format", "nir") == 0
    assert sorted(p.name for p in out.iterdir()) == ["fsnn.nir", "fsnn.pt", "report.json"]
    assert "spikes differ" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        export("--checkpoint", ckpt, "--out", tmp_path / "other", "--format", "onnx")
    assert exit_info.value.code == 2 and "unknown format onnx" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_model_without_a_nir_form_is_refused_by_name(tmp_path, capsys):
    """A soft reset has no exact NIR form: one line naming the neuron and how to skip the format; nothing written."""
    ckpt = plain_checkpoint(tmp_path / "soft.pt", trained_looking("fsnn_resnet18", neuron_kwargs={"v_reset": None}))
    out = tmp_path / "export"
    err = refused(capsys, "--checkpoint", ckpt, "--out", out, "--input-shape", SHAPE, "--batch-size", 1)
    assert "stem_neuron" in err and "soft" in err and "--format without nir" in err
    assert not out.exists() and leftovers(tmp_path) == []
    assert export("--checkpoint", ckpt, "--out", out, "--input-shape", SHAPE, "--batch-size", 1, "--format", "ts") == 0


def test_log_to_mlflow_puts_the_files_in_the_training_run(tmp_path, capsys):
    """--log-to-mlflow: the run id from RUN/metrics.json, the store from the run's config; the files under export/."""
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("export-test")).info.run_id
    model = trained_looking("fsnn_resnet18")
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "epoch0001").mkdir(parents=True)
    torch.save({"module": model.state_dict(),
                "dst": {"model_name": model.model_name, "model_kwargs": model.model_kwargs,
                        "config": {"tracking": {"uri": uri}}}}, ckpts / "epoch0001" / "mp_rank_00_model_states.pt")
    (ckpts / "latest").write_text("epoch0001\n")
    args = ("--checkpoint", ckpts, "--out", tmp_path / "run" / "export", "--input-shape", SHAPE, "--batch-size", 1,
            "--log-to-mlflow")
    capsys.readouterr()                                             # MLflow's own start-up lines
    err = refused(capsys, *args)                                    # no metrics.json yet: refused before any work
    assert "metrics.json" in err and not (tmp_path / "run" / "export").exists()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"final": {"mlflow_run_id": run_id}}))
    assert export(*args) == 0
    logged = sorted(a.path for a in client.list_artifacts(run_id, "export"))
    assert logged == ["export/dsnn.pt", "export/fsnn.nir", "export/fsnn.pt", "export/fsnn.ts", "export/report.json"]


@pytest.mark.parametrize("mutation", ["dropped edge", "wrong threshold", "dangling node"])
def test_a_nir_file_that_does_not_hold_the_fsnn_is_refused(tmp_path, capsys, fsnn_ckpt, monkeypatch, mutation):
    """The check runs the written file: a graph with one edge dropped (d into the first IAND junction) or one
    threshold wrong (that junction's 0.5 -> 1.5) disagrees with the FSNN; a node left feeding nothing (the junction's
    -s) would hang nirtorch's interpreter and is refused before it runs. Each is one line, nothing written."""
    import numpy as np

    from dst.export import nir as dst_nir
    _, ckpt = fsnn_ckpt
    real_write = dst_nir.write_nir

    def broken_write(graph, path):
        junction = "blocks_0_iand"
        if mutation == "dropped edge":
            graph.edges.remove(("maxpool_0_fire", junction))
        elif mutation == "dangling node":
            graph.edges.remove(("blocks_0_not_s", junction))
        else:
            graph.nodes[junction].threshold = np.full_like(graph.nodes[junction].threshold, 1.5)
        real_write(graph, path)

    monkeypatch.setattr(dst_nir, "write_nir", broken_write)
    out = tmp_path / "export"
    err = refused(capsys, "--checkpoint", ckpt, "--out", out, "--batch-size", 4, "--no-dsnn", "--format", "nir")
    if mutation == "dangling node":
        assert "fsnn.nir cannot be run" in err and "2 Output nodes (output, output_blocks_0_not_s)" in err
    else:
        assert "fsnn.nir" in err and "disagrees with the FSNN" in err and "spikes differ" in err
    assert not out.exists() and leftovers(tmp_path) == []
