"""Hugging Face models with their MoE blocks replaced by fusedmoe (needs torch and transformers;
skipped otherwise): a small randomly initialised Mixtral and Qwen3-MoE give the same logits as
the original model within bf16 tolerance — on the CPU backend always, and on CUDA when a Hopper
GPU and the CUDA backend are there.

The expert weights are read from the block itself, in either layout transformers has used: a
ModuleList of per-expert Linear layers (w1/w3/w2 or gate_proj/up_proj/down_proj) or fused 3-D
parameters (experts.gate_up_proj, experts.down_proj)."""
import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import fusedmoe  # noqa: E402

HAVE_CUDA = torch.cuda.is_available() and fusedmoe.backend_available("cuda")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAVE_CUDA, reason="needs a Hopper GPU"))]

H, I, E, TOP_K = 256, 192, 8, 2  # H != 2I, so the orientation of fused parameters is unambiguous


def oriented(t, rows, cols):
    """t as [.., rows, cols] (transposing the last two dims when stored the other way)."""
    if t.shape[-2:] == (rows, cols):
        return t
    assert t.shape[-2:] == (cols, rows), f"unexpected expert weight shape {tuple(t.shape)}"
    return t.transpose(-1, -2)


def expert_weights(experts):
    """(w13 [E, 2I, H] gate rows first, w2 [E, H, I]) of a transformers experts module."""
    if isinstance(experts, torch.nn.ModuleList):
        names = ("w1", "w3", "w2") if hasattr(experts[0], "w1") else ("gate_proj", "up_proj", "down_proj")
        gate, up, down = ([getattr(x, n).weight for x in experts] for n in names)
        w13 = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        return w13, torch.stack(list(down))
    return oriented(experts.gate_up_proj, 2 * I, H), oriented(experts.down_proj, H, I)


class FusedBlock(torch.nn.Module):
    """Stands in for a transformers sparse-MoE block: same router, experts run by fusedmoe."""

    def __init__(self, block, returns_tuple, device):
        super().__init__()
        w13, w2 = expert_weights(block.experts)
        self.w13, self.w2 = w13.detach().contiguous(), w2.detach().contiguous()
        self.router = block.gate.weight.detach()
        moe = fusedmoe.FusedMoE(num_experts=E, hidden_size=H, intermediate_size=I, top_k=TOP_K, w13=self.w13,
                                w2=self.w2, routing="softmax-topk-renormalize", backend=device)
        self.module = fusedmoe.FusedMoEModule(moe)
        self.returns_tuple = returns_tuple

    def logits(self, hidden_states):
        """[tokens, E] router logits, computed as the model's router does (bf16)."""
        return torch.nn.functional.linear(hidden_states.reshape(-1, H), self.router)

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, H).contiguous()
        logits = self.logits(x)
        out = self.module(x, logits.float().contiguous()).reshape(shape)
        return (out, logits) if self.returns_tuple else out


def moe_blocks(model):
    for layer in model.model.layers:
        for attr in ("block_sparse_moe", "mlp"):
            block = getattr(layer, attr, None)
            if block is not None and hasattr(block, "experts"):
                yield layer, attr, block


def build(name, device):
    common = dict(hidden_size=H, intermediate_size=I, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=128)
    if name == "mixtral":
        config = transformers.MixtralConfig(num_local_experts=E, num_experts_per_tok=TOP_K, **common)
        cls = transformers.MixtralForCausalLM
    else:
        config = transformers.Qwen3MoeConfig(num_experts=E, num_experts_per_tok=TOP_K, moe_intermediate_size=I,
                                             norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                                             head_dim=64, **common)
        cls = transformers.Qwen3MoeForCausalLM
    torch.manual_seed(0)
    return cls(config).to(device=device, dtype=torch.bfloat16).eval()


def boundary_tie(logits):
    """Per token: the k-th and (k+1)-th largest logits are equal (which experts are picked is a tie-break)."""
    top = logits.float().topk(TOP_K + 1, dim=-1).values
    return top[:, TOP_K - 1] == top[:, TOP_K]


def rel_error(a, truth):
    return ((a.float() - truth.float()).norm() / truth.float().norm()).item()


def first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_replaced_moe_blocks_give_the_same_logits(name, device):
    model = build(name, device)
    tokens = torch.randint(0, 512, (3, 37), generator=torch.Generator().manual_seed(1)).to(device)
    blocks = list(moe_blocks(model))
    assert len(blocks) == 2, "found no MoE blocks to replace"
    with torch.no_grad():
        truth = copy.deepcopy(model).float()(tokens).logits  # the same model in f32
        seen = []  # the hidden states each MoE block receives in the bf16 model
        hooks = [block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
                 for _, _, block in blocks]
        expect = model(tokens).logits.float()
        for h in hooks:
            h.remove()
        fused = []
        for (layer, attr, block), x in zip(blocks, seen):
            probe = block(torch.randn(1, 2, H, device=device, dtype=torch.bfloat16))
            fused.append(FusedBlock(block, isinstance(probe, tuple), device))
            # Block by block, on the inputs the model really produced: fusedmoe's output is as close to
            # the block computed in f32 as the block's own bf16 output is. Tokens whose bf16 logits tie at
            # the top-k boundary are left out: fusedmoe gives a tie to the lower expert index (README),
            # torch.topk to either, and the f32 block breaks it by digits bf16 does not have.
            block_truth = first(copy.deepcopy(block).float()(x.float())).reshape(-1, H)
            clear = ~boundary_tie(fused[-1].logits(x))
            own = rel_error(first(block(x)).reshape(-1, H)[clear], block_truth[clear])
            ours = rel_error(first(fused[-1](x)).reshape(-1, H)[clear], block_truth[clear])
            print(f"{name} on {device}, {attr} of a layer: relative error vs f32: fusedmoe {ours:.2e}, "
                  f"the block's own bf16 {own:.2e} ({int((~clear).sum())} tied tokens left out)")
            assert ours <= 1.25 * own + 1e-3, f"{name}: block error {ours:.3e} vs the bf16 block's {own:.3e}"
        for (layer, attr, _), block in zip(blocks, fused):
            setattr(layer, attr, block)
        got = model(tokens).logits.float()

    agree = (got.argmax(-1) == expect.argmax(-1)).float().mean().item()
    ours, own = rel_error(got, truth), rel_error(expect, truth)
    print(f"{name} on {device}: relative logits error vs f32: fusedmoe {ours:.2e}, the model's own bf16 {own:.2e}; "
          f"argmax agreement with the bf16 model {agree:.3f}")
    assert torch.isfinite(got).all()
    # End to end, bf16 rounding anywhere (or a tie broken the other way) is amplified by the layers
    # after it: on one H200 the own bf16 model was 1.1e-2 from f32 and fusedmoe 1.7e-2, on the CPU 2.0e-2
    # and 0.5e-2. The block-by-block bound above is the tight one; this one catches a broken layer.
    assert ours <= 2 * own, f"{name}: relative logits error {ours:.3e} vs the bf16 model's {own:.3e}"
    assert agree > 0.95, f"{name}: argmax agreement {agree:.3f}"
