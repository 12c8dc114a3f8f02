"""The Python API on the CPU (numpy): the layer against the float64 reference, the bf16 helpers,
and bad input raising fusedmoe.Error with the C++ message. Seeds are printed on failure."""
import os

import numpy as np
import pytest

import fusedmoe

SEED = int(os.environ.get("FUSEDMOE_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))


def make(seed, E=8, K=128, I=64, M=13, top_k=2):
    rng = np.random.default_rng(seed)
    w13 = fusedmoe.to_bf16_bits(rng.standard_normal((E, 2 * I, K)) / np.sqrt(K))
    w2 = fusedmoe.to_bf16_bits(rng.standard_normal((E, K, I)) / np.sqrt(I))
    hidden = fusedmoe.to_bf16_bits(rng.standard_normal((M, K)))
    logits = rng.standard_normal((M, E)).astype(np.float32) * 2
    return w13, w2, hidden, logits


def topk_renormalized(logits, k):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :k].astype(np.int32)
    w = np.take_along_axis(p, ids, axis=1)
    return ids, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def test_bf16_bits_round_trip():
    x = np.array([1.0, -2.5, 3.14159, 1e-20, np.inf, np.nan], dtype=np.float32)
    b = fusedmoe.to_bf16_bits(x)
    y = fusedmoe.from_bf16_bits(b)
    assert b.dtype == np.uint16
    assert y[0] == 1.0 and y[1] == -2.5 and abs(y[2] - 3.14159) < 2e-2 and np.isinf(y[4]) and np.isnan(y[5])


def test_layer_matches_reference():
    print("seed", SEED)
    w13, w2, hidden, logits = make(SEED)
    moe = fusedmoe.FusedMoE(num_experts=8, hidden_size=128, intermediate_size=64, top_k=2, w13=w13, w2=w2)
    out = fusedmoe.from_bf16_bits(moe(hidden, logits))
    ids, w = topk_renormalized(logits, 2)
    ref = fusedmoe.reference(8, 128, 64, 2, "bf16", "silu", {"w13": w13, "w2": w2}, hidden, ids, w)
    tol = 1e-2 * np.abs(ref).max() + 2e-2 * np.abs(ref)
    assert np.all(np.abs(out - ref) <= tol), f"seed {SEED}: max error {np.abs(out - ref).max()}"


def test_apply_with_precomputed_ids_and_workspace():
    w13, w2, hidden, logits = make(SEED + 1, M=5)
    ids, w = topk_renormalized(logits, 2)
    moe = fusedmoe.FusedMoE(num_experts=8, hidden_size=128, intermediate_size=64, top_k=2, w13=w13, w2=w2,
                            routing="precomputed")
    ws = np.empty(moe.workspace_bytes(5), dtype=np.uint8)
    out = fusedmoe.from_bf16_bits(moe.apply(hidden, ids, w, workspace=ws))
    ref = fusedmoe.reference(8, 128, 64, 2, "bf16", "silu", {"w13": w13, "w2": w2}, hidden, ids, w)
    assert np.allclose(out, ref, atol=1e-2 * np.abs(ref).max(), rtol=2e-2), f"seed {SEED}"


def test_functional_form():
    w13, w2, hidden, logits = make(SEED + 2)
    out = fusedmoe.fused_moe(hidden, logits, w13, w2, top_k=2)
    assert out.shape == (13, 128) and not np.isnan(fusedmoe.from_bf16_bits(out)).any()


def test_bad_input_is_a_clear_error_and_writes_nothing():
    w13, w2, hidden, logits = make(SEED + 3)
    moe = fusedmoe.FusedMoE(num_experts=8, hidden_size=128, intermediate_size=64, top_k=2, w13=w13, w2=w2)
    out = np.full((13, 128), 0x7FC1, dtype=np.uint16)
    with pytest.raises(fusedmoe.Error, match=r"hidden must be bf16 .*, got float64 \[13, 128\] on cpu"):
        moe(hidden.astype(np.float64), logits, out)
    with pytest.raises(fusedmoe.Error, match=r"router_logits must be f32 or bf16, got int32 \[13, 8\] on cpu"):
        moe(hidden, logits.astype(np.int32), out)
    with pytest.raises(fusedmoe.Error, match=r"router_logits must be a contiguous f32\[13, 8\]"):
        moe(hidden, logits[:, :7].copy(), out)
    with pytest.raises(fusedmoe.Error, match="contiguous"):
        moe(hidden, np.asfortranarray(logits), out)
    assert np.all(out == 0x7FC1)
    with pytest.raises(fusedmoe.Error, match="unknown quant"):
        fusedmoe.FusedMoE(num_experts=8, hidden_size=128, intermediate_size=64, top_k=2, w13=w13, w2=w2,
                          quant="int3")
    with pytest.raises(fusedmoe.Error, match="w13"):
        fusedmoe.FusedMoE(num_experts=8, hidden_size=128, intermediate_size=64, top_k=2, w13=w13[:, :5], w2=w2)


SM90_BITS = [[6, 7, 8, 15], [22, 23, 24, 31], [28, 29, 30, 5], [12, 13, 14, 21], [25, 26, 27, 2], [9, 10, 11, 18],
             [3, 4, 0, 1], [19, 20, 16, 17]]


def sm90_packed(packed):
    """The sm90 packing (include/fusedmoe/formats.h) of packed e2m1 bytes [E, N, row_bytes], written out again in
    numpy: word c of each 16-byte segment takes the segment's bytes c + 4q, bit j of nibble h of byte c + 4q at
    SM90_BITS[2q+h][j]; the rows in tiles of 16, each tile segment-major (segment s of its row i at 256 s + 16 i)."""
    seg = packed.reshape(-1, 16)
    out = np.zeros((seg.shape[0], 4), dtype=np.uint32)
    for c in range(4):
        for q in range(4):
            for h in range(2):
                for j in range(4):
                    bit = (seg[:, c + 4 * q] >> (4 * h + j)) & 1
                    out[:, c] |= bit.astype(np.uint32) << np.uint32(SM90_BITS[2 * q + h][j])
    segs = packed.shape[-1] // 16
    tiles = out.astype("<u4").view(np.uint8).reshape(-1, 16, segs, 16)  # [tile, row, segment, byte]
    return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3)).reshape(packed.shape)


