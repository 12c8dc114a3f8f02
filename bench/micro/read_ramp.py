#!/usr/bin/env python3
"""How fast one pass over N bytes of weights can be on this card, by size: the decode floor's copy rate is
measured on a large copy, and a decode step's weights (qwen3-30b-a3b at 1 token: 75 MB) are small enough that
a kernel's ramp-up and tail count. For each size, with L2 flushed before every timed run (CUDA events,
median of --reps):
  - sum: torch.sum over a bf16 tensor of N bytes (a read-only pass, one launch);
  - bmm: cuBLAS batched GEMV, E experts' [R, K] bf16 matrices times one token each (R*K*2*E = N bytes),
    the decode GEMM without routing;
and the rate in TB/s, after either of gpu_bench.py's flushes (its time_us and flush_l2): writing the flush buffer
(L2 left full of dirty lines, which the timed pass then writes back) and reading it (L2 left clean). Usage: python3 bench/micro/read_ramp.py [--reps 20]
"""
import argparse, os, sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpu_bench as gb  # noqa: E402  (time_us and its flush_l2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'flush':>6} {'MB':>7} {'sum µs':>8} {'TB/s':>6} {'bmm µs':>8} {'TB/s':>6}  bmm shape")
    # (experts, rows, k): qwen3-30b-a3b's GEMM1 / GEMM2 at 1 token, both, and larger passes; the last two are the
    # whole layers of qwen3-30b-a3b (every expert active from ~128 tokens) and mixtral-8x7b (from ~16 tokens).
    for e, r, k in ((8, 768, 2048), (8, 1536, 2048), (8, 2304, 2048), (16, 2304, 2048), (2, 28672, 4096),
                    (4, 28672, 4096), (128, 2304, 2048), (8, 43008, 4096)):
        n = e * r * k * 2
        x = torch.randn(n // 2, device="cuda", dtype=torch.bfloat16)
        w = x.view(e, r, k)
        v = torch.randn(e, k, 1, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(e, r, 1, device="cuda", dtype=torch.bfloat16)
        acc = torch.empty((), device="cuda", dtype=torch.float32)
        for name in ("write", "read"):  # gpu_bench.py's --flush modes
            gb.FLUSH_MODE = name
            t_sum = gb.time_us(lambda: torch.sum(x, dim=0, dtype=torch.float32, out=acc), args.reps)
            t_bmm = gb.time_us(lambda: torch.bmm(w, v, out=out), args.reps)
            print(f"{name:>6} {n / 1e6:7.1f} {t_sum:8.1f} {n / t_sum / 1e6:6.2f} {t_bmm:8.1f} {n / t_bmm / 1e6:6.2f}  "
                  f"[{e}, {r}, {k}]")
        del x, w, v, out


if __name__ == "__main__":
    main()
