"""Reading one training run directory into a flat summary: the only place that knows the keys of the files the
other stages write.

    runs/<campaign>/<experiment>/
        config.yaml          resolved experiment config (`dst train`)                       required
        metrics.json         {"final": {...}, "history": [{"epoch": 1, "train/loss": ...}]}  required
        export/report.json   parameters, MACs, ACs, energy, firing rates (`dst export`)       optional
        eval.json            exported FSNN/DSNN on the validation split (`dst evaluate`)     optional

A missing required file, or any file that is present but unreadable (bad JSON, wrong shape, a key missing), is a
UsageError naming the file (and the key). Optional files that are absent leave their cells empty and are listed in
`RunSummary.missing`, so a baseline that `dst export` refuses (SEW-ResNet ADD is not full-spike) still gets its row.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
EXPORT_REPORT = Path("export") / "report.json"
EVAL_FILE = "eval.json"

# Datasets whose samples are event frames: their time steps are the frames (data.frames), not model.T.
FRAME_DATASETS = {"dvs_gesture", "cifar10_dvs", "demo_dvs"}


@dataclass
class RunSummary:
    """One experiment's row. Accuracies in %, ops in G (1e9) per sample, energy in mJ per sample."""
    experiment: str
    run_dir: str
    dataset: str
    model: str
    T: int
    connect: str
    aap: bool
    role: str                                  # "DST" or "baseline: ..."
    epochs: int
    fsnn_top1: float | None = None
    fsnn_top5: float | None = None
    dsnn_top1: float | None = None
    dsnn_top5: float | None = None
    accuracy_source: str = "none"              # "eval" (exported artifacts, eval.json) | "train" (metrics.json)
    eval_samples: int | None = None
    eval_complete: bool | None = None          # False: eval.json covers part of the split (--max-batches)
    nir_top1: float | None = None              # fsnn.nir run by the consumer (eval.json's nir), same samples
    nir_top5: float | None = None
    nir_prediction_agreement: float | None = None  # fraction of samples: NIR top-1 == the BN-folded FSNN's
    nir_max_abs_logit_diff: float | None = None
    best_fsnn_top1: float | None = None
    best_epoch: int | None = None
    acs_g: float | None = None                 # the deployable FSNN
    macs_g: float | None = None
    energy_mj: float | None = None
    dsnn_acs_g: float | None = None            # the dual-stream model (AAP kept)
    dsnn_macs_g: float | None = None
    dsnn_energy_mj: float | None = None
    params_fsnn: int | None = None
    params_aap: int | None = None
    full_spike: bool | None = None
    firing_rate: float | None = None           # mean spikes per neuron per time step
    mlflow_run_id: str | None = None
    missing: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The flat record of summary.csv / summary.json (no history)."""
        d = asdict(self)
        d.pop("history")
        d["missing"] = ";".join(self.missing)
        return d


def role_of(model: str, connect: str, aap: bool) -> str:
    if model.startswith("spiking_resnet"):
        return "baseline: Spiking ResNet"
    if connect == "ADD":
        return "baseline: SEW-ResNet ADD"
    if not aap:
        return "baseline: FSNN without AAP"
    return "DST"


def is_baseline(run: RunSummary) -> bool:
    return run.role != "DST"


# ------------------------------------------------------------------------------------------------ file readers
def one_line(message: str) -> str:
    """Collapse a multi-line error (YAML parser marks, several pydantic keys) into the one line the CLI prints."""
    return "; ".join(" ".join(line.split()) for line in str(message).splitlines() if line.strip() and
                     line.strip() != "^")


def load_run_config(path: Path, overrides: list[str] | tuple[str, ...] = ()):
    from pipeline.config import load_config
    try:
        return load_config(path, overrides)
    except UsageError as err:
        raise UsageError(one_line(str(err))) from None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _number(value: Any, path: Path, key: str, *, required: bool = True) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{path}: {key} must be a finite number, got {value!r}")
    return float(value)


def _lookup(data: dict, dotted: str, path: Path, *, required: bool = True) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if required:
                raise UsageError(f"{path}: key {dotted} is missing")
            return None
        node = node[part]
    return node


def read_metrics(path: Path) -> tuple[dict, list[dict]]:
    data = read_json(path)
    final, history = data.get("final"), data.get("history")
    if not isinstance(final, dict):
        raise UsageError(f"{path}: key final is missing or not an object")
    if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise UsageError(f"{path}: key history must be a list of objects with an epoch")
    for i, entry in enumerate(history):
        for key, value in entry.items():  # NaN/inf are values (plotted as gaps); strings or nulls are corruption
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{path}: history[{i}].{key} must be a number, got {value!r}")
    return final, history


def read_export_report(path: Path) -> dict[str, Any]:
    """The numbers the table needs from `dst export`'s report.json (keys as dst export writes them)."""
    data = read_json(path)
    out: dict[str, Any] = {}
    for stream, prefix in (("fsnn", ""), ("dsnn", "dsnn_")):
        section = _lookup(data, stream, path, required=stream == "fsnn")
        if section is None:  # null for models without AAP (or exported with --no-dsnn)
            continue
        out[f"{prefix}acs_g"] = _number(_lookup(data, f"{stream}.acs", path), path, f"{stream}.acs") / 1e9
        out[f"{prefix}macs_g"] = _number(_lookup(data, f"{stream}.macs", path), path, f"{stream}.macs") / 1e9
        out[f"{prefix}energy_mj"] = _number(_lookup(data, f"{stream}.energy_mj", path), path, f"{stream}.energy_mj")
    rate = _lookup(data, "fsnn.mean_neuron_firing_rate", path, required=False)
    out["export_firing_rate"] = _number(rate, path, "fsnn.mean_neuron_firing_rate", required=False)
    params = _lookup(data, "parameters.fsnn", path, required=False)
    out["params_fsnn"] = None if params is None else int(_number(params, path, "parameters.fsnn"))
    aap = _lookup(data, "parameters.aap", path, required=False)
    out["params_aap"] = None if aap is None else int(_number(aap, path, "parameters.aap"))
    ok = _lookup(data, "full_spike_check.ok", path, required=False)
    out["full_spike"] = None if ok is None else bool(ok)
    return out


