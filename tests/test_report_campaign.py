"""`dst report` over a paper-sized campaign written by hand in the formats of the other stages (ImageNet, DVS Gesture
and CIFAR10-DVS; DST runs and baselines; a SEW-ResNet ADD run that `dst export` refused), and the Snakemake report()
declarations that the workflow uses for its outputs."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = REPO / "pipeline" / "report" / "captions"

# name: (dataset, model, connect, aap, epochs, final fsnn top-1, export numbers or None, eval?)
CAMPAIGN = {
    "imagenet_fsnn_resnet18": ("imagenet", "fsnn_resnet18", "IAND", True, 320, 61.9, (1.52, 0.19, 2.25), True),
    "imagenet_fsnn_resnet34": ("imagenet", "fsnn_resnet34", "IAND", True, 320, 65.4, (3.1, 0.21, 3.76), True),
    "imagenet_fsnn_resnet18_noaap": ("imagenet", "fsnn_resnet18", "IAND", False, 320, 58.2, (1.4, 0.19, 2.13), True),
    "imagenet_sew_resnet18_add": ("imagenet", "sew_resnet18", "ADD", False, 320, 63.0, None, False),
    "imagenet_spiking_resnet18": ("imagenet", "spiking_resnet18", "IAND", False, 320, 62.1, (0.1, 0.14, 0.734), False),
    "dvs_gesture_fsnn_7b": ("dvs_gesture", "fsnn_7b_net", "IAND", True, 192, 97.2, (0.35, 0.003, 0.33), True),
    "dvs_gesture_fsnn_7b_noaap": ("dvs_gesture", "fsnn_7b_net", "IAND", False, 192, 95.1, (0.33, 0.003, 0.31), True),
    "cifar10_dvs_fsnn_wide_7b": ("cifar10_dvs", "fsnn_wide_7b_net", "IAND", True, 64, 74.9, (1.2, 0.006, 1.11),
                                 True),
}


def curve(final: float, epochs: int, e: int, start: float = 5.0) -> float:
    return start + (final - start) * (1 - math.exp(-4.0 * e / epochs))


def write_run(runs: Path, name: str) -> Path:
    dataset, model, connect, aap, epochs, top1, ops, has_eval = CAMPAIGN[name]
    run = runs / name
    (run / "export").mkdir(parents=True)
    frames = dataset != "imagenet"
    cfg = {"name": name, "output_dir": str(run), "model": {"name": model, "T": 4, "connect": connect, "aap": aap},
           "data": {"dataset": dataset, "root": f"datasets/prepared/{dataset}", "frames": 16}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    hist = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "train/loss_fsnn": 6.9 * math.exp(-3.0 * e / epochs) + 0.8,
             "lr": 0.1 * (1 + math.cos(math.pi * e / epochs)) / 2, "throughput": 2500.0}
        if e % 4 == 0 or e == epochs:  # evaluated every 4th epoch and the last
            h.update({"val/fsnn_top1": curve(top1, epochs, e), "val/fsnn_top5": curve(min(top1 + 22, 99.5), epochs, e),
                      "firing_rate": 0.18})
            if aap:
                h.update({"val/dsnn_top1": curve(top1 + 1.6, epochs, e), "val/dsnn_top5": curve(top1 + 23, epochs, e)})
        if aap:
            h["train/loss_dsnn"] = 6.9 * math.exp(-3.2 * e / epochs) + 0.7
        h["train/loss"] = h["train/loss_fsnn"] + h.get("train/loss_dsnn", 0.0)
        hist.append(h)
    final = {**hist[-1], "best_fsnn_top1": top1, "best_epoch": epochs, "mlflow_run_id": None}
    (run / "metrics.json").write_text(json.dumps({"final": final, "history": hist}))
    if ops is not None:
        acs, macs, energy = ops
        section = {"acs": acs * 1e9, "macs": macs * 1e9, "energy_mj": energy, "samples": 4, "layers": [],
                   "neuron_firing_rates": {"layer1": 0.2}, "mean_neuron_firing_rate": 0.2}
        dsnn = {**section, "acs": acs * 1.1e9, "macs": (macs + 0.01) * 1e9, "energy_mj": energy * 1.12} if aap else None
        report = {"format": "dst-export-report", "version": 1, "model": {"name": model, "has_aap": aap},
                  "parameters": {"fsnn": 11_700_000, "dsnn": 11_880_000 if aap else None, "aap": 180_000 if aap else 0},
                  "full_spike_check": {"ok": True}, "fsnn": section, "dsnn": dsnn}
        (run / "export" / "report.json").write_text(json.dumps(report))
    if has_eval:
        ev = {"fsnn_top1": top1 - 0.1, "fsnn_top5": min(top1 + 21.5, 99.8), "dsnn_top1": top1 + 1.5 if aap else None,
              "dsnn_top5": min(top1 + 22.9, 99.9) if aap else None, "firing_rate": 0.1712, "samples": 50000 if not frames else 264,
              "export_dir": str(run / "export"), "complete_split": True}
        (run / "eval.json").write_text(json.dumps(ev))
    return run


@pytest.fixture(scope="module")
def campaign_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    runs = [write_run(base / "runs", name) for name in CAMPAIGN]
    out = base / "results" / "paper"
    assert main(["report", "--runs", *map(str, runs), "--out", str(out), "--title", "DST paper campaign"]) == 0
    return base, runs, out


def table_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    section = md.split("## Results", 1)[1].split("##", 1)[0]
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| experiment"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].replace(" (baseline)", "")] = cells
    return rows


def test_campaign_table_in_the_papers_form(campaign_report):
    _, _, out = campaign_report
    md = (out / "report.md").read_text()
    assert md.startswith("# DST paper campaign")
    rows = table_rows(md)
    assert list(rows) == list(CAMPAIGN)
    r18 = rows["imagenet_fsnn_resnet18"]
    assert r18[1:5] == ["fsnn_resnet18", "4", "IAND", "yes"]
    assert r18[5] == "61.80 / 83.40" and r18[6] == "63.40 / 84.80"
    assert r18[7:11] == ["1.520", "0.190", "2.250", "0.1712"]
    sew = rows["imagenet_sew_resnet18_add"]
    assert sew[0] == "imagenet_sew_resnet18_add (baseline)" and sew[3] == "ADD" and sew[6] == "n/a"
    assert sew[5].endswith("†") and sew[7:10] == ["–", "–", "–"]  # no export, no eval: training numbers only
    assert rows["imagenet_spiking_resnet18"][9] == "0.734"
    assert rows["dvs_gesture_fsnn_7b"][2] == "16"  # DVS: T is the number of frames
    assert "† no `eval.json`" in md
    assert "## Paper reference (ImageNet, T=4)" in md and "| DSNN-18 (DST, paper) | 63.46 / 85.14 |" in md
    runs_section = md.split("## Runs", 1)[1]
    assert "export/report.json, eval.json" in runs_section  # the SEW run lists what it lacks


def test_campaign_summary_files(campaign_report):
    _, runs, out = campaign_report
    with open(out / "summary.csv") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(CAMPAIGN)
    assert rows["imagenet_fsnn_resnet18"]["role"] == "DST"
    assert rows["imagenet_fsnn_resnet18_noaap"]["role"] == "baseline: FSNN without AAP"
    assert rows["imagenet_sew_resnet18_add"]["role"] == "baseline: SEW-ResNet ADD"
    assert rows["imagenet_spiking_resnet18"]["role"] == "baseline: Spiking ResNet"
    assert rows["imagenet_spiking_resnet18"]["accuracy_source"] == "train"
    assert float(rows["imagenet_spiking_resnet18"]["fsnn_top1"]) == pytest.approx(curve(62.1, 320, 320))
    assert float(rows["imagenet_fsnn_resnet18"]["dsnn_energy_mj"]) == pytest.approx(2.25 * 1.12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["energy"] == "mJ per sample"
    assert {e["experiment"] for e in summary["experiments"]} == set(CAMPAIGN)


def test_campaign_plots_are_valid_images(campaign_report):
    _, _, out = campaign_report
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "plots").rglob("*.png"))
    assert plots == sorted(["plots/training_curves.png", "plots/accuracy_vs_energy.png"]
                           + [f"plots/curves/{n}.png" for n in CAMPAIGN])
    for rel in plots:
        with Image.open(out / rel) as im:
            im.verify()
    with Image.open(out / "plots" / "training_curves.png") as im:
        assert im.size[1] > 3 * 400  # one row per dataset: three datasets


def test_report_replaces_its_outputs_and_keeps_other_files(campaign_report, tmp_path):
    _, runs, _ = campaign_report
    out = tmp_path / "results"
    assert main(["report", "--runs", *map(str, runs[:3]), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["report", "--runs", str(runs[0]), "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in (out / "plots" / "curves").iterdir()] == ["imagenet_fsnn_resnet18.png"]
    assert list(table_rows((out / "report.md").read_text())) == ["imagenet_fsnn_resnet18"]


def test_report_argument_errors(campaign_report, tmp_path, capsys):
    _, runs, _ = campaign_report
    capsys.readouterr()
    assert main(["report", "--runs", str(runs[0]), str(runs[0]), "--out", str(tmp_path / "a")]) == 2
    assert "both experiment 'imagenet_fsnn_resnet18'" in capsys.readouterr().err
    assert main(["report", "--runs", str(runs[0]), "--out", str(tmp_path / "b"),
                 "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "--parent-run-id" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ Snakemake
# What workflow/Snakefile declares for the report rule (captions relative to workflow/). The test renders the
# same text with the caption folder of this checkout.
REPORT_RULE = '''
rule report:
    input:
        runs=RUNS,
    output:
        md="results/{campaign}/report.md",
        summary=report("results/{campaign}/summary.csv", caption="CAPTIONS/summary.rst",
                       category="Results", labels={"table": "summary"}),
        json="results/{campaign}/summary.json",
        curves=report("results/{campaign}/plots/training_curves.png", caption="CAPTIONS/training_curves.rst",
                      category="Training curves", labels={"figure": "all experiments"}),
        energy=report("results/{campaign}/plots/accuracy_vs_energy.png", caption="CAPTIONS/accuracy_vs_energy.rst",
                      category="Accuracy and energy", labels={"figure": "accuracy vs energy"}),
        per_run=report(directory("results/{campaign}/plots/curves"), patterns=["{experiment}.png"],
                       caption="CAPTIONS/run_curves.rst", category="Training curves",
                       labels={"figure": "{experiment}"}),
    log:
        "logs/report_{campaign}.log",
    shell:
        "DST report --runs {input.runs} --out results/{wildcards.campaign} > {log} 2>&1"
'''


@pytest.mark.slow
def test_snakemake_report_declarations(campaign_report, tmp_path):
    """The report() declarations work in a real Snakemake run and `snakemake --report` embeds the plots."""
    snakemake = Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():
        pytest.skip("snakemake is not installed in this environment")
    _, runs, _ = campaign_report
    work = tmp_path / "wf"
    work.mkdir()
    for run in runs[:2] + runs[5:6]:
        shutil.copytree(run, work / "runs" / run.name)
    dst = Path(sys.executable).parent / "dst"
    rule = (REPORT_RULE.replace("CAPTIONS", str(CAPTIONS)).replace("DST", str(dst))
            .replace("RUNS", repr([f"runs/{r.name}" for r in runs[:2] + runs[5:6]])))
    (work / "Snakefile").write_text('rule all:\n    input: "results/paper/report.md"\n' + rule)
    env_run = subprocess.run([str(snakemake), "--cores", "1", "--quiet", "all"], cwd=work, capture_output=True,
                             text=True, timeout=300)
    assert env_run.returncode == 0, env_run.stderr[-3000:]
    assert (work / "results" / "paper" / "plots" / "curves" / "dvs_gesture_fsnn_7b.png").is_file()
    rep = subprocess.run([str(snakemake), "--cores", "1", "--report", "report.html"], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    for text in ("accuracy_vs_energy.png", "training_curves.png", "dvs_gesture_fsnn_7b.png", "summary.csv",
                 "Accuracy and energy", "Filled circles"):
        assert text in html, text
