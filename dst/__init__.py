"""Dual-Stream Training (DST) for Full-Spike Neural Networks, in plain PyTorch.

    from dst.models import create_model
    model = create_model("fsnn_resnet18", T=4, connect="IAND", aap=True)
    logits = model(images)            # StreamLogits(fsnn=z_F, dsnn=z_A) while the AAP is present
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP spin. After each parallel torch op, GNU OpenMP's idle workers spin for GOMP_SPINCOUNT iterations (300000 by
# default, milliseconds) before they sleep. The fused neuron kernels run on numba's own threads, which then share the
# cores with those spinning workers, so a CPU training step is slower (benchmarks/results/design-measurements.md).
# libgomp reads the variable once, when torch loads it, so it is set only if dst is imported before torch (the `dst`
# command does), and never over the user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY.
OPENMP_SPIN = "3000"
if "torch" not in _sys.modules and "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN
