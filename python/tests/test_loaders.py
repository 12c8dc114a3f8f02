"""Checkpoint loaders on small synthetic state dicts built in each model's layout, checked
against an independent numpy float64 computation from the original (unstacked) tensors."""
import os

import numpy as np
import pytest

import fusedmoe
from fusedmoe.loaders import load_moe_block

SEED = int(os.environ.get("FUSEDMOE_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))
E, K, I, M, TOP_K = 4, 128, 128, 9, 2


def silu(x):
    return x / (1.0 + np.exp(-x))


def e4m3_decode(u8):
    u = u8.astype(np.int32)
    sign = np.where(u & 0x80, -1.0, 1.0)
    exp, man = (u >> 3) & 0xF, u & 0x7
    normal = (1.0 + man / 8.0) * np.exp2(exp - 7.0)
    sub = (man / 8.0) * np.exp2(-6.0)
    return sign * np.where(exp == 0, sub, normal)


def e4m3_round(x):
    """Nearest e4m3 value (ties to even), saturating at +-448."""
    a = np.abs(x)
    exp = np.floor(np.log2(np.maximum(a, 2.0 ** -6)))
    quantum = np.exp2(exp - 3)
    return np.clip(np.round(x / quantum) * quantum, -448, 448)


def fp8_groups(x):
    """The fp8-block activation recipe: e4m3 per 1x128 group with scale max(amax, 1e-10) / 448."""
    g = x.reshape(-1, 128)
    scale = np.maximum(np.abs(g).max(axis=1, keepdims=True), 1e-10) / 448.0
    return (e4m3_round(g / scale) * scale).reshape(x.shape)


def bf16_round(x):
    return fusedmoe.from_bf16_bits(fusedmoe.to_bf16_bits(x)).astype(np.float64)


def numpy_moe(hidden, ids, weights, experts, fp8=False):
    """experts[e] = (gate [I,K], up [I,K], down [K,I]) in float64; fp8 quantizes activations. The library's
    rounding points (the float64 reference's recipe, reference_moe.cpp): GEMM1's outputs are bf16, and the
    activation is re-quantized (fp8) or rounded to bf16. Without the first, a rounding that moves one e4m3 code
    of a large activation left the tolerance (seed 2495417051: 1.98 against a bound of 1.4)."""
    out = np.zeros((hidden.shape[0], hidden.shape[1]))
    q = fp8_groups if fp8 else bf16_round
    for t in range(hidden.shape[0]):
        x = q(hidden[t])
        for j in range(ids.shape[1]):
            g, u, d = experts[ids[t, j]]
            h = q(silu(bf16_round(g @ x)) * bf16_round(u @ x))
            out[t] += weights[t, j] * (d @ h)
    return out


def bf16(rng, shape, scale):
    return fusedmoe.to_bf16_bits(rng.standard_normal(shape) * scale)


def expect_close(out_bits, ref, atol, rtol):
    out = fusedmoe.from_bf16_bits(out_bits).astype(np.float64)
    bound = atol * np.abs(ref).max() + rtol * np.abs(ref)
    assert np.all(np.abs(out - ref) <= bound), f"seed {SEED}: max error {np.abs(out - ref).max()}"


@pytest.mark.parametrize("layout", ["mixtral", "qwen3_moe"])
def test_bf16_layouts(layout):
    rng = np.random.default_rng(SEED)
    prefix = "model.layers.3."
    names = ("w1", "w3", "w2") if layout == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    block = "block_sparse_moe." if layout == "mixtral" else "mlp."
    sd = {f"{prefix}{block}gate.weight": rng.standard_normal((E, K)).astype(np.float32)}
    experts = []
    for e in range(E):
        g, u, d = bf16(rng, (I, K), K ** -0.5), bf16(rng, (I, K), K ** -0.5), bf16(rng, (K, I), I ** -0.5)
        for n, w in zip(names, (g, u, d)):
            sd[f"{prefix}{block}experts.{e}.{n}.weight"] = w
        experts.append(tuple(fusedmoe.from_bf16_bits(w).astype(np.float64) for w in (g, u, d)))
    moe = fusedmoe.FusedMoE.from_state_dict(sd, layout, top_k=TOP_K, prefix=prefix)
    hidden = bf16(rng, (M, K), 1.0)
    x = fusedmoe.from_bf16_bits(hidden)
    logits = (x @ moe.router_weight.T).astype(np.float32)
    out = moe(hidden, logits)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :TOP_K]
    w = np.take_along_axis(p, ids, 1)
    w /= w.sum(1, keepdims=True)
    expect_close(out, numpy_moe(x.astype(np.float64), ids, w, experts), 1e-2, 2e-2)


def test_deepseek_fp8_block_layout():
    rng = np.random.default_rng(SEED + 1)
    sd = {"mlp.gate.weight": rng.standard_normal((E, K)).astype(np.float32)}
    experts = []
    for e in range(E):
        mats = []
        for n, (rows, cols) in zip(("gate_proj", "up_proj", "down_proj"), ((I, K), (I, K), (K, I))):
            codes = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
            codes[(codes & 0x7F) == 0x7F] = 0x38  # no NaN codes
            scale = (rng.uniform(0.5, 1.5, ((rows + 127) // 128, (cols + 127) // 128)) * 0.02 / np.sqrt(cols)
                     ).astype(np.float32)
            sd[f"mlp.experts.{e}.{n}.weight"] = codes
            sd[f"mlp.experts.{e}.{n}.weight_scale_inv"] = scale
            mats.append(e4m3_decode(codes) * np.kron(scale, np.ones((128, 128)))[:rows, :cols])
        experts.append(tuple(mats))
    router, kwargs = load_moe_block(sd, "deepseek_v3")
    assert kwargs["w13"].shape == (E, 2 * I, K) and kwargs["w13_scale"].shape == (E, 2 * I // 128, K // 128)
    assert np.array_equal(kwargs["w13"][2, I:], sd["mlp.experts.2.up_proj.weight"])
    moe = fusedmoe.FusedMoE.from_state_dict(sd, "deepseek_v3", top_k=TOP_K, routing="precomputed")
    hidden = bf16(rng, (M, K), 1.0)
    ids = rng.integers(0, E, (M, TOP_K)).astype(np.int32)
    w = rng.uniform(0.2, 1.0, (M, TOP_K)).astype(np.float32)
    out = moe.apply(hidden, ids, w)
    ref = numpy_moe(fusedmoe.from_bf16_bits(hidden).astype(np.float64), ids, w, experts, fp8=True)
    expect_close(out, ref, 4e-2, 5e-2)


def test_missing_tensors_name_what_is_missing():
    with pytest.raises(KeyError, match="block_sparse_moe.gate.weight"):
        load_moe_block({}, "mixtral")
    sd = {"mlp.gate.weight": np.zeros((2, 128), np.float32)}
    with pytest.raises(KeyError, match="expert 0"):
        load_moe_block(sd, "qwen3_moe")
    with pytest.raises(ValueError, match="unknown layout"):
        load_moe_block(sd, "gpt2")


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def unpack_fp4(packed):
    """uint8 [..., n/2] (low nibble first) -> float64 [..., n]."""
    lo, hi = E2M1[packed & 0xF], E2M1[packed >> 4]
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def on_cuda(sd):
    """The state dict as torch CUDA tensors (uint16 bf16 bits -> torch.bfloat16), as a model loads it."""
    import torch

    def move(a):
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == np.uint16 else torch.from_numpy(a)
        return t.cuda()
    return {k: move(np.ascontiguousarray(v)) for k, v in sd.items()}


def have_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and fusedmoe.backend_available("cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not have_cuda(), reason="needs torch, a Hopper GPU and the CUDA backend"))])
def test_gpt_oss_mxfp4_layout(device):
    rng = np.random.default_rng(SEED + 2)
    E4, K4, I4, M4 = 4, 64, 64, 7
    sd = {
        "model.layers.0.mlp.router.weight": rng.standard_normal((E4, K4)).astype(np.float32),
        "model.layers.0.mlp.router.bias": rng.standard_normal(E4).astype(np.float32),
    }
    p = "model.layers.0.mlp.experts."
    sd[p + "gate_up_proj_blocks"] = rng.integers(0, 256, (E4, 2 * I4, K4 // 32, 16), dtype=np.uint8)
    sd[p + "gate_up_proj_scales"] = rng.integers(120, 125, (E4, 2 * I4, K4 // 32), dtype=np.uint8)
    sd[p + "gate_up_proj_bias"] = fusedmoe.to_bf16_bits(rng.standard_normal((E4, 2 * I4)) * 0.1)
    sd[p + "down_proj_blocks"] = rng.integers(0, 256, (E4, K4, I4 // 32, 16), dtype=np.uint8)
    sd[p + "down_proj_scales"] = rng.integers(120, 125, (E4, K4, I4 // 32), dtype=np.uint8)
    sd[p + "down_proj_bias"] = fusedmoe.to_bf16_bits(rng.standard_normal((E4, K4)) * 0.1)
    hidden = bf16(rng, (M4, K4), 1.0)
    x = fusedmoe.from_bf16_bits(hidden).astype(np.float64)
    router = "model.layers.0.mlp.router."
    logits = (x @ sd[router + "weight"].T.astype(np.float64) + sd[router + "bias"]).astype(np.float32)
    if device == "cpu":
        moe = fusedmoe.FusedMoE.from_state_dict(sd, "gpt_oss", top_k=2, prefix="model.layers.0.")
        out = moe(hidden, logits)
    else:  # mxfp4 weights, swiglu-oai and biases on the CUDA backend, torch tensors in and out
        import torch

        moe = fusedmoe.FusedMoE.from_state_dict(on_cuda(sd), "gpt_oss", top_k=2, prefix="model.layers.0.",
                                                backend="cuda")
        h = torch.from_numpy(hidden.view(np.int16)).view(torch.bfloat16).cuda()
        got = moe(h, torch.from_numpy(logits).cuda())
        out = got.cpu().view(torch.int16).numpy().view(np.uint16)

    def dequant(blocks, scales):  # [E, rows, G, 16] x [E, rows, G] -> [E, rows, G*32]
        vals = unpack_fp4(blocks)  # [E, rows, G, 32]
        return (vals * np.exp2(scales.astype(np.float64) - 127)[..., None]).reshape(*blocks.shape[:2], -1)

    w13 = dequant(sd[p + "gate_up_proj_blocks"], sd[p + "gate_up_proj_scales"])
    w2 = dequant(sd[p + "down_proj_blocks"], sd[p + "down_proj_scales"])
    b13 = fusedmoe.from_bf16_bits(sd[p + "gate_up_proj_bias"]).astype(np.float64)
    b2 = fusedmoe.from_bf16_bits(sd[p + "down_proj_bias"]).astype(np.float64)
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    top = np.take_along_axis(logits, ids, 1).astype(np.float64)
    w = np.exp(top - top.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    ref = np.zeros((M4, K4))
    for t in range(M4):
        for j in range(2):
            e = ids[t, j]
            h = w13[e] @ x[t] + b13[e]
            g, u = np.minimum(h[::2], 7.0), np.clip(h[1::2], -7.0, 7.0)
            a = (u + 1) * g / (1 + np.exp(-1.702 * g))
            ref[t] += w[t, j] * (w2[e] @ a + b2[e])
    expect_close(out, ref, 1e-2, 2e-2)


def nvfp4_state_dict(rng, same_global=True):
    sd = {"mlp.gate.weight": rng.standard_normal((E, K)).astype(np.float32)}
    experts = []
    for e in range(E):
        mats = []
        for n, (rows, cols) in zip(("gate_proj", "up_proj", "down_proj"), ((I, K), (I, K), (K, I))):
            packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
            scale_codes = rng.integers(0x30, 0x40, (rows, cols // 16), dtype=np.uint8)  # e4m3 in [0.5, 2)
            glob = np.float32(0.01 if n != "up_proj" or same_global else 0.02)
            sd[f"mlp.experts.{e}.{n}.weight"] = packed
            sd[f"mlp.experts.{e}.{n}.weight_scale"] = scale_codes
            sd[f"mlp.experts.{e}.{n}.weight_scale_2"] = np.array(glob)
            sd[f"mlp.experts.{e}.{n}.input_scale"] = np.array(np.float32(1.0))
            mats.append(unpack_fp4(packed) * np.repeat(e4m3_decode(scale_codes), 16, axis=1) * float(glob))
        experts.append(tuple(mats))
    return sd, experts


def test_modelopt_nvfp4_layout():
    rng = np.random.default_rng(SEED + 3)
    sd, experts = nvfp4_state_dict(rng)
    moe = fusedmoe.FusedMoE.from_state_dict(sd, "modelopt_nvfp4", top_k=TOP_K, routing="precomputed")
    hidden = bf16(rng, (M, K), 1.0)
    ids = rng.integers(0, E, (M, TOP_K)).astype(np.int32)
    w = rng.uniform(0.2, 1.0, (M, TOP_K)).astype(np.float32)
    out = moe.apply(hidden, ids, w)
    expect_close(out, numpy_moe(fusedmoe.from_bf16_bits(hidden).astype(np.float64), ids, w, experts), 1e-2, 2e-2)


def test_modelopt_nvfp4_refuses_different_gate_and_up_globals():
    sd, _ = nvfp4_state_dict(np.random.default_rng(SEED + 4), same_global=False)
    with pytest.raises(ValueError, match="weight_scale_2 differ"):
        load_moe_block(sd, "modelopt_nvfp4")
