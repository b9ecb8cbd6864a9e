#!/usr/bin/env bash
# One H100/H200, under 8 minutes: correctness of every plan on small models, then throughput of a
# Llama-3.1-8B-shaped model (random bf16 weights) at T=8192 on Pile-like document lengths.
# Run from the repository root on the lent GPU:  bash benchmarks/gpu.sh   (results under $OUT)
# The GPU machine reaches no package index: to check the Cut Cross-Entropy loss kernel too, download its wheel here
# first (pip download --no-deps cut-cross-entropy==25.1.1 -d benchmarks/wheels) and carry benchmarks/wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
# One budget for the three stages (a cold machine compiles kernels first: how long each stage takes is not known in
# advance). Each stage may use what the earlier ones left, less a reserve for the stages after it.
BUDGET=${BUDGET:-480}
stage_limit() {  # stage_limit CAP RESERVE: seconds this stage may run
    local left=$((BUDGET - SECONDS - $2))
    echo $((left < $1 ? (left > 10 ? left : 10) : $1))
}
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then  # Triton comes with PyTorch's CUDA builds
    python3 -m pip install -q --no-deps --no-index benchmarks/wheels/*.whl 2>&1 | tail -1
fi
timeout "$(stage_limit 150 330)" python3 benchmarks/gpu_check.py --device cuda 2>&1 | tee "$OUT/check.txt"
# 64k tokens per batch (8 rows of 8192) for dense/nomask/flex; the docs plan gets the same token budget; the
# seed-style baseline (bf16 here) one row at a time, as its (1,H,T,T) mask and [T,V] logits allow.
timeout "$(stage_limit 300 100)" python3 benchmarks/throughput.py --arch llama-3.1-8b --device cuda \
    --seq-len 8192 --tokens 196608 --batch-size 8 --seed-batch-size 1 --dtypes bfloat16 --json "$OUT/throughput.json" \
    --variants seed-style:block,dense:block,docs:block,varlen:block,flex:block,dense:causal,nomask:causal \
    2>&1 | tee "$OUT/throughput.txt"
# --compile (each decoder layer compiled; its warm-up pass pays the compile) against the same plans eager; it gets
# what is left of the budget, as a cold machine's compiles take longest
timeout "$(stage_limit 300 0)" python3 benchmarks/throughput.py --arch llama-3.1-8b --device cuda \
    --seq-len 8192 --tokens 65536 --batch-size 8 --skip-seed --dtypes bfloat16 --json "$OUT/throughput_compile.json" \
    --variants docs:block,docs+compile:block,varlen+compile:block 2>&1 | tee "$OUT/throughput_compile.txt"
