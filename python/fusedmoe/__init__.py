"""fusedmoe: Mixture-of-Experts layer kernels (C++20/CUDA) with a CPU reference backend.

Arrays are passed without copies through DLPack or the buffer protocol (torch, numpy, cupy).
numpy has no bfloat16: bf16 arguments also take uint16 arrays of bf16 bit patterns
(`to_bf16_bits` / `from_bf16_bits` convert), and fp8 e4m3 weights take uint8 arrays.

    import fusedmoe
    moe = fusedmoe.FusedMoE(num_experts=8, hidden_size=256, intermediate_size=128, top_k=2,
                            w13=w13, w2=w2)          # w13 [E, 2I, K], w2 [E, K, I]
    out = moe(hidden, router_logits)                 # hidden [M, K] bf16, logits [M, E] f32
"""
from __future__ import annotations

import numpy as np

from ._C import Error, backend_available, make_layer, reference
from ._C import pack_fp4_weights_sm90 as _pack_fp4_weights_sm90

__all__ = ["Error", "FusedMoE", "fused_moe", "to_bf16_bits", "from_bf16_bits", "reference", "backend_available",
           "pack_fp4_weights_sm90"]

try:  # torch.library ops and the nn.Module, when torch is importable
    from .torch_ops import FusedMoEModule  # noqa: F401

    __all__.append("FusedMoEModule")
except ImportError:
    pass


def to_bf16_bits(x) -> np.ndarray:
    """float array -> uint16 bf16 bit patterns (round to nearest even; NaN stays NaN)."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), rounded)


def from_bf16_bits(b) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def _empty_like_rows(hidden, rows: int, cols: int, nbytes: int | None = None):
    """An output [rows, cols] of hidden's kind and device (or a byte workspace when nbytes)."""
    if _is_cupy(hidden):  # cupy has no bf16: uint16 bits, as for numpy
        import cupy

        with hidden.device:
            return cupy.empty(nbytes, dtype=cupy.uint8) if nbytes is not None else cupy.empty((rows, cols), cupy.uint16)
    if _is_torch(hidden):
        import torch

        if nbytes is not None:
            return torch.empty(nbytes, dtype=torch.uint8, device=hidden.device)
        return torch.empty(rows, cols, dtype=torch.bfloat16, device=hidden.device)
    if nbytes is not None:
        return np.empty(nbytes, dtype=np.uint8)
    return np.empty((rows, cols), dtype=np.uint16)


def _stream_of(a) -> int:
    """The caller's current CUDA stream for a device array (torch's or cupy's), else 0."""
    if _is_torch(a) and a.is_cuda:
        import torch

        return torch.cuda.current_stream(a.device).cuda_stream
    if _is_cupy(a):
        import cupy

        with a.device:
            return cupy.cuda.get_current_stream().ptr
    return 0


def pack_fp4_weights_sm90(*, num_experts: int, hidden_size: int, intermediate_size: int, quant: str, w13, w2,
                          **weights):
    """Rewrites nvfp4 / mxfp4 w13 and w2 (given with the scheme's scales, as FusedMoE takes them) in place, on
    their device, from the checkpoint's order into the sm90 packing the CUDA kernels read; then build layers with
    fp4_packing="sm90". Without it, a CUDA layer keeps a packed copy of w13 and w2 (twice their memory). The
    arrays carry no mark: packing them twice scrambles them."""
    arrays = {"w13": w13, "w2": w2, **{k: v for k, v in weights.items() if v is not None}}
    _pack_fp4_weights_sm90(num_experts, hidden_size, intermediate_size, quant, arrays)


class FusedMoE:
    """One MoE layer: config, weights (kept referenced; not copied, except fp4 weights in the checkpoint's order
    on CUDA: see pack_fp4_weights_sm90) and the fused kernel."""

    WEIGHT_NAMES = ("w13", "w2", "w13_scale", "w2_scale", "w13_global_scale", "w2_global_scale", "a13_scale",
                    "a2_scale", "w13_bias", "w2_bias")

    def __init__(self, *, num_experts: int, hidden_size: int, intermediate_size: int, top_k: int, w13, w2,
                 quant: str = "bf16", activation: str = "silu", routing: str = "softmax-topk-renormalize",
                 num_expert_group: int = 1, topk_group: int = 1, renormalize: bool = True,
                 routed_scaling_factor: float = 1.0, correction_bias=None, backend: str = "auto",
                 monolithic: bool = False, fp4_packing: str = "checkpoint", **weights):
        """w13 [E, N1, K] / w2 [E, K, I] (+ the scheme's scales, global scales, biases by name;
        layouts in include/fusedmoe/weights.h). fp4_packing: "checkpoint" or "sm90" (pack_fp4_weights_sm90)."""
        unknown = set(weights) - set(self.WEIGHT_NAMES)
        if unknown:
            raise TypeError(f"unknown weight argument(s) {sorted(unknown)}; known: {self.WEIGHT_NAMES}")
        self.num_experts, self.hidden_size, self.top_k = num_experts, hidden_size, top_k
        arrays = {"w13": w13, "w2": w2, **{k: v for k, v in weights.items() if v is not None}}
        self._layer = make_layer(num_experts, hidden_size, intermediate_size, top_k, quant, activation, routing,
                                 num_expert_group, topk_group, renormalize, routed_scaling_factor, correction_bias,
                                 arrays, backend, monolithic, fp4_packing)

    def workspace_bytes(self, num_tokens: int) -> int:
        return self._layer.workspace_bytes(num_tokens)

    def __call__(self, hidden, router_logits, out=None, workspace=None):
        """Routes, runs the experts and combines: returns out [M, K] (bf16; uint16 bits for numpy)."""
        m = hidden.shape[0]
        if out is None:
            out = _empty_like_rows(hidden, m, self.hidden_size)
        self._layer.forward(hidden, router_logits, out, workspace, _stream_of(hidden))
        return out

    def apply(self, hidden, topk_ids, topk_weights, out=None, workspace=None):
        """The experts and the combine for precomputed top-k ids (int32) and weights (float32)."""
        if out is None:
            out = _empty_like_rows(hidden, hidden.shape[0], self.hidden_size)
        self._layer.apply(hidden, topk_ids, topk_weights, out, workspace, _stream_of(hidden))
        return out


    @classmethod
    def from_state_dict(cls, state_dict, layout: str, *, top_k: int, prefix: str = "", **config):
        """The MoE block of a Hugging Face state dict (see fusedmoe.loaders for the layouts).
        The router is kept as `router_weight` [E, K] and `router_bias` (gpt_oss, else None):
        logits = hidden @ router_weight.T (+ router_bias)."""
        from .loaders import load_moe_block

        router, kwargs = load_moe_block(state_dict, layout, prefix)
        router_bias = kwargs.pop("router_bias", None)
        kwargs.update(config)
        moe = cls(top_k=top_k, **kwargs)
        moe.router_weight, moe.router_bias = router, router_bias
        return moe


def fused_moe(hidden, router_logits, w13, w2, *, top_k: int, **config):
    """Functional form: builds the layer for these weights and runs it once."""
    e, n1, k = w13.shape
    moe = FusedMoE(num_experts=e, hidden_size=k, intermediate_size=w2.shape[2], top_k=top_k, w13=w13, w2=w2,
                   **config)
    return moe(hidden, router_logits)
