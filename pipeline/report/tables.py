"""The results table in the paper's form (markdown), and the same numbers as summary.csv / summary.json."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable

from pipeline.report.runs import RunSummary

# The paper's ImageNet table (PAPER.md, "Reference numbers", T=4): marked in the accuracy/energy plot and the report.
PAPER_IMAGENET = [
    {"model": "DSNN-18 (DST, paper)", "top1": 63.46, "top5": 85.14, "acs_g": 1.69, "macs_g": 0.20, "energy_mj": 2.44},
    {"model": "SEW-ResNet-18 ADD (paper)", "top1": 63.18, "top5": 84.53, "acs_g": 0.50, "macs_g": 2.75,
     "energy_mj": 13.10},
    {"model": "Spiking ResNet-18 (paper)", "top1": 62.32, "top5": 84.05, "acs_g": 0.10, "macs_g": 0.14,
     "energy_mj": 0.734},
    {"model": "ANN ResNet-18 (paper)", "top1": 69.76, "top5": 89.08, "acs_g": 0.0, "macs_g": 1.82, "energy_mj": 8.372},
]

MISSING = "–"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return MISSING if value is None else format(value, spec)


def fmt_ops(value: float | None) -> str:
    """G ops / mJ: three decimals at paper scale (1.69, 0.20), four significant digits for tiny demo models."""
    if value is None:
        return MISSING
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"


def pair(a: float | None, b: float | None) -> str:
    return MISSING if a is None and b is None else f"{fmt(a)} / {fmt(b)}"


def _md_table(header: list[str], rows: Iterable[list[str]], align: list[str]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join({"l": ":---", "r": "---:", "c": ":---:"}[a] for a in align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(runs: list[RunSummary]) -> str:
    """One row per experiment: accuracies of both streams, the deployable FSNN's ops and energy, firing rate."""
    header = ["experiment", "model", "T", "connect", "AAP", "FSNN top-1 / top-5 (%)", "DSNN top-1 / top-5 (%)",
              "ACs (G)", "MACs (G)", "energy (mJ)", "firing rate"]
    rows = []
    for r in runs:
        mark = {"eval": "" if r.eval_complete is not False else " ‡", "train": " †"}.get(r.accuracy_source, "")
        name = r.experiment + ("" if r.role == "DST" else " (baseline)")
        rows.append([name, r.model, str(r.T), r.connect, "yes" if r.aap else "no",
                     pair(r.fsnn_top1, r.fsnn_top5) + mark,
                     (pair(r.dsnn_top1, r.dsnn_top5) + mark) if r.aap else "n/a",
                     fmt_ops(r.acs_g), fmt_ops(r.macs_g), fmt_ops(r.energy_mj), fmt(r.firing_rate, ".4f")])
    return _md_table(header, rows, ["l", "l", "r", "l", "c", "r", "r", "r", "r", "r", "r"])


def dsnn_cost_table(runs: list[RunSummary]) -> str | None:
    """What keeping the AAP costs at inference: the FSNN against the dual-stream model (DSNN)."""
    rows = [[r.experiment, fmt_ops(r.acs_g), fmt_ops(r.macs_g), fmt_ops(r.energy_mj),
             fmt_ops(r.dsnn_acs_g), fmt_ops(r.dsnn_macs_g), fmt_ops(r.dsnn_energy_mj),
             MISSING if r.params_aap is None else f"{r.params_aap / 1e6:.3f}"]
            for r in runs if r.aap and r.dsnn_energy_mj is not None]
    if not rows:
        return None
    header = ["experiment", "FSNN ACs (G)", "FSNN MACs (G)", "FSNN energy (mJ)", "DSNN ACs (G)", "DSNN MACs (G)",
              "DSNN energy (mJ)", "AAP params (M)"]
    return _md_table(header, rows, ["l"] + ["r"] * 7)


def paper_table() -> str:
    rows = [[p["model"], pair(p["top1"], p["top5"]), fmt_ops(p["acs_g"]), fmt_ops(p["macs_g"]),
             fmt_ops(p["energy_mj"])] for p in PAPER_IMAGENET]
    return _md_table(["model", "top-1 / top-5 (%)", "ACs (G)", "MACs (G)", "energy (mJ)"], rows,
                     ["l", "r", "r", "r", "r"])


def summary_rows(runs: list[RunSummary]) -> list[dict[str, Any]]:
    return [r.row() for r in runs]


def summary_csv(runs: list[RunSummary]) -> str:
    rows = summary_rows(runs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def summary_json(runs: list[RunSummary], plots: dict[str, str]) -> str:
    return json.dumps({"format": "dst-report-summary", "version": 1,
                       "units": {"accuracy": "%", "ops": "G (1e9) per sample", "energy": "mJ per sample",
                                 "firing_rate": "mean spikes per neuron per time step"},
                       "experiments": summary_rows(runs), "plots": plots}, indent=2) + "\n"
