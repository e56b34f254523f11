#!/usr/bin/env bash
# The last call of the GPU runbook (docs/benchmarks.md, "GPU"), run on the device machine:
# receive the last part, join and verify the wheels (onnxruntime-gpu, pydantic and its
# requirements: bench/gpu_wheel.py), install them beside the machine's own packages, then run
# the check with them.
#
#   bash bench/gpu_device.sh PART_DIR OUT_DIR [bench/gpu_check.py options]
#
# PART_DIR "-": no part to receive (a rerun on a machine that already has the wheels installed).
# GPU_PYTHON (python3), GPU_STASH (/tmp/ortgpu: the parts) and GPU_SITE (/tmp/ortgpu-site: the
# install) can be changed for a rehearsal elsewhere.
set -euo pipefail
part=$1 out=$2
shift 2
python=${GPU_PYTHON:-python3}
stash=${GPU_STASH:-/tmp/ortgpu}
site=${GPU_SITE:-/tmp/ortgpu-site}
cd "$(dirname "$0")/.."

if [ ! -f "$site/.installed" ]; then
    [ "$part" = "-" ] || "$python" bench/gpu_wheel.py receive "$part" "$stash"
    "$python" bench/gpu_wheel.py join "$stash" "$stash/wheel"
    # --no-deps: the wheels are pydantic's whole closure, and onnxruntime-gpu's requirements
    # are the machine's own (docs/benchmarks.md)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$stash"/wheel/*.whl
    touch "$site/.installed"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" -c "import onnxruntime as o, pydantic as p
for m in (o, p): print(m.__name__, m.__version__, m.__file__)"
mkdir -p "$out"
"$python" bench/gpu_check.py "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
