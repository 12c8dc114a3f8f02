"""PyTorch integration: `torch.ops.fusedmoe.forward` registered with torch.library (with a fake
implementation, so it traces under torch.compile and records into CUDA graphs), and
`FusedMoEModule`, an nn.Module holding a FusedMoE. Imported by `fusedmoe` only when torch is
importable. Layers are referred to by an integer handle (ops take tensors and plain values).
"""
from __future__ import annotations

import itertools

import torch

_layers: dict[int, object] = {}
_next_handle = itertools.count(1)


def register_layer(moe) -> int:
    handle = next(_next_handle)
    _layers[handle] = moe
    return handle


@torch.library.custom_op("fusedmoe::forward", mutates_args=())
def forward(hidden: torch.Tensor, router_logits: torch.Tensor, handle: int) -> torch.Tensor:
    """Routes, runs the experts and combines: bf16 [M, K] out (new tensor)."""
    moe = _layers[handle]
    out = torch.empty_like(hidden)
    workspace = torch.empty(moe.workspace_bytes(hidden.shape[0]), dtype=torch.uint8, device=hidden.device)
    moe(hidden, router_logits, out=out, workspace=workspace)
    return out


@forward.register_fake
def _(hidden, router_logits, handle):
    return torch.empty_like(hidden)


class FusedMoEModule(torch.nn.Module):
    """nn.Module wrapper: keeps the FusedMoE (and so its weights) alive; forward() calls the op."""

    def __init__(self, moe, router_weight: torch.Tensor | None = None, router_bias: torch.Tensor | None = None):
        super().__init__()
        self.moe = moe
        self.handle = register_layer(moe)
        self.router_weight = router_weight
        self.router_bias = router_bias

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor | None = None) -> torch.Tensor:
        if router_logits is None:
            if self.router_weight is None:
                raise ValueError("FusedMoEModule needs router_logits or a router_weight")
            router_logits = hidden.float() @ self.router_weight.float().t()
            if self.router_bias is not None:
                router_logits = router_logits + self.router_bias.float()
        return torch.ops.fusedmoe.forward(hidden, router_logits.float().contiguous(), self.handle)
