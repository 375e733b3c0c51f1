"""dst's OpenMP spin default (dst/__init__.py): set when dst is imported before torch (as the `dst` command does),
never over the user's own setting, and not once torch has loaded OpenMP (it would no longer apply)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dst

PROBE = "import os, sys; {imports}; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def _probe(imports: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env={**base, **env},
                         capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip()


@pytest.mark.parametrize("imports,env,expected", [
    ("import dst", {}, f"{dst.OPENMP_SPIN} False"),
    ("import pipeline.cli", {}, f"{dst.OPENMP_SPIN} False"),          # the `dst` command's entry point
    ("import dst.models; import torch", {}, f"{dst.OPENMP_SPIN} True"),
    ("import dst", {"GOMP_SPINCOUNT": "77"}, "77 False"),
    ("import dst", {"OMP_WAIT_POLICY": "ACTIVE"}, "None False"),
    ("import torch; import dst", {}, "None True"),
], ids=["dst", "dst-command", "dst-then-torch", "user-spincount", "user-wait-policy", "torch-first"])
def test_spin_default(imports, env, expected):
    assert _probe(imports, **env) == expected
