#!/usr/bin/env python3
"""GPU benchmark of fusedmoe's CUDA forward (routing included; modular and monolithic experts)
against PyTorch, one process, one GPU. Measures the card's ceilings first (device copy bandwidth, dense bf16 and
fp8 GEMM rate through cuBLAS/cuBLASLt), then, per model and token count, times with CUDA
graphs and an L2 flush before every replay:
  fusedmoe      the fusedmoe C API forward (libfusedmoe_c.so), modular experts
  fusedmoe_mono the same weights through the monolithic experts (and whether the outputs are equal); the two
                graphs are timed in turns (time_each_us)
  torch_grouped torch routing + sort + torch._grouped_mm x2 + weighted index_add (bf16)
  torch_loop    torch routing + a Python loop over experts (eager, host syncs; not graphed)
  triton        torch routing + a Triton fused-MoE (bench/triton_moe.py: the align / grouped GEMM / activation /
                sum shape engines ship, bf16 and fp8-block weights, tile configs tuned here per GEMM and batch);
  triton_experts the same without the routing (ids and weights computed before the call); the two graphs are timed
                in turns
floor = max((weight bytes of the experts hit + activation bytes) / copy bandwidth,
            FLOPs / dense GEMM rate), all measured in this run. Output: a table, JSON and a
roofline PNG under --out. For fp8 and fp4 models the torch baselines run the dequantized
weights in bf16 (torch has no fp8 block-scaled or fp4 grouped GEMM); fusedmoe runs the quantized
weights. fp4 weights (W4A16) count 4.5 bits (nvfp4) or 4.25 bits (mxfp4) per value with their
scales; their GEMMs run at the bf16 rate, and the table's last column is the modular forward's
FLOP rate in % of the dense bf16 GEMM rate (the fp4 target at 8192 tokens).
"""
import argparse, ctypes, datetime, json, os, subprocess, sys, time

import torch

PRESETS = {
    # name: E, K, I, top_k, quant, routing, groups, topk_group, scaling
    "mixtral-8x7b": dict(E=8, K=4096, I=14336, k=2, quant="bf16", routing="softmax-topk-renormalize"),
    "qwen3-30b-a3b": dict(E=128, K=2048, I=768, k=8, quant="bf16", routing="softmax-topk-renormalize"),
    "deepseek-v3": dict(E=256, K=7168, I=2048, k=8, quant="fp8-block", routing="deepseek-v3", groups=8,
                        topk_group=4, scaling=2.5),
    # gpt-oss-120b's MoE layer: mxfp4, swiglu-oai (interleaved gate/up) with expert biases, top-4
    "gpt-oss-120b": dict(E=128, K=2880, I=2880, k=4, quant="mxfp4", routing="topk-softmax", act="swiglu-oai",
                         bias=True),
    # Qwen3-30B-A3B as an NVIDIA ModelOpt NVFP4 checkpoint
    "qwen3-30b-a3b-nvfp4": dict(E=128, K=2048, I=768, k=8, quant="nvfp4", routing="softmax-topk-renormalize"),
    # fp8 per-tensor checkpoints (static activation scales, as Mixtral-8x7B-Instruct-FP8) and fp8 per-channel
    # weights with dynamic per-token activations; fusedmoe runs both on its block-scaled kernels
    "mixtral-8x7b-fp8": dict(E=8, K=4096, I=14336, k=2, quant="fp8-tensor", routing="softmax-topk-renormalize"),
    "qwen3-30b-a3b-fp8-channel": dict(E=128, K=2048, I=768, k=8, quant="fp8-channel",
                                      routing="softmax-topk-renormalize"),
    # the two fp8 schemes on each other's shapes, to tell a scheme's kernels from a shape's
    "qwen3-30b-a3b-fp8": dict(E=128, K=2048, I=768, k=8, quant="fp8-tensor", routing="softmax-topk-renormalize"),
    "mixtral-8x7b-fp8-channel": dict(E=8, K=4096, I=14336, k=2, quant="fp8-channel",
                                     routing="softmax-topk-renormalize"),
    # a second narrow bf16 layer beside qwen3-30b-a3b (hidden 2048): DeepSeek-V2-Lite's routed experts (64 of
    # 2048 x 1408, top 6; its softmax top-k without renormalization is taken here as the presets' routing)
    "deepseek-v2-lite": dict(E=64, K=2048, I=1408, k=6, quant="bf16", routing="softmax-topk-renormalize"),
    # a control for deepseek-v3's grouped fp8-block GEMMs: its expert shape, but 8 experts and top 8, so every expert
    # takes every token (whole 128-row tiles, 8 groups): what the GEMMs cost without the grouping
    "deepseek-v3-dense8": dict(E=8, K=7168, I=2048, k=8, quant="fp8-block", routing="softmax-topk-renormalize"),
}
DEFAULT_MODELS = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v3,gpt-oss-120b,qwen3-30b-a3b-nvfp4"
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


