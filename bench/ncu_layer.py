#!/usr/bin/env python3
"""Runs one preset's modular and monolithic forwards a few times each, in CUDA graphs as gpu_bench.py does,
with an L2 flush before each replay: a driver for Nsight Compute, which then sees the same kernel launches
the benchmark times, modular first.

  ncu --clock-control none -k regex:small_m --section SpeedOfLight -o REPORT \
      python3 bench/ncu_layer.py --lib build/libfusedmoe_c.so --model mixtral-8x7b-fp8 --tokens 16
"""
import argparse, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench as gb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    lib = gb.load_lib(args.lib)
    torch.manual_seed(0)
    p = gb.PRESETS[args.model]
    E, K, M = p["E"], p["K"], args.tokens
    w = gb.make_weights(p, 1234)
    bias = (torch.randn(E, device="cuda") * 0.1).float() if p["routing"] == "deepseek-v3" else None
    layers = [(kind, gb.create_layer(lib, p, w, bias, kind == "monolithic")) for kind in ("modular", "monolithic")]
    ws = torch.empty(max(lib.fmoe_layer_workspace_bytes(h, M) for _, h in layers), dtype=torch.uint8, device="cuda")
    hidden = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(M, E, device="cuda", dtype=torch.float32)
    out = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    err = gb.ctypes.create_string_buffer(4096)
    for kind, h in layers:
        def fm(which=h):
            if lib.fmoe_layer_forward(which, hidden.data_ptr(), logits.data_ptr(), out.data_ptr(), M, ws.data_ptr(),
                                      torch.cuda.current_stream().cuda_stream, err, 4096):
                raise RuntimeError(err.value.decode())
        replay = gb.graphed(fm)
        for _ in range(args.reps):
            flush.zero_()
            replay()
        torch.cuda.synchronize()
        print(f"{kind}: done", flush=True)
    for _, h in layers:
        lib.fmoe_layer_destroy(h)


if __name__ == "__main__":
    main()
