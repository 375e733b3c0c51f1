"""The Snakemake profile decides where training runs: under slurm/ every demo experiment (whose files say
launcher.cluster: local) trains on SLURM, under profiles/local/ on this machine, and a workflow override naming a
cluster beats both. A bad or missing training_cluster is one error naming the key, before any job is planned.

Dry runs (`snakemake -n -p`) on the real Snakefile; each train rule's `dst launch` command line is read back through
the config loader `dst launch` uses, so what is checked is the cluster the launch would get."""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from pipeline.config import load_config
from support import ROOT, demo_workflow, snakemake

PROFILES = {"slurm": "slurm", "local": "profiles/local"}
DEMO = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["experiments"]


def launched_clusters(output: str) -> dict[str, str]:
    """experiment name -> the launcher.cluster of its `dst launch` command in a dry run's output."""
    clusters = {}
    for line in output.splitlines():
        if "dst launch --config" not in line:
            continue
        command = line[line.index("dst launch"):].split(" > ")[0]
        command = re.sub(r"\$\(cat [^)]*\)", "ab" * 16, command)  # the parent run's id, known at run time
        args = shlex.split(command)[2:]
        assert args[0] == "--config", command
        cfg = load_config(args[1], args[2:])
        clusters[cfg.name] = cfg.launcher.cluster
    return clusters


def test_the_demo_experiment_files_pin_the_local_cluster():
    # What makes the slurm case below mean something: the files alone would train locally.
    assert {load_config(ROOT / spec["config"]).launcher.cluster for spec in DEMO.values()} == {"local"}


@pytest.mark.parametrize("profile, overrides, expected", [
    ("slurm", [], "slurm"),
    ("local", [], "local"),
    ("slurm", ["launcher.cluster=local"], "local"),  # a user's override names a cluster: it wins
    ("local", ["trainer.epochs=1", "launcher.cluster=slurm"], "slurm"),
])
def test_the_profile_decides_where_training_runs(tmp_path, profile, overrides, expected):
    proc = snakemake(PROFILES[profile], tmp_path, demo_workflow(tmp_path, "profiles", overrides), "-n", "-p")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert launched_clusters(proc.stdout + proc.stderr) == {exp: expected for exp in DEMO}


@pytest.mark.parametrize("config, error", [
    ("training_cluster=cloud", "training_cluster: 'cloud' is not one of slurm, local"),
    # A --config on the command line replaces the profile's config entries, training_cluster with them.
    ("campaign=profiles", "training_cluster is not set."),
])
def test_a_bad_or_missing_training_cluster_is_one_error_naming_it(tmp_path, config, error):
    proc = snakemake("slurm", tmp_path, demo_workflow(tmp_path, "profiles"), "-n", "-p", "--config", config)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    mentions = [line for line in output.splitlines() if "training_cluster" in line]
    assert len(mentions) == 1 and mentions[0].startswith(error), output[-3000:]
    assert "dst launch" not in output