class Desc(ctypes.Structure):
    _fields_ = [("num_experts", ctypes.c_int64), ("hidden_size", ctypes.c_int64),
                ("intermediate_size", ctypes.c_int64), ("top_k", ctypes.c_int32), ("quant", ctypes.c_char_p),
                ("activation", ctypes.c_char_p), ("routing", ctypes.c_char_p),
                ("num_expert_group", ctypes.c_int32), ("topk_group", ctypes.c_int32),
                ("renormalize", ctypes.c_int32), ("routed_scaling_factor", ctypes.c_float),
                ("correction_bias", ctypes.c_void_p), ("device", ctypes.c_int32), ("w13", ctypes.c_void_p),
                ("w2", ctypes.c_void_p), ("w13_scale", ctypes.c_void_p), ("w2_scale", ctypes.c_void_p),
                ("use_monolithic", ctypes.c_int32), ("w13_global_scale", ctypes.c_void_p),
                ("w2_global_scale", ctypes.c_void_p), ("a13_scale", ctypes.c_void_p), ("a2_scale", ctypes.c_void_p),
                ("w13_bias", ctypes.c_void_p), ("w2_bias", ctypes.c_void_p), ("fp4_packing", ctypes.c_int32)]


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.fmoe_layer_create.argtypes = [ctypes.POINTER(Desc), ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                      ctypes.c_size_t]
    lib.fmoe_layer_workspace_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.fmoe_layer_workspace_bytes.restype = ctypes.c_size_t
    lib.fmoe_layer_forward.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p,
                                                                                     ctypes.c_void_p, ctypes.c_char_p,
                                                                                     ctypes.c_size_t]
    lib.fmoe_layer_destroy.argtypes = [ctypes.c_void_p]
    return lib


# ---- timing ------------------------------------------------------------------------------
_flush = None
FLUSH_MODE = "write"  # --flush
_sink = None


def flush_l2():
    """Evicts the L2 before a timed call. "write" (the default, as triton.testing.do_bench): a 256 MB memset,
    which leaves the L2 full of dirty lines that the timed call then writes back (6-9 µs of a pass over the
    weights on an H200, bench/micro/read_ramp.py); "read": a 256 MB read, which leaves it full of clean lines."""
    global _flush, _sink
    if _flush is None:
        _flush = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
        _sink = torch.empty((), dtype=torch.int64, device="cuda")
    if FLUSH_MODE == "read":
        torch.sum(_flush.view(torch.int64), dim=0, out=_sink)
    else:
        _flush.zero_()


IDLE_S = 1.0  # --idle


