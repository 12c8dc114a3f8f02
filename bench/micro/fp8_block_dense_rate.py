#!/usr/bin/env python3
"""What rate a dense fp8 GEMM with DeepSeek-V3's block scales (1x128 on the activations, 128x128 on the weights)
reaches on this card, against the same GEMM with one scale per tensor: cuBLASLt through torch's scaled matmul, on
deepseek-v3's two expert GEMM shapes (N x K = 4096 x 7168 and 7168 x 2048) with the rows of its 8192-token batch
(65536) and fewer. It tells how far a block-scaled mainloop can go on Hopper, against which fusedmoe's grouped
CUTLASS blockwise GEMMs (about 57% of the per-tensor rate at 8192 tokens, session 61) can be read. Times: median of
--reps after gpu_bench.py's L2 flush, each from idle as gpu_bench times its points.
Usage: python3 bench/micro/fp8_block_dense_rate.py [--reps 20]
"""
import argparse, os, sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpu_bench as gb  # noqa: E402  (time_us and its flush)


def block_scaled_mm():
    """A callable (a, w, a_scale, w_scale) -> bf16 for block scales, or None with the reason."""
    F = torch.nn.functional
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        st = F.ScalingType

        def run(a, w, a_scale, w_scale):
            return F.scaled_mm(a, w.t(), a_scale, st.BlockWise1x128, w_scale.t(), st.BlockWise128x128,
                               output_dtype=torch.bfloat16)
        return run, "torch.nn.functional.scaled_mm"

    def run_legacy(a, w, a_scale, w_scale):
        return torch._scaled_mm(a, w.t(), a_scale, w_scale.t(), out_dtype=torch.bfloat16)
    return run_legacy, "torch._scaled_mm"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    run, api = block_scaled_mm()
    print(f"block-scaled call: {api}")
    print(f"{'M':>6} {'N':>5} {'K':>5} {'tensor µs':>10} {'TFLOP/s':>8} {'block µs':>9} {'TFLOP/s':>8} {'block/tensor':>12}")
    e4m3 = torch.float8_e4m3fn
    for m, n, k in ((65536, 4096, 7168), (16384, 4096, 7168), (4096, 4096, 7168), (65536, 7168, 2048),
                    (16384, 7168, 2048)):
        a = (torch.randn(m, k, device="cuda") * 0.5).to(e4m3)
        w = (torch.randn(n, k, device="cuda") * 0.5).to(e4m3)
        one = torch.ones((), device="cuda")
        tensor_us = gb.time_us(lambda: torch._scaled_mm(a, w.t(), one, one, out_dtype=torch.bfloat16), args.reps)
        # 1x128 activation scales outer-dim major ([M, K/128] with stride 1 along M); weight scales [N/128, K/128]
        a_scale = (torch.rand(m, k // 128, device="cuda") + 0.5).t().contiguous().t()
        w_scale = torch.rand(n // 128, k // 128, device="cuda") + 0.5
        flop = 2.0 * m * n * k
        try:
            out = run(a, w, a_scale, w_scale)
            ref_rows = 256  # a spot check of the first rows against a float product
            af = a[:ref_rows].float() * a_scale[:ref_rows].repeat_interleave(128, dim=1)
            wf = w.float() * w_scale.repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)
            err = ((out[:ref_rows].float() - af @ wf.t()).abs().max() / (af @ wf.t()).abs().max()).item()
            block_us = gb.time_us(lambda: run(a, w, a_scale, w_scale), args.reps)
            block = f"{block_us:9.1f} {flop / block_us * 1e-6:8.0f} {tensor_us / block_us:12.3f}  (max rel err {err:.1e})"
        except Exception as ex:  # noqa: BLE001 — report what this torch/cuBLASLt build does not support
            block = f"  not supported: {str(ex).splitlines()[0][:100]}"
        print(f"{m:6d} {n:5d} {k:5d} {tensor_us:10.1f} {flop / tensor_us * 1e-6:8.0f} {block}")
        del a, w


if __name__ == "__main__":
    main()
