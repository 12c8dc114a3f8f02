"""Checkpoint loaders: the MoE block of a Hugging Face state dict -> FusedMoE.

Supported layouts (all weights [out, in] as in nn.Linear):
  mixtral      {p}block_sparse_moe.gate.weight [E, K]; {p}block_sparse_moe.experts.{e}.w1/w3/w2.weight
               (w1 = gate [I, K], w3 = up [I, K], w2 = down [K, I])
  qwen3_moe    {p}mlp.gate.weight [E, K]; {p}mlp.experts.{e}.gate_proj/up_proj/down_proj.weight
  deepseek_v3  as qwen3_moe, fp8 e4m3 weights with {...}.weight_scale_inv [ceil(out/128), ceil(in/128)]
               (f32, multiply to dequantize) and {p}mlp.gate.e_score_correction_bias [E]
Values may be numpy arrays (bf16 as uint16 bits, fp8 as uint8) or torch tensors. The experts'
weights are stacked into fusedmoe's layout (w13 = [gate | up] rows), which copies them once.
NVIDIA ModelOpt NVFP4 and gpt-oss MXFP4 layouts are not supported yet.
"""
from __future__ import annotations

import numpy as np

LAYOUTS = ("mixtral", "qwen3_moe", "deepseek_v3")


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


def load_moe_block(state_dict, layout: str, prefix: str = ""):
    """Returns (router_weight [E, K], FusedMoE keyword arguments) for the block at `prefix`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}'; supported: {', '.join(LAYOUTS)}")
    gate_name, expert_fmt, (g, u, d) = _names(layout, prefix)
    if gate_name not in state_dict:
        raise KeyError(f"{gate_name} not in the state dict (layout {layout}, prefix '{prefix}')")
    router = state_dict[gate_name]
    num_experts, hidden = int(router.shape[0]), int(router.shape[1])
    w13, w2, s13, s2 = [], [], [], []
    fp8 = layout == "deepseek_v3"
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
    kwargs = dict(num_experts=num_experts, hidden_size=hidden, intermediate_size=int(w2[0].shape[1]),
                  w13=_stack(w13), w2=_stack(w2))
    if fp8:
        kwargs.update(quant="fp8-block", w13_scale=_stack(s13), w2_scale=_stack(s2), routing="deepseek-v3")
        bias_name = f"{prefix}mlp.gate.e_score_correction_bias"
        if bias_name in state_dict:
            kwargs["correction_bias"] = state_dict[bias_name]
    return router, kwargs
