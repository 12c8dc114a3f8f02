#!/usr/bin/env python3
"""A model, on the CPU, of a finalize fused into the persistent fp4 GEMM2 at large batches: each (token, 128-column
slab) is reduced by whichever GEMM2 unit writes its last row (a counter per token and slab; the sum in slot order, so
the output keeps its bits). How much of the finalize pass (measured: 74 us of qwen3-nvfp4's 1175 us at 8192 tokens,
at 84.5% of DRAM peak; bench/results/gpu-h200-session56-2026-12-04.md) would that take off the step?

It routes the tokens at random (top-k of uniform scores, as gpu_bench.py's random logits), cuts each expert's rows
into 256-row plan items (an expert's last 1-32 rows ride on the item before as its tail, as item_rows does), lays
the units (item x slab) out in the persistent kernel's claim order, runs them in waves of one unit per SM at a
constant unit time (GEMM2's measured time over the waves), and finds when each (token, slab) gets its last row.
The reduce reads k rows of the slab and writes one; the DRAM serves it with what GEMM2's own traffic (h2 read, y
written) leaves of the finalize's measured rate. The backlog left when GEMM2 ends is what remains of the pass.

  python3 bench/micro/fused_finalize_model.py [--tokens 8192 --experts 128 --top-k 8 --hidden 2048 --inter 768]

Orders: "expert" (the kernel's: an item's slabs in a row, items in expert order) and "item" (every expert's first
item, then every second one, ...), which spreads the tokens' last rows over the kernel at the cost of reading
each expert's weights once per item instead of once.
"""
import argparse

import numpy as np


def plan_items(rows_of, tile=256, tail=32):
    """(expert, item index, rows) per plan item, an expert's last <= tail rows riding on the full item before."""
    out = []
    for e, rows in enumerate(rows_of):
        q, first = 0, 0
        while first < len(rows):
            left = len(rows) - first
            take = left if left <= tile + tail else tile
            out.append((e, q, rows[first:first + take]))
            first += take
            q += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--gemm2-us", type=float, default=361.0, help="GEMM2's measured time")
    ap.add_argument("--finalize-us", type=float, default=74.0, help="the finalize pass's measured time")
    ap.add_argument("--dram", type=float, default=4.07e12, help="the finalize's measured DRAM rate, bytes/s")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    T, E, k, N, I = a.tokens, a.experts, a.top_k, a.hidden, a.inter
    slab, slabs = 128, (a.hidden + 127) // 128
    rng = np.random.default_rng(a.seed)
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]
    rows_of = [np.nonzero((ids == e).any(axis=1))[0] for e in range(E)]  # tokens of each expert, ascending
    own_rate = (T * k * I * 2 + T * k * N * 2) / (a.gemm2_us * 1e-6)  # GEMM2's own DRAM bytes/s
    per_task = (k + 1) * slab * 2  # k rows of the slab read, one written (bf16)
    for order in ("expert", "item"):
        items = plan_items(rows_of)
        items.sort(key=(lambda it: (it[0], it[1])) if order == "expert" else (lambda it: (it[1], it[0])))
        units = [(i, s) for i in range(len(items)) for s in range(slabs)]
        unit_us = a.gemm2_us * a.sms / len(units)
        last = np.zeros((T, slabs))
        for u, (i, s) in enumerate(units):
            toks = items[i][2]
            last[toks, s] = np.maximum(last[toks, s], (u // a.sms + 1) * unit_us)
        bins = 36
        hist, edges = np.histogram(last.ravel(), bins=bins, range=(0.0, a.gemm2_us))
        step = (edges[1] - edges[0]) * 1e-6
        backlog = 0.0
        for h in hist:
            backlog = max(0.0, backlog + h * per_task - (a.dram - own_rate) * step)
        left_us = backlog / a.dram * 1e6
        print(f"order {order:6s}: {len(units)} units; GEMM2's own DRAM traffic {own_rate / 1e12:.2f} TB/s; "
              f"{hist[-bins // 10:].sum() / hist.sum():.0%} of the reduce work in GEMM2's last tenth; "
              f"{left_us:.1f} us of it left after GEMM2: {a.finalize_us - left_us:.1f} of {a.finalize_us:.0f} us saved")


if __name__ == "__main__":
    main()
