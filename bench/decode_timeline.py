#!/usr/bin/env python3
"""Kernel timeline of fusedmoe's CUDA forward: where a small batch's microseconds go.

Captures the forward (modular and monolithic) in a CUDA graph as gpu_bench.py does, replays it
with an L2 flush before each replay under torch.profiler (CUPTI kernel records), and prints per
kernel of the graph its mean start offset from the replay's first kernel, its mean duration, the
gap since the previous kernel ended and its own time (its end minus the previous kernel's end: what it
adds to the step; under programmatic dependent launch a kernel starts early and waits, so its duration
overstates it), then the replay's span, the sum of kernel times and of gaps, and the weight bytes of the
active experts over the span.

  python3 bench/decode_timeline.py --lib build/libfusedmoe_c.so [--models qwen3-30b-a3b] [--tokens 1,16]
"""
import argparse, collections, os, sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench as gb  # noqa: E402


def short(name):
    """A kernel's name without its namespace, template arguments and parameter list."""
    base = name.replace("(anonymous namespace)::", "").split("(")[0]
    depth, out = 0, ""
    for c in base:  # drop template arguments
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif depth == 0:
            out += c
    out = out.replace("void ", "").strip()
    return out.split("::")[-1] if "cutlass" not in name else "cutlass " + out.split("::")[-1]


def timeline(replay, reps):
    """Per replay, the list of (name, start_us, end_us) of its kernels, flush kernels left out."""
    # 256 MiB of f32 set to 1.0: PyTorch's fill kernel (at::native), never a memset, so that the replays' own memsets
    # (the CUTLASS path's) stay inside them
    flush = torch.empty(64 << 20, dtype=torch.float32, device="cuda")
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.fill_(1.0)
            torch.cuda.synchronize()
            replay()
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: e.time_range.start)
    runs, cur = [], []
    for e in kernels:
        name = e.name
        # The L2 flush between replays: PyTorch's fill kernel. Not "fill" alone (the CUTLASS path's own
        # fill_group_arguments kernel would split a replay in two), nor memsets (until session 60 the flush was a
        # zero_(), a memset, and a replay's own memset cut deepseek-v3's 8192-token replays short before its GEMMs).
        if "at::native" in name:
            if cur:
                runs.append(cur)
            cur = []
            continue
        cur.append((name, e.time_range.start, e.time_range.end))
    if cur:
        runs.append(cur)
    return [r for r in runs if r]


def report(title, runs):
    n = collections.Counter(len(r) for r in runs).most_common(1)[0][0]
    runs = [r for r in runs if len(r) == n]
    print(f"\n{title}: {len(runs)} replays of {n} kernels (means, us)")
    print(f"  {'kernel':44s} {'start':>8s} {'dur':>8s} {'gap':>7s} {'own':>8s}")
    span = sum(r[-1][2] - r[0][1] for r in runs) / len(runs)
    busy = gaps = 0.0
    for i in range(n):
        start = sum(r[i][1] - r[0][1] for r in runs) / len(runs)
        dur = sum(r[i][2] - r[i][1] for r in runs) / len(runs)
        gap = sum(r[i][1] - r[i - 1][2] for r in runs) / len(runs) if i else 0.0
        own = sum(r[i][2] - (r[i - 1][2] if i else r[0][1]) for r in runs) / len(runs)  # what it adds to the span
        busy += dur
        gaps += gap
        print(f"  {short(runs[0][i][0])[:44]:44s} {start:8.1f} {dur:8.1f} {gap:7.1f} {own:8.1f}")
    print(f"  span {span:.1f} us = kernels {busy:.1f} + gaps {gaps:.1f} (negative gaps: overlap under PDL)")
    return dict(span=span, busy=busy, gaps=gaps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--models", default="qwen3-30b-a3b,qwen3-30b-a3b-nvfp4,gpt-oss-120b,deepseek-v3")
    ap.add_argument("--tokens", default="1")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--kinds", default="modular,monolithic", help="the forwards to time, in this order")
    ap.add_argument("--router-skew", type=float, default=0.0,
                    help="as gpu_bench.py's: S x a fixed per-expert N(0,1) offset on the logits (0: uniform routing)")
    args = ap.parse_args()
    lib = gb.load_lib(args.lib)
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    err = gb.ctypes.create_string_buffer(4096)
    for name in args.models.split(","):
        p = gb.PRESETS[name]
        E, K = p["E"], p["K"]
        w = gb.make_weights(p, 1234)
        bias = (torch.randn(E, device="cuda") * 0.1).float() if p["routing"] == "deepseek-v3" else None
        layers = {kind: gb.create_layer(lib, p, w, bias, kind == "monolithic") for kind in args.kinds.split(",")}
        max_m = max(int(t) for t in args.tokens.split(","))
        ws = torch.empty(max(lib.fmoe_layer_workspace_bytes(h, max_m) for h in layers.values()), dtype=torch.uint8,
                         device="cuda")
        for M in (int(t) for t in args.tokens.split(",")):
            hidden = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            logits = torch.randn(M, E, device="cuda", dtype=torch.float32)
            gb.skew_logits(logits, args.router_skew)
            out = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
            ids, _ = gb.torch_route(p, logits, bias)
            active = int(ids.unique().numel())
            if args.router_skew:
                rows = torch.bincount(ids.reshape(-1), minlength=E).sort(descending=True).values.tolist()
                print(f"  rows per expert, most first: {rows[:16]}{' ...' if E > 16 else ''}")
            mb = active * gb.expert_bytes_of(p) / 1e6
            for kind, h in layers.items():
                def fm(which=h):
                    if lib.fmoe_layer_forward(which, hidden.data_ptr(), logits.data_ptr(), out.data_ptr(), M,
                                              ws.data_ptr(), torch.cuda.current_stream().cuda_stream, err, 4096):
                        raise RuntimeError(err.value.decode())
                r = report(f"{name} {kind} M={M} ({active} experts, {mb:.1f} MB of weights)",
                           timeline(gb.graphed(fm), args.reps))
                print(f"  weights at {mb / r['span']:.2f} TB/s over the span")
        for h in layers.values():
            lib.fmoe_layer_destroy(h)
        del w, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
