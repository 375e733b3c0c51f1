"""Plots of a campaign (matplotlib, Agg backend: no display needed on compute nodes).

    training_curves.png       per dataset: train loss and validation top-1 per epoch, FSNN (solid) vs DSNN (dashed)
    curves/<experiment>.png   the same for one experiment, with top-5
    accuracy_vs_energy.png    per dataset: top-1 against energy per sample; FSNN, DSNN, baselines and (ImageNet)
                              the paper's reference numbers marked differently
Every experiment keeps one colour in every figure.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: compute nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from pipeline.report.runs import RunSummary, is_baseline  # noqa: E402
from pipeline.report.tables import PAPER_IMAGENET  # noqa: E402

DPI = 110
STREAM_STYLE = {"fsnn": "-", "dsnn": "--"}
DATASET_TITLES = {"imagenet": "ImageNet", "dvs_gesture": "DVS128 Gesture", "cifar10_dvs": "CIFAR10-DVS",
                  "demo_images": "demo images (digits)", "demo_dvs": "demo DVS (moving shapes)"}


def safe_name(name: str) -> str:
    """A file name for an experiment (also a Snakemake wildcard value: no slashes or spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


def colours(runs: list[RunSummary]) -> dict[str, tuple]:
    # tab10 without its grey (grey marks the paper's reference points), then tab20's lighter shades
    palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    palette += [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i % 2 == 1 and i not in (15,)]
    return {r.experiment: palette[i % len(palette)] for i, r in enumerate(runs)}


def by_dataset(runs: list[RunSummary]) -> dict[str, list[RunSummary]]:
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.dataset, []).append(r)
    return groups


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(int(h["epoch"]), float(h[key])) for h in history if key in h]
    return [p[0] for p in points], [p[1] for p in points]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True)


def _plot_streams(ax, run: RunSummary, key: str, colour, label_streams: bool, marker_if_sparse: bool = True) -> bool:
    """key has a {s} for the stream (e.g. 'val/{s}_top1'); returns whether anything was drawn."""
    drawn = False
    for stream, style in STREAM_STYLE.items():
        x, y = _series(run.history, key.format(s=stream))
        if not x:
            continue
        marker = "o" if marker_if_sparse and len(x) <= 30 else None
        ax.plot(x, y, linestyle=style, marker=marker, markersize=3.5, color=colour, linewidth=1.6,
                label=stream.upper() if label_streams else None)
        drawn = True
    return drawn


def _stream_legend(ax, loc: str = "best") -> None:
    handles = [Line2D([], [], color="0.2", linestyle=STREAM_STYLE["fsnn"], label="FSNN (spike stream)"),
               Line2D([], [], color="0.2", linestyle=STREAM_STYLE["dsnn"], label="DSNN (accumulation stream, AAP)")]
    ax.legend(handles=handles, loc=loc, fontsize=8, framealpha=0.85)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------------------------------------ curves
