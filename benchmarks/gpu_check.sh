#!/usr/bin/env bash
# The device checks of issue 18, for a session that has a CUDA GPU (H100/H200): about 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # writes its logs to $OUT (default /tmp/gpu_check)
#
# 1. the CUDA tests: training on the GPU, keyed draws in torch on the GPU equal to NumPy's,
#    compiled rounds equal eager ones, bf16 tolerance;
# 2. bench_fit.py on cuda, 51k MLP (64-192-192-10), 10 / 100 / 1,000 / 10,000 clients a round: fit
#    with the defaults as a short fit ("defaults": 13 rounds, compile="auto" does not compile) and
#    as a long one ("defaults-long": 2,000 rounds planned, stopped after 13: compile="auto"
#    compiles), beside run_round and the fastest loop (extrapolated above 100 clients), with the
#    breakdown; the compile time is in "first rounds";
# 3. 10,000 clients a round of a ~200k-parameter MLP (784-200-200-10), compiled, fp32 and bf16,
#    against the memory-traffic floor (--bandwidth 4.8 TB/s: H200; use 3.35 on an H100 SXM).
# Each step has its own time limit, so the later ones still run when an earlier one overruns.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
OUT="${OUT:-/tmp/gpu_check}"
BANDWIDTH="${BANDWIDTH:-4.8}"
mkdir -p "$OUT"
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s in)"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

step "CUDA tests"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_torch_draws.py \
    tests/test_compiling.py tests/test_precision.py 2>&1 | tail -15 | tee "$OUT/tests.txt"

step "bench_fit, 51k MLP, 10 / 100 / 1,000 / 10,000 clients a round"
timeout 240 python benchmarks/bench_fit.py --device cuda --clients 10,100,1000,10000 --population 10000 \
    --mlp-hidden 192,192 --variants defaults,defaults-long --rounds 10 --warmup 3 2>&1 | tee "$OUT/bench_fit_51k.txt"

step "bench_fit, ~200k MLP, 10,000 clients a round, fp32 and bf16 against the memory floor"
timeout 120 python benchmarks/bench_fit.py --device cuda --clients 10000 --population 10000 --mlp-features 784 \
    --mlp-hidden 200,200 --variants defaults-long,compile+bf16 --rounds 5 --warmup 2 --no-loop \
    --bandwidth "$BANDWIDTH" 2>&1 | tee "$OUT/bench_fit_200k.txt"

step "done"