EVAL_KEYS = ("fsnn_top1", "fsnn_top5", "dsnn_top1", "dsnn_top5", "firing_rate", "samples")


def read_eval(path: Path) -> dict[str, Any]:
    data = read_json(path)
    for key in EVAL_KEYS:
        if key not in data:
            raise UsageError(f"{path}: key {key} is missing")
    out = {k: _number(data[k], path, k, required=not k.startswith("dsnn")) for k in EVAL_KEYS}
    for key in EVAL_KEYS[:4]:
        if out[key] is not None and not 0 <= out[key] <= 100:
            raise UsageError(f"{path}: {key} must be a percentage in [0, 100], got {out[key]}")
    out["samples"] = int(out["samples"])
    out["complete_split"] = bool(data.get("complete_split", True))
    out["nir"] = read_eval_nir(data.get("nir"), path)
    return out


NIR_EVAL_KEYS = ("top1", "top5", "prediction_agreement", "max_abs_logit_diff")


def read_eval_nir(section: Any, path: Path) -> dict[str, float] | None:
    """eval.json's nir section (`dst evaluate` on fsnn.nir): None when absent or null."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise UsageError(f"{path}: nir must be an object or null, got {type(section).__name__}")
    out = {}
    for key in NIR_EVAL_KEYS:
        if key not in section:
            raise UsageError(f"{path}: key nir.{key} is missing")
        out[key] = _number(section[key], path, f"nir.{key}")
    for key in ("top1", "top5"):
        if not 0 <= out[key] <= 100:
            raise UsageError(f"{path}: nir.{key} must be a percentage in [0, 100], got {out[key]}")
    if not 0 <= out["prediction_agreement"] <= 1:
        raise UsageError(f"{path}: nir.prediction_agreement must be a fraction in [0, 1], "
                         f"got {out['prediction_agreement']}")
    return out


# ------------------------------------------------------------------------------------------------ one run
def read_run(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    final, history = read_metrics(run_dir / METRICS_FILE)
    m = cfg.model
    T = cfg.data.frames if cfg.data.dataset in FRAME_DATASETS else m.T
    run = RunSummary(experiment=cfg.name, run_dir=str(run_dir), dataset=cfg.data.dataset, model=m.name, T=T,
                     connect=m.connect, aap=m.aap, role=role_of(m.name, m.connect, m.aap),
                     epochs=max((int(h["epoch"]) for h in history), default=0), history=history)
    metrics_path = run_dir / METRICS_FILE
    run.best_fsnn_top1 = _number(final.get("best_fsnn_top1"), metrics_path, "final.best_fsnn_top1", required=False)
    best_epoch = final.get("best_epoch")
    run.best_epoch = None if best_epoch is None else int(_number(best_epoch, metrics_path, "final.best_epoch"))
    run.mlflow_run_id = final.get("mlflow_run_id") or None
    # Training-time accuracy: the last epoch that was evaluated.
    evaluated = [h for h in history if "val/fsnn_top1" in h]
    train_rate = None
    if evaluated:
        last = evaluated[-1]
        run.fsnn_top1, run.fsnn_top5 = last.get("val/fsnn_top1"), last.get("val/fsnn_top5")
        run.dsnn_top1, run.dsnn_top5 = last.get("val/dsnn_top1"), last.get("val/dsnn_top5")
        train_rate = last.get("firing_rate")
        run.accuracy_source = "train"

    export_path = run_dir / EXPORT_REPORT
    export_rate = None
    if export_path.exists():
        numbers = read_export_report(export_path)
        export_rate = numbers.pop("export_firing_rate")
        for key, value in numbers.items():
            setattr(run, key, value)
    else:
        run.missing.append(str(EXPORT_REPORT))

    eval_path = run_dir / EVAL_FILE
    eval_rate = None
    if eval_path.exists():
        ev = read_eval(eval_path)
        run.fsnn_top1, run.fsnn_top5 = ev["fsnn_top1"], ev["fsnn_top5"]
        run.dsnn_top1, run.dsnn_top5 = ev["dsnn_top1"], ev["dsnn_top5"]
        run.eval_samples, eval_rate = ev["samples"], ev["firing_rate"]
        run.eval_complete = ev["complete_split"]
        run.accuracy_source = "eval"
        if ev["nir"] is not None:
            for key, value in ev["nir"].items():
                setattr(run, f"nir_{key}", value)
    else:
        run.missing.append(EVAL_FILE)
    # Firing rate on real validation data first; export's may be measured on random input.
    run.firing_rate = next((r for r in (eval_rate, train_rate, export_rate) if r is not None), None)
    return run


def read_runs(run_dirs: list[Path]) -> list[RunSummary]:
    runs = [read_run(Path(d)) for d in run_dirs]
    seen: dict[str, str] = {}
    for run in runs:
        if run.experiment in seen:
            raise UsageError(f"{run.run_dir} and {seen[run.experiment]} are both experiment {run.experiment!r}: "
                             "pass each run directory once")
        seen[run.experiment] = run.run_dir
    return runs
