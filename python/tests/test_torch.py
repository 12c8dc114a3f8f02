"""PyTorch integration (skipped without torch): the torch.library op equals the direct call bit
for bit and the float64 reference within tolerance, traces under torch.compile(fullgraph=True),
and (on a Hopper GPU) records into a CUDA graph."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedmoe  # noqa: E402

E, K, I, M = 8, 128, 64, 11


def make(device):
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(E, 2 * I, K, generator=g) / K ** 0.5).to(torch.bfloat16).to(device)
    w2 = (torch.randn(E, K, I, generator=g) / I ** 0.5).to(torch.bfloat16).to(device)
    moe = fusedmoe.FusedMoE(num_experts=E, hidden_size=K, intermediate_size=I, top_k=2, w13=w13, w2=w2)
    hidden = torch.randn(M, K, generator=g).to(torch.bfloat16).to(device)
    logits = torch.randn(M, E, generator=g).to(device)
    return fusedmoe.FusedMoEModule(moe), moe, (w13, w2), hidden, logits


def bits(t):
    return t.cpu().view(torch.int16).numpy().view(np.uint16)


def test_op_equals_direct_call_and_reference_on_cpu():
    module, moe, (w13, w2), hidden, logits = make("cpu")
    out = module(hidden, logits)
    assert torch.equal(out, moe(hidden, logits))
    p = torch.softmax(logits, dim=1)
    w, ids = p.topk(2, dim=1)
    w = (w / w.sum(1, keepdim=True)).contiguous()
    ref = fusedmoe.reference(E, K, I, 2, "bf16", "silu", {"w13": bits(w13), "w2": bits(w2)}, bits(hidden),
                             ids.int().contiguous().numpy(), w.numpy())
    got = out.float().numpy()
    assert np.all(np.abs(got - ref) <= 1e-2 * np.abs(ref).max() + 2e-2 * np.abs(ref))


def test_torch_compile_traces_the_op():
    module, moe, _, hidden, logits = make("cpu")
    compiled = torch.compile(lambda h, l: module(h, l) * 2, fullgraph=True)
    assert torch.equal(compiled(hidden, logits), moe(hidden, logits) * 2)


@pytest.mark.skipif(not torch.cuda.is_available() or not fusedmoe.backend_available("cuda"),
                    reason="needs a Hopper GPU and the CUDA backend")
def test_cuda_graph_replay():
    module, _, _, hidden, logits = make("cuda")
    expect = module(hidden, logits)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(hidden, logits)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expect)
