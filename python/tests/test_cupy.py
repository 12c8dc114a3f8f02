"""cupy arrays through DLPack on the CUDA backend (needs cupy, a Hopper GPU and the CUDA backend;
skipped otherwise): bf16 as uint16 bits like numpy, output allocated by cupy on the input's device,
work on cupy's current stream; the result equals the CPU backend's on the same numpy inputs within
bf16 tolerance."""
import numpy as np
import pytest

import fusedmoe

cupy = pytest.importorskip("cupy")
if not fusedmoe.backend_available("cuda"):
    pytest.skip("the CUDA backend is not built", allow_module_level=True)
try:
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no GPU", allow_module_level=True)
except cupy.cuda.runtime.CUDARuntimeError:
    pytest.skip("no GPU", allow_module_level=True)

E, K, I, M, TOP_K = 8, 256, 128, 11, 2


def test_cupy_arrays_on_a_side_stream_equal_the_cpu_backend():
    rng = np.random.default_rng(7)
    w13 = fusedmoe.to_bf16_bits(rng.standard_normal((E, 2 * I, K)) * K ** -0.5)
    w2 = fusedmoe.to_bf16_bits(rng.standard_normal((E, K, I)) * I ** -0.5)
    hidden = fusedmoe.to_bf16_bits(rng.standard_normal((M, K)))
    logits = rng.standard_normal((M, E)).astype(np.float32)
    cpu = fusedmoe.FusedMoE(num_experts=E, hidden_size=K, intermediate_size=I, top_k=TOP_K, w13=w13, w2=w2,
                            backend="cpu")
    expect = fusedmoe.from_bf16_bits(cpu(hidden, logits)).astype(np.float64)
    gw13, gw2 = cupy.asarray(w13), cupy.asarray(w2)
    gpu = fusedmoe.FusedMoE(num_experts=E, hidden_size=K, intermediate_size=I, top_k=TOP_K, w13=gw13, w2=gw2,
                            backend="cuda")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out = gpu(cupy.asarray(hidden), cupy.asarray(logits))
        assert isinstance(out, cupy.ndarray) and out.dtype == cupy.uint16
    stream.synchronize()
    got = fusedmoe.from_bf16_bits(cupy.asnumpy(out)).astype(np.float64)
    assert np.all(np.abs(got - expect) <= 1e-2 * np.abs(expect).max() + 2e-2 * np.abs(expect))
