"""Numba's thread pool for the CPU kernels (dst/kernels/numba/threads.py): numba's default layer and a user's choice
kept, and a forked child of a GNU-OpenMP parent running the serial builds instead of aborting.

Each case runs in a fresh interpreter: numba picks its threading layer once per process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dst import kernels

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not kernels.available()["numba"], reason="numba is not installed")

# Large enough for the parallel kernels (numba_threads.PARALLEL_MIN_ELEMENTS)
RUN_NEURON = """
import torch
from dst.neuron import MultiStepLIF
torch.manual_seed(0)
x = torch.randn(4, 8, 64, 32, 32)
g = torch.randn_like(x)

def spikes_and_grad():
    xx = x.clone().requires_grad_(True)
    y = MultiStepLIF()(xx)
    y.backward(g)
    return y.detach(), xx.grad
"""


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env,
                          timeout=120)


def layer_available(name: str) -> bool:
    module = {"omp": "omppool", "tbb": "tbbpool"}[name]
    return run_python(f"from numba.np.ufunc import {module}").returncode == 0


def test_the_kernels_keep_numbas_default_layer():
    if not layer_available("tbb"):
        pytest.skip("numba has no TBB layer here")
    r = run_python(RUN_NEURON + "spikes_and_grad()\nimport numba\nprint(numba.threading_layer())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tbb"]


def test_a_layer_the_user_chose_is_kept():
    if not layer_available("omp"):
        pytest.skip("numba has no OpenMP layer here")
    r = run_python(RUN_NEURON + "spikes_and_grad()\nimport numba\nprint(numba.threading_layer())",
                   NUMBA_THREADING_LAYER="omp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["omp"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_child_of_a_gnu_omp_parent_runs_the_kernels():
    """Without the serial builds numba kills the child ("fork() called from a process already using GNU OpenMP")."""
    if not layer_available("omp"):
        pytest.skip("numba has no OpenMP layer here")
    code = RUN_NEURON + """
import os
from dst.kernels.numba import threads as numba_threads
y, gx = spikes_and_grad()                      # the parent starts numba's pool on the omp layer (the user's choice)
assert not numba_threads.serial_only()
pid = os.fork()
if pid == 0:
    try:
        # torch's own OpenMP pool hangs in a forked child: one thread, as torch's DataLoader workers do
        torch.set_num_threads(1)
        yc, gxc = spikes_and_grad()
        ok = numba_threads.serial_only() and torch.equal(yc, y) and torch.allclose(gxc, gx, rtol=1e-6, atol=1e-7)
        os._exit(0 if ok else 3)
    except BaseException:
        os._exit(4)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    r = run_python(code, NUMBA_THREADING_LAYER="omp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0"], r.stdout + r.stderr
