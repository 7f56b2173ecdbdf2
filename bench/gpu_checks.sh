#!/usr/bin/env bash
# On a machine with a CUDA GPU, from the repository root: the backend tests
# with their arrays on the GPU (Triton kernels compiled, not interpreted;
# float16 and bfloat16 too), then the report workloads checked and timed
# there (bench/bench_gpu.py).
#
#   bash bench/gpu_checks.sh [OUT_DIR]      # OUT_DIR: results/ by default
#
# Writes OUT_DIR/gpu_tests.xml (JUnit) and bench_gpu.py's gpu_<name>.csv/.md.
# PYTHON names the interpreter (default: python); GPU_CHECKS_STAGE_LIMIT, in
# seconds, bounds each part (default: none). Exit status: nonzero if either
# part failed.
set -uo pipefail
out=${1:-results}
mkdir -p "$out"
py=${PYTHON:-python}
limit=${GPU_CHECKS_STAGE_LIMIT:-0}
export EINLOCAL_TEST_DEVICE=cuda TRITON_INTERPRET=0 JAX_ENABLE_X64=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
workers=""
$py -c "import xdist" 2>/dev/null && workers="-n 8"      # compiling kernels is most of the time
timeout "$limit" $py -m pytest -q -p no:cacheprovider $workers -rfs --junitxml="$out/gpu_tests.xml" \
    tests/test_backends.py tests/test_loops_triton.py tests/test_split_reduction.py \
    "tests/test_torch_layers.py::test_cuda"
tests=$?
timeout "$limit" $py bench/bench_gpu.py --out "$out"
bench=$?
exit $(( tests != 0 || bench != 0 ))
