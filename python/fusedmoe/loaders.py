"""Checkpoint loaders: the MoE block of a Hugging Face state dict -> FusedMoE.

Supported layouts (all weights [out, in] as in nn.Linear):
  mixtral      {p}block_sparse_moe.gate.weight [E, K]; {p}block_sparse_moe.experts.{e}.w1/w3/w2.weight
               (w1 = gate [I, K], w3 = up [I, K], w2 = down [K, I])
  qwen3_moe    {p}mlp.gate.weight [E, K]; {p}mlp.experts.{e}.gate_proj/up_proj/down_proj.weight
  deepseek_v3  as qwen3_moe, fp8 e4m3 weights with {...}.weight_scale_inv [ceil(out/128), ceil(in/128)]
               (f32, multiply to dequantize) and {p}mlp.gate.e_score_correction_bias [E]
  modelopt_nvfp4  as qwen3_moe, NVIDIA ModelOpt NVFP4: {...}.weight uint8 [out, in/2] (two e2m1 per
               byte, low nibble first), {...}.weight_scale e4m3 [out, in/16], {...}.weight_scale_2 f32
               (per-tensor global; gate and up must share it); {...}.input_scale is ignored (W4A16)
  gpt_oss      {p}mlp.router.weight [E, K] (+ .bias); {p}mlp.experts.gate_up_proj_blocks uint8
               [E, 2I, K/32, 16] (rows interleaved gate/up), gate_up_proj_scales ue8m0 [E, 2I, K/32],
               gate_up_proj_bias [E, 2I], down_proj_blocks [E, K, I/32, 16], down_proj_scales, down_proj_bias
Values may be numpy arrays (bf16 as uint16 bits, fp8/fp4/ue8m0 as uint8) or torch tensors. Per-expert
weights are stacked into fusedmoe's layout (w13 = [gate | up] rows), which copies them once.
"""
from __future__ import annotations

import numpy as np

LAYOUTS = ("mixtral", "qwen3_moe", "deepseek_v3", "modelopt_nvfp4", "gpt_oss")


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def _cat(parts, axis):
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=axis).contiguous()
    return np.ascontiguousarray(np.concatenate(parts, axis=axis))


def _stack(parts):
    if _is_torch(parts[0]):
        import torch

        return torch.stack(parts).contiguous()
    return np.ascontiguousarray(np.stack(parts))


def _names(layout: str, prefix: str):
    if layout == "mixtral":
        base = f"{prefix}block_sparse_moe."
        return base + "gate.weight", base + "experts.{e}.", ("w1", "w3", "w2")
    base = f"{prefix}mlp."
    return base + "gate.weight", base + "experts.{e}.", ("gate_proj", "up_proj", "down_proj")


def _float32(a):
    """f32 copy of a bias/scale given as f32, bf16 (torch) or uint16 bf16 bits (numpy)."""
    if _is_torch(a):
        return a.float().contiguous()
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def _reshape(a, shape):
    return a.reshape(shape).contiguous() if _is_torch(a) else np.ascontiguousarray(a.reshape(shape))


