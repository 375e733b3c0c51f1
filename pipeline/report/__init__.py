"""Reporting across experiments: read run directories (metrics.json, config.yaml, export/report.json, eval.json),
build the paper-style table (markdown, CSV, JSON) and the plots (training curves of both streams, accuracy against
energy with baselines marked). `dst report` (pipeline/commands/report.py) composes these.

    runs = [read_run(Path(d)) for d in run_dirs]      # pipeline.report.runs
    write_tables(runs, out_dir)                       # pipeline.report.tables
    plot_all(runs, out_dir / "plots")                 # pipeline.report.plots

Captions for Snakemake's `report()` flag live in pipeline/report/captions/*.rst (see CAPTIONS).
"""
from pathlib import Path

CAPTIONS = Path(__file__).resolve().parent / "captions"