def test_fp4_weights_packed_in_place_and_refused_by_the_cpu():
    rng = np.random.default_rng(SEED + 7)
    E, K, I = 4, 64, 64  # rows of 32 bytes: two segments
    w = {"w13": rng.integers(0, 256, (E, 2 * I, K // 2), dtype=np.uint8),
         "w2": rng.integers(0, 256, (E, K, I // 2), dtype=np.uint8),
         "w13_scale": rng.integers(120, 130, (E, 2 * I, K // 32), dtype=np.uint8),
         "w2_scale": rng.integers(120, 130, (E, K, I // 32), dtype=np.uint8)}
    want13, want2 = sm90_packed(w["w13"]), sm90_packed(w["w2"])
    dims = dict(num_experts=E, hidden_size=K, intermediate_size=I)
    fusedmoe.pack_fp4_weights_sm90(quant="mxfp4", **dims, **w)
    assert np.array_equal(w["w13"], want13) and np.array_equal(w["w2"], want2), f"seed {SEED}"
    with pytest.raises(fusedmoe.Error, match="the CPU experts read fp4 weights in the checkpoint's order"):
        fusedmoe.FusedMoE(**dims, top_k=2, quant="mxfp4", backend="cpu", fp4_packing="sm90", **w)
    with pytest.raises(fusedmoe.Error, match="fp4_packing must be 'checkpoint' or 'sm90'"):
        fusedmoe.FusedMoE(**dims, top_k=2, quant="mxfp4", backend="cpu", fp4_packing="sm100", **w)
