#!/usr/bin/env python3
"""Does splitting one GEMM into many expert groups cost the grouped GEMMs speed? Builds, for one model's
shapes, layers whose GEMMs do the same total work, and replays each modular forward in a CUDA graph after an
L2 flush:
  - the model itself at T tokens (E groups of about T·k/E rows);
  - the model's shapes with plain top-k routing and every expert given T·k/E rows exactly (no partly filled
    tiles where that is a multiple of the tile's rows);
  - the same K and I with 8 experts and top-8 at T·k/8 tokens (8 groups of T·k/8 rows);
  - 1 expert with top-1 at T·k tokens (one group).
Run it under Nsight Compute and compare the CUTLASS kernels' times (two per forward, three replays each):

  ncu --clock-control none -k regex:device_kernel --metrics gpu__time_duration.sum --csv \
      python3 bench/micro/grouping_cost.py --lib LIB --model qwen3-30b-a3b --tokens 8192
"""
import argparse, os, sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpu_bench as gb  # noqa: E402


def run(lib, p, tokens, label, balanced=False):
    E, K = p["E"], p["K"]
    w = gb.make_weights(p, 1234)
    bias = (torch.randn(E, device="cuda") * 0.1).float() if p["routing"] == "deepseek-v3" else None
    h = gb.create_layer(lib, p, w, bias, False)
    ws = torch.empty(lib.fmoe_layer_workspace_bytes(h, tokens), dtype=torch.uint8, device="cuda")
    hidden = torch.randn(tokens, K, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(tokens, E, device="cuda", dtype=torch.float32)
    if balanced:  # token t's top k are experts (k*t + j) mod E: every expert gets tokens*k/E rows exactly
        k = p["k"]
        ids = (torch.arange(tokens, device="cuda")[:, None] * k + torch.arange(k, device="cuda")) % E
        logits.scatter_(1, ids, 10.0 + torch.rand(tokens, k, device="cuda"))
    out = torch.empty(tokens, K, device="cuda", dtype=torch.bfloat16)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    err = gb.ctypes.create_string_buffer(4096)

    def fm():
        if lib.fmoe_layer_forward(h, hidden.data_ptr(), logits.data_ptr(), out.data_ptr(), tokens, ws.data_ptr(),
                                  torch.cuda.current_stream().cuda_stream, err, 4096):
            raise RuntimeError(err.value.decode())

    replay = gb.graphed(fm)
    for _ in range(2):
        flush.zero_()
        replay()
    torch.cuda.synchronize()
    print(f"{label}: E={E} k={p['k']} tokens={tokens} done", flush=True)
    lib.fmoe_layer_destroy(h)
    del w, ws
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    lib = gb.load_lib(args.lib)
    torch.manual_seed(0)
    p = gb.PRESETS[args.model]
    plain = {k: v for k, v in p.items() if k not in ("groups", "topk_group", "scaling")}
    plain["routing"] = "softmax-topk-renormalize"
    run(lib, p, args.tokens, "model")
    run(lib, plain, args.tokens, "model, balanced", balanced=True)
    run(lib, {**plain, "E": 8, "k": 8}, args.tokens * p["k"] // 8, "8 groups")
    run(lib, {**plain, "E": 1, "k": 1}, args.tokens * p["k"], "1 group")


if __name__ == "__main__":
    main()