def _load_gpt_oss(state_dict, prefix):
    base = f"{prefix}mlp."
    need = [base + "router.weight"] + [f"{base}experts.{n}" for n in (
        "gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_bias", "down_proj_blocks", "down_proj_scales",
        "down_proj_bias")]
    for n in need:
        if n not in state_dict:
            raise KeyError(f"{n} not in the state dict (layout gpt_oss, prefix '{prefix}')")
    router = state_dict[need[0]]
    gu, gus, gub, dn, dns, dnb = (state_dict[n] for n in need[1:])
    e, n1 = int(gu.shape[0]), int(gu.shape[1])
    k = int(gu.shape[2]) * int(gu.shape[3]) * 2
    i = int(dn.shape[2]) * int(dn.shape[3]) * 2
    kwargs = dict(num_experts=e, hidden_size=k, intermediate_size=i, quant="mxfp4", activation="swiglu-oai",
                  routing="topk-softmax", w13=_reshape(gu, (e, n1, k // 2)), w2=_reshape(dn, (e, k, i // 2)),
                  w13_scale=_reshape(gus, (e, n1, k // 32)), w2_scale=_reshape(dns, (e, k, i // 32)),
                  w13_bias=_float32(gub), w2_bias=_float32(dnb))
    router_bias = state_dict.get(base + "router.bias")
    return router, router_bias, kwargs


def load_moe_block(state_dict, layout: str, prefix: str = ""):
    """Returns (router_weight [E, K], FusedMoE keyword arguments) for the block at `prefix`.
    For gpt_oss the router bias (added to the logits) is in kwargs['router_bias'] when present."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}'; supported: {', '.join(LAYOUTS)}")
    if layout == "gpt_oss":
        router, router_bias, kwargs = _load_gpt_oss(state_dict, prefix)
        if router_bias is not None:
            kwargs["router_bias"] = router_bias
        return router, kwargs
    gate_name, expert_fmt, (g, u, d) = _names(layout, prefix)
    if gate_name not in state_dict:
        raise KeyError(f"{gate_name} not in the state dict (layout {layout}, prefix '{prefix}')")
    router = state_dict[gate_name]
    num_experts, hidden = int(router.shape[0]), int(router.shape[1])
    w13, w2, s13, s2, g13, g2 = [], [], [], [], [], []
    fp8 = layout == "deepseek_v3"
    nvfp4 = layout == "modelopt_nvfp4"
    for e in range(num_experts):
        base = expert_fmt.format(e=e)
        try:
            gate, up, down = (state_dict[base + n + ".weight"] for n in (g, u, d))
        except KeyError as err:
            raise KeyError(f"expert {e}: {err.args[0]} missing (layout {layout})") from None
        w13.append(_cat([gate, up], 0))
        w2.append(down)
        if fp8:
            try:
                sg, su, sd = (state_dict[base + n + ".weight_scale_inv"] for n in (g, u, d))
            except KeyError as err:
                raise KeyError(f"expert {e}: {err.args[0]} missing (fp8 block scales)") from None
            if int(gate.shape[0]) % 128:
                raise ValueError(f"fp8 block scales need the intermediate size to be a multiple of 128, "
                                 f"got {int(gate.shape[0])}")
            s13.append(_cat([sg, su], 0))
            s2.append(sd)
        if nvfp4:
            try:
                sg, su, sd = (state_dict[base + n + ".weight_scale"] for n in (g, u, d))
                gg, gu, gd = (float(state_dict[base + n + ".weight_scale_2"]) for n in (g, u, d))
            except KeyError as err:
                raise KeyError(f"expert {e}: {err.args[0]} missing (NVFP4 scales)") from None
            if gg != gu:
                raise ValueError(f"expert {e}: gate and up weight_scale_2 differ ({gg} vs {gu}); fusedmoe keeps one "
                                 f"global scale per expert for w13")
            s13.append(_cat([sg, su], 0))
            s2.append(sd)
            g13.append(gg)
            g2.append(gd)
    packed = 2 if nvfp4 else 1
    kwargs = dict(num_experts=num_experts, hidden_size=hidden, intermediate_size=int(w2[0].shape[1]) * packed,
                  w13=_stack(w13), w2=_stack(w2))
    if nvfp4:
        kwargs.update(quant="nvfp4", w13_scale=_stack(s13), w2_scale=_stack(s2),
                      w13_global_scale=np.asarray(g13, dtype=np.float32),
                      w2_global_scale=np.asarray(g2, dtype=np.float32))
    if fp8:
        kwargs.update(quant="fp8-block", w13_scale=_stack(s13), w2_scale=_stack(s2), routing="deepseek-v3")
        bias_name = f"{prefix}mlp.gate.e_score_correction_bias"
        if bias_name in state_dict:
            kwargs["correction_bias"] = state_dict[bias_name]
    return router, kwargs
