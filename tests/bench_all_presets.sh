#!/usr/bin/env bash
# Runs fusedmoe-bench on every preset x quant scheme with 4 experts (so every preset fits in
# CI's memory); each run exits non-zero if its output leaves the reference tolerance. One timed
# forward per count (--iters 1): this is a correctness run, and the timing loop took most of its time.
set -euo pipefail
bench="$1"
models="mixtral-8x7b qwen3-30b-a3b qwen3-235b-a22b deepseek-v3 gpt-oss-120b llama4-scout"
quants="bf16 fp8-tensor fp8-channel fp8-block nvfp4 mxfp4"
for model in $models; do
  for quant in $quants; do
    echo "== $model $quant"
    "$bench" --model "$model" --quant "$quant" --num-experts 4 --tokens 1,3 --iters 1 2>/dev/null |
      tail -n +4 | head -n 2
  done
done
