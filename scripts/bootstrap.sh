#!/usr/bin/env bash
# Create .venv with everything the project needs, from the project's own files. Idempotent: make calls it only
# when pyproject.toml or constraints.txt changed since the last install.
#   - Debian packages: FFCV compiles against libturbojpeg and OpenCV; the SLURM tests need slurm-wlm + munge; the
#     MLflow UI test needs chromium. Installed when running as root and missing; otherwise the apt command is printed.
#   - Python: pip install -c constraints.txt -e '.[test,triton]' (torch pinned to the CPU build 2.13.0). Triton is
#     there so that the GPU kernels are tested on CPU too, through its interpreter (tests/test_kernels_triton.py);
#     nothing imports it on CPU otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config g++ slurm-wlm slurmd slurmctld munge chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing Debian packages; install them with:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# numpy first: FFCV's sdist build imports it.
"$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0" numpy
"$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[test,triton]'
# Norse reads NIR files for `dst export`'s check (dst/export/nir_run.py). It declares torchvision, which pulls a CUDA
# torch and which Norse's NIR import never uses: installed without its dependencies (nir and nirtorch come above).
"$VENV/bin/python" -m pip install -q -c constraints.txt --no-deps norse
echo "bootstrap: $VENV ready"