def plot_training_curves(runs: list[RunSummary], path: Path) -> None:
    groups = by_dataset(runs)
    colour = colours(runs)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.2 * len(groups)), squeeze=False)
    for row, (dataset, members) in enumerate(groups.items()):
        ax_loss, ax_acc = axes[row]
        title = DATASET_TITLES.get(dataset, dataset)
        any_loss = any([_plot_streams(ax_loss, r, "train/loss_{s}", colour[r.experiment], False) for r in members])
        any_acc = any([_plot_streams(ax_acc, r, "val/{s}_top1", colour[r.experiment], False) for r in members])
        ax_loss.set_title(f"{title}: training loss (cross-entropy per stream)")
        ax_loss.set_ylabel("loss (nats per sample)")
        ax_acc.set_title(f"{title}: validation top-1 accuracy")
        ax_acc.set_ylabel("top-1 accuracy (%)")
        for ax, drawn in ((ax_loss, any_loss), (ax_acc, any_acc)):
            _epoch_axis(ax)
            if not drawn:
                _empty(ax, "no values in metrics.json history")
        _stream_legend(ax_loss, "upper right")
        exp_handles = [Line2D([], [], color=colour[r.experiment], linewidth=3,
                              label=r.experiment + (" (baseline)" if is_baseline(r) else "")) for r in members]
        ax_acc.legend(handles=exp_handles, title="experiment", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      fontsize=8, title_fontsize=9, borderaxespad=0)
    fig.suptitle("Training curves: FSNN (solid) vs DSNN (dashed)", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_run_curves(run: RunSummary, colour, path: Path) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.3))
    drawn_loss = _plot_streams(ax_loss, run, "train/loss_{s}", colour, True)
    x, y = _series(run.history, "train/loss")
    if x and run.aap:
        ax_loss.plot(x, y, color="0.5", linewidth=1.0, linestyle=":", label="total (weighted sum)")
        drawn_loss = True
    ax_loss.set_title("training loss")
    ax_loss.set_ylabel("loss (nats per sample)")
    drawn_acc = False
    for k, alpha in (("top1", 1.0), ("top5", 0.45)):
        for stream, style in STREAM_STYLE.items():
            ex, ey = _series(run.history, f"val/{stream}_{k}")
            if ex:
                label = f"{stream.upper()} {k.replace('top', 'top-')}"
                ax_acc.plot(ex, ey, linestyle=style, marker="o" if len(ex) <= 30 else None, markersize=3.5,
                            color=colour, alpha=alpha, linewidth=1.6, label=label)
                drawn_acc = True
    ax_acc.set_title("validation accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    for ax, drawn in ((ax_loss, drawn_loss), (ax_acc, drawn_acc)):
        _epoch_axis(ax)
        if drawn:
            ax.legend(fontsize=8, framealpha=0.85)
        else:
            _empty(ax, "no values in metrics.json history")
    kind = "DST (FSNN + AAP)" if not is_baseline(run) else run.role
    fig.suptitle(f"{run.experiment}: {run.model}, T={run.T}, {run.connect}, {kind}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ energy
MARKERS = {"fsnn": dict(marker="o", s=70), "dsnn": dict(marker="^", s=80), "baseline": dict(marker="s", s=70),
           "paper": dict(marker="*", s=150)}


def energy_unit(values_mj: list[float]) -> tuple[str, float]:
    """The unit that shows these energies as numbers >= 0.1 (demo models spend nJ, ImageNet ones mJ)."""
    top = max((abs(v) for v in values_mj), default=1.0)
    for unit, scale in (("mJ", 1.0), ("µJ", 1e3), ("nJ", 1e6)):
        if top * scale >= 0.1:
            return unit, scale
    return "pJ", 1e9


def plot_accuracy_energy(runs: list[RunSummary], path: Path) -> None:
    groups = by_dataset(runs)
    colour = colours(runs)
    n = len(groups)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.2 * cols, 5.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (dataset, members) in zip(axes.flat, groups.items()):
        plotted = [r for r in members if r.energy_mj is not None and r.fsnn_top1 is not None]
        skipped = [r.experiment for r in members if r not in plotted]
        energies = [r.energy_mj for r in plotted] + [r.dsnn_energy_mj for r in plotted if r.dsnn_energy_mj]
        if dataset == "imagenet":
            energies += [p["energy_mj"] for p in PAPER_IMAGENET]
        unit, scale = energy_unit(energies)
        xs: list[float] = []
        for r in plotted:
            c = colour[r.experiment]
            style = MARKERS["baseline"] if is_baseline(r) else MARKERS["fsnn"]
            face = "white" if is_baseline(r) else c
            x = r.energy_mj * scale
            ax.scatter([x], [r.fsnn_top1], color=face, edgecolors=c, linewidths=1.8, zorder=3, **style)
            xs.append(x)
            ax.annotate(r.experiment, (x, r.fsnn_top1), textcoords="offset points", xytext=(6, 7),
                        fontsize=8, color=c)
            if r.aap and r.dsnn_top1 is not None and r.dsnn_energy_mj is not None:
                xd = r.dsnn_energy_mj * scale
                ax.scatter([xd], [r.dsnn_top1], color=c, edgecolors=c, zorder=3, **MARKERS["dsnn"])
                ax.plot([x, xd], [r.fsnn_top1, r.dsnn_top1], color=c, linewidth=0.8, linestyle=":", zorder=2)
                xs.append(xd)
        if dataset == "imagenet":
            for p in PAPER_IMAGENET:
                x = p["energy_mj"] * scale
                ax.scatter([x], [p["top1"]], color="0.55", edgecolors="0.25", zorder=3, **MARKERS["paper"])
                ax.annotate(p["model"], (x, p["top1"]), textcoords="offset points", xytext=(7, 4),
                            fontsize=7.5, color="0.3")
                xs.append(x)
        positive = [x for x in xs if x > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))
        if xs:
            ax.margins(x=0.25, y=0.15)
            ax.autoscale_view()
            if ax.get_xscale() == "linear" and ax.get_xlim()[0] < 0 <= min(xs):
                ax.set_xlim(left=0)  # energy is never negative
        else:
            _empty(ax, "no experiment with both an export report\nand an accuracy")
        if skipped:
            ax.text(0.01, 0.01, "not plotted (no export/report.json or accuracy): " + ", ".join(skipped),
                    transform=ax.transAxes, fontsize=7.5, color="0.35", va="bottom", wrap=True)
        ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}: accuracy vs energy")
        ax.set_xlabel(f"energy per sample ({unit})  [4.6 pJ/MAC + 0.9 pJ/AC]")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3, which="both")
        handles = [
            Line2D([], [], linestyle="", marker="o", markersize=8, color="0.3", label="FSNN (deployable, AAP removed)"),
            Line2D([], [], linestyle="", marker="^", markersize=8, color="0.3", label="DSNN (AAP kept)"),
            Line2D([], [], linestyle="", marker="s", markersize=8, markerfacecolor="white", markeredgecolor="0.3",
                   markeredgewidth=1.8, label="baseline (ours)"),
        ]
        if dataset == "imagenet":
            handles.append(Line2D([], [], linestyle="", marker="*", markersize=12, color="0.55",
                                  markeredgecolor="0.25", label="paper reference (T=4)"))
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle("Accuracy against energy per sample (colour = experiment)", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ all
TRAINING_CURVES = "training_curves.png"
ACCURACY_ENERGY = "accuracy_vs_energy.png"
CURVES_DIR = "curves"


def plot_all(runs: list[RunSummary], plots_dir: Path) -> dict[str, str]:
    """Write every plot into plots_dir; returns {name: path relative to plots_dir's parent}."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    (plots_dir / CURVES_DIR).mkdir(exist_ok=True)
    written = {}
    plot_training_curves(runs, plots_dir / TRAINING_CURVES)
    written["training_curves"] = f"{plots_dir.name}/{TRAINING_CURVES}"
    plot_accuracy_energy(runs, plots_dir / ACCURACY_ENERGY)
    written["accuracy_vs_energy"] = f"{plots_dir.name}/{ACCURACY_ENERGY}"
    colour = colours(runs)
    for r in runs:
        name = f"{safe_name(r.experiment)}.png"
        plot_run_curves(r, colour[r.experiment], plots_dir / CURVES_DIR / name)
        written[f"curves/{r.experiment}"] = f"{plots_dir.name}/{CURVES_DIR}/{name}"
    return written
