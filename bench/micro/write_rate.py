#!/usr/bin/env python3
"""The card's write-only and copy rates at the sizes a row gather or an activation pass moves, to tell whether
such a pass is bound by writes: for each size, torch `fill_` (writes only) and `copy_` (reads and writes) on uint8
tensors, timed with CUDA events after a 256 MB write to flush L2 (median of --reps). Session 50 (H200): a 59 MB
fill_ took 21.6 us (2.87 TB/s), which is deepseek-v3's 1024-token gather (59 MB of rows in ~23 us).
Usage: python3 bench/micro/write_rate.py [--reps 50] [--sizes-mb 33.5,59,117,1024]
"""
import argparse

import torch


def median_us(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        flush.fill_(1)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--sizes-mb", default="33.5,59,117,1024")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for mb in (float(x) for x in args.sizes_mb.split(",")):
        n = int(mb * 2**20) // 16 * 16
        a = torch.empty(n, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        w = median_us(lambda: a.fill_(3), args.reps)
        c = median_us(lambda: b.copy_(a), args.reps)
        print(f"{mb:8.1f} MB: write {w:7.1f} us {n / w / 1e6:5.2f} TB/s | copy {c:7.1f} us "
              f"{2 * n / c / 1e6:5.2f} TB/s (read + write)")


if __name__ == "__main__":
    main()
