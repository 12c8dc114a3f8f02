#!/usr/bin/env python3
"""How fast one pass over N bytes of weights can be on this card, by size: the decode floor's copy rate is
measured on a large copy, and a decode step's weights (qwen3-30b-a3b at 1 token: 75 MB) are small enough that
a kernel's ramp-up and tail count. For each size, with L2 flushed before every timed run (CUDA events,
median of --reps):
  - sum: torch.sum over a bf16 tensor of N bytes (a read-only pass, one launch);
  - bmm: cuBLAS batched GEMV, E experts' [R, K] bf16 matrices times one token each (R*K*2*E = N bytes),
    the decode GEMM without routing;
and the rate in TB/s, after two flushes: writing the flush buffer (L2 left full of dirty lines, which the timed
pass then writes back) and reading it (L2 left clean). Usage: python3 bench/micro/read_ramp.py [--reps 20]
"""
import argparse

import torch


def timed(fn, flush, reps):
    times = []
    for _ in range(reps):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    buf = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
    sink = torch.empty((), device="cuda", dtype=torch.int64)
    flushes = {"write": lambda: buf.zero_(),  # leaves L2 full of dirty lines (triton.testing.do_bench's flush)
               "read": lambda: torch.sum(buf.view(torch.int64), dim=0, out=sink)}  # leaves it full of clean ones
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'flush':>6} {'MB':>7} {'sum µs':>8} {'TB/s':>6} {'bmm µs':>8} {'TB/s':>6}  bmm shape")
    # (experts, rows, k): qwen3-30b-a3b's GEMM1 / GEMM2 at 1 token, both, and larger passes.
    for e, r, k in ((8, 768, 2048), (8, 1536, 2048), (8, 2304, 2048), (16, 2304, 2048), (2, 28672, 4096),
                    (4, 28672, 4096)):
        n = e * r * k * 2
        x = torch.randn(n // 2, device="cuda", dtype=torch.bfloat16)
        w = x.view(e, r, k)
        v = torch.randn(e, k, 1, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(e, r, 1, device="cuda", dtype=torch.bfloat16)
        acc = torch.empty((), device="cuda", dtype=torch.float32)
        for _ in range(3):
            torch.sum(x, dim=0, dtype=torch.float32, out=acc)
            torch.bmm(w, v, out=out)
        for name, flush in flushes.items():
            t_sum = timed(lambda: torch.sum(x, dim=0, dtype=torch.float32, out=acc), flush, args.reps)
            t_bmm = timed(lambda: torch.bmm(w, v, out=out), flush, args.reps)
            print(f"{name:>6} {n / 1e6:7.1f} {t_sum:8.1f} {n / t_sum / 1e6:6.2f} {t_bmm:8.1f} {n / t_bmm / 1e6:6.2f}  "
                  f"[{e}, {r}, {k}]")
        del x, w, v, out


if __name__ == "__main__":
    main()
