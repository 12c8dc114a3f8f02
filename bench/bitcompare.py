#!/usr/bin/env python3
"""Bit-for-bit comparison of two fusedmoe libraries' forwards on the GPU: a kernel change that keeps the
order of every sum must leave the output unchanged. Same weights, inputs and logits (fixed seeds) for
both, each library in a process of its own (two copies of one library in a process could share symbols);
prints, per model, token count and path (modular, monolithic), the count of differing output values and the
largest absolute difference; exits 1 when any differs.

  python3 bench/bitcompare.py A.so B.so [--models gpt-oss-120b] [--tokens 1,2,3,16]
"""
import argparse, os, subprocess, sys, tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench as gb  # noqa: E402


def forward(lib, layer, hidden, logits, ws):
    out = torch.full_like(hidden, float("nan"))
    err = gb.ctypes.create_string_buffer(4096)
    if lib.fmoe_layer_forward(layer, hidden.data_ptr(), logits.data_ptr(), out.data_ptr(), hidden.shape[0],
                              ws.data_ptr(), torch.cuda.current_stream().cuda_stream, err, 4096):
        raise RuntimeError(err.value.decode())
    torch.cuda.synchronize()
    return out


def dump(lib_path, models, tokens, path):
    """Every output of one library, keyed by (model, path, tokens), saved with torch.save."""
    lib = gb.load_lib(lib_path)
    outs = {}
    for name in models:
        p = gb.PRESETS[name]
        w = gb.make_weights(p, 1234)
        gen = torch.Generator(device="cuda").manual_seed(7)
        bias = (torch.randn(p["E"], device="cuda", generator=gen) * 0.1).float() \
            if p["routing"] == "deepseek-v3" else None
        for mono in (False, True):
            layer = gb.create_layer(lib, p, w, bias, mono)
            ws = torch.empty(lib.fmoe_layer_workspace_bytes(layer, max(tokens)), dtype=torch.uint8, device="cuda")
            for M in tokens:
                hidden = torch.randn(M, p["K"], device="cuda", dtype=torch.bfloat16, generator=gen)
                logits = torch.randn(M, p["E"], device="cuda", dtype=torch.float32, generator=gen)
                outs[(name, "mono" if mono else "modular", M)] = forward(lib, layer, hidden, logits, ws).cpu()
            lib.fmoe_layer_destroy(layer)
    torch.save(outs, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib_a")
    ap.add_argument("lib_b")
    ap.add_argument("--models", default="gpt-oss-120b,qwen3-30b-a3b-nvfp4")
    ap.add_argument("--tokens", default="1,2,3,4,16,64")
    ap.add_argument("--dump", help=argparse.SUPPRESS)  # internal: run lib_a only, save its outputs here
    args = ap.parse_args()
    models, tokens = args.models.split(","), [int(t) for t in args.tokens.split(",")]
    if args.dump:
        return dump(args.lib_a, models, tokens, args.dump)
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"{i}.pt") for i in range(2)]
        for lib, f in zip((args.lib_a, args.lib_b), files):
            subprocess.run([sys.executable, __file__, lib, lib, "--models", args.models, "--tokens", args.tokens,
                            "--dump", f], check=True)
        a_all, b_all = (torch.load(f) for f in files)
    bad = 0
    for key, a in a_all.items():
        b = b_all[key]
        n = int((a.view(torch.int16) != b.view(torch.int16)).sum())
        nan = int(a.isnan().sum() + b.isnan().sum())
        bad += n > 0 or nan > 0
        diff = (a.float() - b.float()).abs().nan_to_num(0)
        print(f"{key[0]:22s} {key[1]:8s} M={key[2]:<5d} differing={n:<7d} nan={nan:<4d} "
              f"max|diff|={float(diff.max()):.3g}")
    print("bit-equal" if not bad else f"{bad} cases differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