def time_each_us(fns, reps, warmup=3, idle=None):
    """Median of per-call device times of each function, the functions timed in turns (a, b, a, b, ...; the L2 is
    flushed, flush_l2, before each call), after the card has idled IDLE_S seconds, so that every timed point (and
    the ceilings) starts from the same clocks. Under heavy work the card's power limit lowers its SM clock (1980 ->
    ~1600 MHz on an H200 at 700 W, nvidia-smi: SW power cap) within ~0.1 s and brings it back within 0.5 s of idle:
    without the idle, gpt-oss-120b's forward at 8192 tokens read 2769 us when timed first and 3060-3125 us when
    timed after other points; after 0.5-5 s of idle, 2713-2716 us (session 57). (That is also why its monolithic
    forward, timed right after the modular one, read 14% slower in sessions 54-55.)"""
    torch.cuda.synchronize()
    time.sleep(IDLE_S if idle is None else idle)
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            flush_l2()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e) * 1e3)
    return [sorted(t)[len(t) // 2] for t in times]


def time_us(fn, reps, warmup=3, idle=None):
    """Median of per-call device times; the L2 is flushed (flush_l2) before each call."""
    return time_each_us([fn], reps, warmup, idle)[0]


def graphed(fn):
    fn()  # warm (allocations, handles) outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def ceilings():
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    copy_us = time_us(lambda: b.copy_(a), 20)
    bw = 2 * n / (copy_us * 1e-6)
    m = 8192
    x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    mm_us = time_us(lambda: torch.mm(x, y), 20)
    bf16_rate = 2 * m ** 3 / (mm_us * 1e-6)
    # The same GEMM after about 2 s of them back to back: the card's rate under sustained load (its power limit
    # lowers the clocks within ~0.1 s of heavy work, see time_each_us). Reported beside the rate from idle, which the
    # tables divide by (every point is timed from idle too).
    for _ in range(max(1, int(2.0 / (mm_us * 1e-6)))):
        torch.mm(x, y)
    sustained_us = time_us(lambda: torch.mm(x, y), 20, idle=0.0)
    bf16_rate_sustained = 2 * m ** 3 / (sustained_us * 1e-6)
    xf = x.to(torch.float8_e4m3fn)
    yf = y.to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.ones((), device="cuda")
    f8_us = time_us(lambda: torch._scaled_mm(xf, yf, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 20)
    fp8_rate = 2 * m ** 3 / (f8_us * 1e-6)
    del a, b, x, y, xf, yf
    return dict(copy_bytes_per_s=bw, bf16_flops_per_s=bf16_rate, fp8_flops_per_s=fp8_rate,
                bf16_flops_per_s_sustained=bf16_rate_sustained)


# ---- weights -----------------------------------------------------------------------------
def to_e2m1(x):
    """Nearest e2m1 code (sign bit 8) of every value of x (already divided by its scale)."""
    grid = torch.tensor(E2M1_GRID, device=x.device)
    mag = torch.bucketize(x.abs().clamp(max=6.0), (grid[1:] + grid[:-1]) / 2)
    return (mag | ((x < 0).to(mag.dtype) << 3)).to(torch.uint8), grid[mag] * torch.where(x < 0, -1.0, 1.0)


def quantize_fp4(bf, quant):
    """bf16 [n, k] -> (packed uint8 [n, k/2], scales uint8 [n, k/G], global f32 or None, dequantized bf16)."""
    n, k = bf.shape
    x = bf.float()
    if quant == "mxfp4":
        blk = x.view(n, k // 32, 32)
        amax = blk.abs().amax(-1).clamp_min(2.0 ** -126)
        exp = (torch.floor(torch.log2(amax)) - 2).clamp(-127, 127)
        scale = torch.exp2(exp)
        codes, vals = to_e2m1(blk / scale[..., None])
        scales = (exp + 127).to(torch.uint8)
        deq, glob = vals * scale[..., None], None
    else:  # nvfp4: e4m3 per 16 values under an f32 global scale
        glob = (x.abs().amax().clamp_min(1e-12) / (448.0 * 6.0)).reshape(1)
        blk = x.view(n, k // 16, 16)
        s8 = (blk.abs().amax(-1) / 6.0 / glob).clamp(max=448.0).to(torch.float8_e4m3fn)
        eff = s8.float() * glob
        codes, vals = to_e2m1(blk / eff.clamp_min(1e-30)[..., None])
        scales = s8.view(torch.uint8)
        deq = vals * eff[..., None]
    codes = codes.view(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.contiguous(), scales.contiguous(), glob, deq.view(n, k).to(torch.bfloat16)


def make_weights(p, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    E, K, I = p["E"], p["K"], p["I"]
    w = {}
    for name, (n, k) in (("w13", (2 * I, K)), ("w2", (K, I))):
        bf = torch.empty(E, n, k, device="cuda", dtype=torch.bfloat16)
        for e in range(E):
            bf[e].normal_(0.0, k ** -0.5, generator=g)
        w[name + "_bf16"] = bf
        if p.get("bias"):
            w[name + "_bias"] = (torch.randn(E, n, device="cuda", generator=g) * 0.05).float()
        if p["quant"] == "fp8-block":
            nb, kb = (n + 127) // 128, (k + 127) // 128
            q = torch.empty(E, n, k, device="cuda", dtype=torch.float8_e4m3fn)
            s = torch.empty(E, nb, kb, device="cuda", dtype=torch.float32)
            for e in range(E):
                blk = bf[e].float().view(nb, 128, kb, 128)
                amax = blk.abs().amax(dim=(1, 3)).clamp_min(1e-10)
                sc = amax / 448.0
                q[e] = (blk / sc[:, None, :, None]).clamp(-448, 448).view(n, k).to(torch.float8_e4m3fn)
                s[e] = sc
                # the torch baselines see the dequantized fp8 weights
                bf[e] = (q[e].float().view(nb, 128, kb, 128) * sc[:, None, :, None]).view(n, k).to(torch.bfloat16)
            w[name] = q
            w[name + "_scale"] = s
        elif p["quant"] in ("nvfp4", "mxfp4"):
            group = 16 if p["quant"] == "nvfp4" else 32
            q = torch.empty(E, n, k // 2, device="cuda", dtype=torch.uint8)
            s = torch.empty(E, n, k // group, device="cuda", dtype=torch.uint8)
            glob = torch.ones(E, device="cuda", dtype=torch.float32)
            for e in range(E):
                q[e], s[e], ge, bf[e] = quantize_fp4(bf[e], p["quant"])  # baselines: the dequantized weights
                if ge is not None:
                    glob[e] = ge[0]
            w[name], w[name + "_scale"] = q, s
            if p["quant"] == "nvfp4":
                w[name + "_global"] = glob
        elif p["quant"] in ("fp8-tensor", "fp8-channel"):
            per_row = p["quant"] == "fp8-channel"
            q = torch.empty(E, n, k, device="cuda", dtype=torch.float8_e4m3fn)
            s = torch.empty(E, n, device="cuda", dtype=torch.float32) if per_row else \
                torch.empty(E, device="cuda", dtype=torch.float32)
            for e in range(E):
                f = bf[e].float()
                sc = (f.abs().amax(dim=1, keepdim=True) if per_row else f.abs().amax()).clamp_min(1e-10) / 448.0
                q[e] = (f / sc).clamp(-448, 448).to(torch.float8_e4m3fn)
                s[e] = sc.view(-1) if per_row else sc
                bf[e] = (q[e].float() * sc).to(torch.bfloat16)  # the torch baselines see the dequantized weights
            w[name], w[name + "_scale"] = q, s
        else:
            w[name] = bf
    if p["quant"] == "fp8-tensor":  # static activation scales from a calibration batch of randn tokens
        cal = torch.randn(256, K, device="cuda", generator=g).to(torch.bfloat16)
        inter = max(float(activation(p, cal.float() @ w["w13_bf16"][e].float().t()).abs().amax()) for e in range(E))
        w["a13_scale"] = torch.tensor([float(cal.float().abs().amax()) / 448.0], device="cuda")
        w["a2_scale"] = torch.tensor([inter / 448.0], device="cuda")
    return w


def expert_bytes_of(p):
    """Weight bytes of one expert in fusedmoe's layout (data, scales, biases)."""
    K, I = p["K"], p["I"]
    values = 2 * I * K + K * I
    q = p["quant"]
    if q == "fp8-block":
        b = values + ((2 * I + 127) // 128 * ((K + 127) // 128) + (K + 127) // 128 * ((I + 127) // 128)) * 4
    elif q == "fp8-tensor":
        b = values + 4 * 2
    elif q == "fp8-channel":
        b = values + 4 * (2 * I + K)
    elif q == "nvfp4":
        b = values * 4.5 / 8 + 4 * 2
    elif q == "mxfp4":
        b = values * 4.25 / 8
    else:
        b = values * 2
    return b + (4 * (2 * I + K) if p.get("bias") else 0)


def create_layer(lib, p, w, bias, monolithic):
    """A fusedmoe layer (C API handle) over the weights of make_weights; bias: deepseek-v3's correction bias."""
    ptr = lambda key: w[key].data_ptr() if key in w else None  # noqa: E731
    d = Desc(p["E"], p["K"], p["I"], p["k"], p["quant"].encode(), p.get("act", "silu").encode(),
             p["routing"].encode(), p.get("groups", 1), p.get("topk_group", 1), 1, p.get("scaling", 1.0),
             bias.data_ptr() if bias is not None else None, 0, ptr("w13"), ptr("w2"), ptr("w13_scale"),
             ptr("w2_scale"), int(monolithic), ptr("w13_global"), ptr("w2_global"), ptr("a13_scale"), ptr("a2_scale"),
             ptr("w13_bias"), ptr("w2_bias"))
    layer, err = ctypes.c_void_p(), ctypes.create_string_buffer(4096)
    if lib.fmoe_layer_create(ctypes.byref(d), ctypes.byref(layer), err, 4096):
        sys.exit(f"fmoe_layer_create{' (monolithic)' if monolithic else ''}: " + err.value.decode())
    return layer


# ---- torch routing and baselines ----------------------------------------------------------
def torch_route(p, logits, bias):
    k = p["k"]
    if p["routing"] == "deepseek-v3":
        s = torch.sigmoid(logits)
        choice = s + bias
        E, G = p["E"], p["groups"]
        gs = choice.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
        gidx = gs.topk(p["topk_group"], dim=-1).indices
        mask = torch.zeros_like(gs).scatter_(1, gidx, 1.0).repeat_interleave(E // G, dim=1)
        ids = choice.masked_fill(mask == 0, float("-inf")).topk(k, dim=-1).indices
        w = s.gather(1, ids)
        w = w / w.sum(-1, keepdim=True)
        return ids, w * p.get("scaling", 1.0)
    if p["routing"] == "topk-softmax":
        v, ids = logits.topk(k, dim=-1)
        return ids, torch.softmax(v, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    w, ids = probs.topk(k, dim=-1)
    return ids, w / w.sum(-1, keepdim=True)


def skew_logits(logits, skew):
    """--router-skew: adds skew x a fixed per-expert N(0,1) offset (seed 1234) to [M, E] logits, in place, so some
    experts draw more tokens than others, as trained routers do (0: unchanged)."""
    if skew:
        gen = torch.Generator(device="cuda").manual_seed(1234)
        logits += skew * torch.randn(logits.shape[1], device="cuda", generator=gen)


def activation(p, h):
    if p.get("act") == "swiglu-oai":  # interleaved (g0, u0, g1, u1, ...), alpha 1.702, limit 7
        g, u = h[:, 0::2].clamp(max=7.0), h[:, 1::2].clamp(-7.0, 7.0)
        return (u + 1) * g * torch.sigmoid(1.702 * g)
    i = h.shape[-1] // 2
    return torch.nn.functional.silu(h[:, :i]) * h[:, i:]


def torch_grouped(p, w, hidden, logits, bias):
    ids, wts = torch_route(p, logits, bias)
    M, k, E = hidden.shape[0], p["k"], p["E"]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.int64, device="cuda").scatter_add_(0, flat, torch.ones_like(flat))
    offs = torch.cumsum(counts, 0).to(torch.int32)
    x = hidden[order // k]
    h = torch._grouped_mm(x, w["w13_bf16"].transpose(1, 2), offs=offs)
    if "w13_bias" in w:
        h = h + w["w13_bias"][flat[order]]
    y = torch._grouped_mm(activation(p, h).to(torch.bfloat16), w["w2_bf16"].transpose(1, 2), offs=offs)
    if "w2_bias" in w:
        y = y + w["w2_bias"][flat[order]]
    y = y.float() * wts.reshape(-1)[order, None]
    out = torch.zeros(M, hidden.shape[1], device="cuda", dtype=torch.float32)
    out.index_add_(0, order // k, y)
    return out.to(torch.bfloat16)


def torch_loop(p, w, hidden, logits, bias):
    ids, wts = torch_route(p, logits, bias)
    out = torch.zeros(hidden.shape, device="cuda", dtype=torch.float32)
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = hidden[tok] @ w["w13_bf16"][e].t()
        if "w13_bias" in w:
            h = h + w["w13_bias"][e]
        y = activation(p, h).to(torch.bfloat16) @ w["w2_bf16"][e].t()
        if "w2_bias" in w:
            y = y + w["w2_bias"][e]
        out.index_add_(0, tok, y.float() * wts[tok, slot, None])
    return out.to(torch.bfloat16)


def triton_baseline(p, w):
    """The Triton fused-MoE baseline for this preset, or None where it does not apply (fp4 weights, biases, other
    activations) or Triton is missing."""
    if p["quant"] not in ("bf16", "fp8-block") or p.get("act", "silu") != "silu" or p.get("bias"):
        return None
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from triton_moe import TritonMoE
    except ImportError as e:
        print(f"# no Triton baseline: {e}", flush=True)
        return None
    return TritonMoE(p, w)


# ---- main ----------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, help="path to libfusedmoe_c.so")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--tokens", default="1,16,128,1024,8192")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-loop", action="store_true", help="skip the per-expert loop baseline")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton fused-MoE baseline")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--flush", choices=("write", "read"), default="write",
                    help="how the L2 is emptied before each timed call (see flush_l2)")
    ap.add_argument("--idle", type=float, default=1.0,
                    help="seconds the card idles before each timed point and ceiling (see time_each_us; 0: none)")
    ap.add_argument("--modular-only", action="store_true",
                    help="time the modular forward alone (no monolithic, no torch baselines): for same-run A/B")
    ap.add_argument("--router-skew", type=float, default=0.0,
                    help="add S x a fixed per-expert N(0,1) offset to the random logits, so some experts "
                         "draw more tokens than others as trained routers do (0: uniform)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lib = load_lib(args.lib)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    env = dict(card=props.name, sms=props.multi_processor_count, torch=torch.__version__,
               cuda=torch.version.cuda, date=datetime.datetime.utcnow().isoformat() + "Z",
               command=" ".join(sys.argv))
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
        env["power_limit"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=power.limit,enforced.power.limit,power.max_limit,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        env["driver"] = "unknown"
    try:
        env["fusedmoe_rev"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                             text=True).stdout.strip()
    except OSError:
        pass
    global FLUSH_MODE, IDLE_S
    FLUSH_MODE = args.flush
    IDLE_S = args.idle
    env["flush"] = args.flush
    env["idle_s"] = args.idle
    roof = ceilings()
    print(f"# {env['card']}  copy {roof['copy_bytes_per_s']/1e12:.2f} TB/s  bf16 {roof['bf16_flops_per_s']/1e12:.0f} "
          f"TFLOP/s (after 2 s of GEMMs: {roof['bf16_flops_per_s_sustained']/1e12:.0f})  fp8 "
          f"{roof['fp8_flops_per_s']/1e12:.0f} TFLOP/s  power limit, enforced, max, max SM clock: "
          f"{env.get('power_limit', '?')}", flush=True)
    rows = []
    err = ctypes.create_string_buffer(4096)
    for name in args.models.split(","):
        p = PRESETS[name]
        E, K, I, k = p["E"], p["K"], p["I"], p["k"]
        w = make_weights(p, 1234)
        bias = (torch.randn(E, device="cuda") * 0.1).float() if p["routing"] == "deepseek-v3" else None
        layer = create_layer(lib, p, w, bias, monolithic=False)
        mono = create_layer(lib, p, w, bias, monolithic=True)  # the same weights through the monolithic experts
        max_m = max(int(t) for t in args.tokens.split(","))
        ws = torch.empty(max(lib.fmoe_layer_workspace_bytes(layer, max_m), lib.fmoe_layer_workspace_bytes(mono, max_m)),
                         dtype=torch.uint8, device="cuda")
        fp8 = p["quant"].startswith("fp8")
        expert_bytes = expert_bytes_of(p)
        rate = roof["fp8_flops_per_s"] if fp8 else roof["bf16_flops_per_s"]
        tm = None if args.no_triton or args.modular_only else triton_baseline(p, w)
        for M in (int(t) for t in args.tokens.split(",")):
            hidden = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            logits = torch.randn(M, E, device="cuda", dtype=torch.float32)
            skew_logits(logits, args.router_skew)
            out = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)

            def fm(which=layer):
                rc = lib.fmoe_layer_forward(which, hidden.data_ptr(), logits.data_ptr(), out.data_ptr(), M,
                                            ws.data_ptr(), torch.cuda.current_stream().cuda_stream, err, 4096)
                if rc:
                    raise RuntimeError(err.value.decode())

            ids, _ = torch_route(p, logits, bias)
            active = int(ids.unique().numel())
            bytes_ = active * expert_bytes + 2 * M * K * 2 + M * E * 4
            flops = 2 * M * k * (2 * I * K + K * I)
            floor_us = max(bytes_ / roof["copy_bytes_per_s"], flops / rate) * 1e6
            res = dict(model=name, quant=p["quant"], tokens=M, active_experts=active, bytes=bytes_, flops=flops,
                       floor_us=floor_us)
            if args.modular_only:
                res["fusedmoe_us"] = time_us(graphed(fm), args.reps)
                res["fusedmoe_pct_floor"] = 100.0 * floor_us / res["fusedmoe_us"]
                rows.append(res)
                print(f"  {name:14s} M={M:5d} floor {floor_us:9.1f} us | fusedmoe {res['fusedmoe_us']:9.1f} us "
                      f"({res['fusedmoe_pct_floor']:5.1f}%)", flush=True)
                continue
            res["fusedmoe_us"], res["fusedmoe_mono_us"] = time_each_us([graphed(fm), graphed(lambda: fm(mono))],
                                                                       args.reps)
            ref = torch_grouped(p, w, hidden, logits, bias)
            fm(mono)
            torch.cuda.synchronize()
            mono_out = out.clone()
            fm()
            torch.cuda.synchronize()
            res["mono_equals_modular"] = bool(torch.equal(mono_out, out))
            res["rel_err_vs_torch"] = float((out.float() - ref.float()).norm() / ref.float().norm())
            res["torch_grouped_us"] = time_us(graphed(lambda: torch_grouped(p, w, hidden, logits, bias)), args.reps)
            if tm is not None:
                ids_t, wts_t = torch_route(p, logits, bias)
                res["triton_configs"] = tm.tune(hidden, ids_t, wts_t, lambda fn: time_us(fn, 10, warmup=2, idle=0.0))
                tout = tm.forward(hidden, ids_t, wts_t)
                res["triton_rel_err_vs_torch"] = float((tout.float() - ref.float()).norm() / ref.float().norm())
                res["triton_us"], res["triton_experts_us"] = time_each_us(
                    [graphed(lambda: tm.forward(hidden, *torch_route(p, logits, bias))),
                     graphed(lambda: tm.forward(hidden, ids_t, wts_t))], args.reps)
            if not args.no_loop:
                res["torch_loop_us"] = time_us(lambda: torch_loop(p, w, hidden, logits, bias), max(3, args.reps // 5),
                                               warmup=1)
            for key in ("fusedmoe", "fusedmoe_mono", "torch_grouped", "torch_loop", "triton", "triton_experts"):
                if key + "_us" in res:
                    res[key + "_pct_floor"] = 100.0 * floor_us / res[key + "_us"]
            res["fusedmoe_tflops"] = flops / (res["fusedmoe_us"] * 1e-6) / 1e12
            res["fusedmoe_gbps"] = bytes_ / (res["fusedmoe_us"] * 1e-6) / 1e9
            res["fusedmoe_pct_bf16_rate"] = 100.0 * flops / (res["fusedmoe_us"] * 1e-6) / roof["bf16_flops_per_s"]
            res["fusedmoe_pct_bf16_rate_sustained"] = (100.0 * flops / (res["fusedmoe_us"] * 1e-6) /
                                                       roof["bf16_flops_per_s_sustained"])
            rows.append(res)
            print(f"  {name:14s} M={M:5d} floor {floor_us:9.1f} us | fusedmoe {res['fusedmoe_us']:9.1f} us "
                  f"({res['fusedmoe_pct_floor']:5.1f}%) | monolithic {res['fusedmoe_mono_us']:9.1f} us "
                  f"({res['fusedmoe_mono_pct_floor']:5.1f}%{'' if res['mono_equals_modular'] else ', DIFFERS'}) "
                  f"| grouped_mm {res['torch_grouped_us']:9.1f} us "
                  f"({res['torch_grouped_pct_floor']:5.1f}%)"
                  + (f" | triton {res['triton_us']:9.1f} us ({res['triton_pct_floor']:5.1f}%), experts alone "
                     f"{res['triton_experts_us']:9.1f} us, rel err {res['triton_rel_err_vs_torch']:.2e}"
                     if "triton_us" in res else "")
                  + (f" | loop {res['torch_loop_us']:9.1f} us" if "torch_loop_us" in res else "")
                  + f" | rel err {res['rel_err_vs_torch']:.2e}", flush=True)
        lib.fmoe_layer_destroy(layer)
        lib.fmoe_layer_destroy(mono)
        del w, ws
        torch.cuda.empty_cache()
    stamp = datetime.date.today().isoformat()
    tag = env["card"].replace(" ", "-").replace("/", "-") + (f"-{args.tag}" if args.tag else "")
    env["pdl"] = os.environ.get("FUSEDMOE_PDL", "1")
    with open(os.path.join(args.out, f"gpu-bench-{tag}-{stamp}.json"), "w") as f:
        json.dump(dict(env=env, ceilings=roof, results=rows), f, indent=1)
    if args.modular_only:
        return
    plot(rows, roof, env, os.path.join(args.out, f"gpu-bench-{tag}-{stamp}.png"))
    print("\nmodel               tokens   floor_us  fusedmoe_us  %floor  monolithic_us  %floor  grouped_mm_us  %floor"
          "  %bf16_rate  (sustained)  triton_us  %floor  triton_experts_us  %floor")
    for r in rows:
        print(f"{r['model']:19s} {r['tokens']:6d} {r['floor_us']:10.1f} {r['fusedmoe_us']:12.1f} "
              f"{r['fusedmoe_pct_floor']:7.1f} {r['fusedmoe_mono_us']:14.1f} {r['fusedmoe_mono_pct_floor']:7.1f} "
              f"{r['torch_grouped_us']:14.1f} {r['torch_grouped_pct_floor']:7.1f} {r['fusedmoe_pct_bf16_rate']:10.1f} "
              f"{r['fusedmoe_pct_bf16_rate_sustained']:12.1f}"
              + (f" {r['triton_us']:10.1f} {r['triton_pct_floor']:7.1f} {r['triton_experts_us']:18.1f} "
                 f"{r['triton_experts_pct_floor']:7.1f}" if "triton_us" in r else ""))


def plot(rows, roof, env, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        ax.plot([r["tokens"] for r in rs], [r["fusedmoe_pct_floor"] for r in rs], "o-", label=f"fusedmoe {model}")
        ax.plot([r["tokens"] for r in rs], [r["torch_grouped_pct_floor"] for r in rs], "x--",
                label=f"torch grouped_mm {model}")
        if all("triton_pct_floor" in r for r in rs):
            ax.plot([r["tokens"] for r in rs], [r["triton_pct_floor"] for r in rs], "s:",
                    label=f"triton fused-MoE {model}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("% of floor (measured copy BW / GEMM rate)")
    ax.set_title(f"MoE forward vs roofline floor — {env['card']}")
    ax.axhline(100, color="gray", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
