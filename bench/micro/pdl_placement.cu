// Where do a programmatic dependent's blocks land? The question behind the small-M GEMMs' launch without PDL
// (src/cuda/kernels/small_m_gemm.cu, session 27: GEMM2 up to 2x slower as a programmatic dependent of GEMM1,
// from one graph to the next). Two memory-bound kernels shaped like a decode step's GEMM1 and GEMM2 (128-thread
// blocks, each streaming its own slice of "weights" with 16-byte loads; A triggers its dependents after its
// loop, as the small-M kernel does) run in a CUDA graph, B plain or as a programmatic dependent of A. Each of
// B's blocks records its SM and start/end times, so every graph instance prints B's span, how many SMs B used
// and the most B blocks one SM took.
//   nvcc -O3 -arch=sm_90a -o pdl_placement bench/micro/pdl_placement.cu && ./pdl_placement
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                       \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

struct BlockTrace {
  unsigned sm;
  unsigned long long start, end;
};

__device__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

// Each block streams bytes_per_block bytes of w from its own offset. trace: one record per block, or null.
__global__ void __launch_bounds__(128) stream_kernel(const uint4* w, size_t vec_per_block, unsigned* sink,
                                                     BlockTrace* trace) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const unsigned long long t0 = now_ns();
  const uint4* p = w + blockIdx.x * vec_per_block;
  unsigned acc = 0;
  for (size_t i = threadIdx.x; i < vec_per_block; i += 4 * blockDim.x) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const size_t j = i + u * blockDim.x;
      v[u] = j < vec_per_block ? __ldg(p + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x + v[u].y * 3 + v[u].z * 5 + v[u].w * 7;
  }
  asm volatile("griddepcontrol.launch_dependents;" :::);
  if (acc == 0x9e3779b9u) sink[0] = acc;
  __syncthreads();
  if (trace && threadIdx.x == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %smid;" : "=r"(sm));
    trace[blockIdx.x] = {sm, t0, now_ns()};
  }
}

struct Shape {
  const char* name;
  int a_blocks;
  size_t a_bytes;  // per block
  int b_blocks;
  size_t b_bytes;
};

void launch(const Shape& s, bool b_pdl, int smem, const uint4* w, unsigned* sink, BlockTrace* trace,
            cudaStream_t st) {
  cudaLaunchConfig_t c{};
  c.blockDim = dim3(128);
  c.dynamicSmemBytes = smem;
  c.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  c.attrs = at;
  c.gridDim = dim3(s.a_blocks);
  c.numAttrs = 1;
  CHECK(cudaLaunchKernelEx(&c, stream_kernel, w, s.a_bytes / 16, sink, static_cast<BlockTrace*>(nullptr)));
  c.gridDim = dim3(s.b_blocks);
  c.numAttrs = b_pdl ? 1 : 0;
  const uint4* wb = w + s.a_blocks * (s.a_bytes / 16);
  CHECK(cudaLaunchKernelEx(&c, stream_kernel, wb, s.b_bytes / 16, sink, trace));
}

int main(int argc, char** argv) {
  const int smem = argc > 1 ? std::atoi(argv[1]) : 24 * 1024;  // caps blocks per SM as the real kernels' use does
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_kernel, 128, smem));
  std::printf("SMs %d, blocks per SM %d (dynamic smem %d B)\n", sms, per_sm, smem);
  const Shape shapes[] = {
      {"mixtral 1 token", 3584, 131072, 512, 458752},
      {"qwen3 1 token", 768, 65536, 1024, 24576},
      {"mixtral 16 tokens", 14336, 131072, 2048, 458752},
  };
  size_t max_bytes = 0;
  for (const Shape& s : shapes) max_bytes = std::max(max_bytes, s.a_blocks * s.a_bytes + s.b_blocks * s.b_bytes);
  uint4* w;
  unsigned* sink;
  BlockTrace* trace;
  CHECK(cudaMalloc(&w, max_bytes));
  CHECK(cudaMemset(w, 1, max_bytes));
  CHECK(cudaMalloc(&sink, 4));
  CHECK(cudaMalloc(&trace, 16384 * sizeof(BlockTrace)));
  cudaStream_t st;
  CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::printf("%-18s %-5s %4s %9s %9s %6s %9s\n", "shape", "B", "inst", "step_us", "B_span_us", "B_SMs",
              "max_B/SM");
  for (const Shape& s : shapes) {
    for (int pdl = 0; pdl < 2; ++pdl) {
      for (int inst = 0; inst < 6; ++inst) {
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        launch(s, pdl, smem, w, sink, trace, st);
        CHECK(cudaStreamEndCapture(st, &g));
        CHECK(cudaGraphInstantiate(&ge, g, 0));
        std::vector<float> ts;
        for (int r = 0; r < 15; ++r) {
          CHECK(cudaEventRecord(e0, st));
          CHECK(cudaGraphLaunch(ge, st));
          CHECK(cudaEventRecord(e1, st));
          CHECK(cudaEventSynchronize(e1));
          float ms;
          CHECK(cudaEventElapsedTime(&ms, e0, e1));
          ts.push_back(ms * 1000);
        }
        std::sort(ts.begin(), ts.end());
        std::vector<BlockTrace> tr(s.b_blocks);
        CHECK(cudaMemcpy(tr.data(), trace, s.b_blocks * sizeof(BlockTrace), cudaMemcpyDeviceToHost));
        unsigned long long lo = ~0ull, hi = 0;
        std::vector<int> per(1024, 0);
        for (const BlockTrace& b : tr) lo = std::min(lo, b.start), hi = std::max(hi, b.end), ++per[b.sm];
        const int used = static_cast<int>(std::count_if(per.begin(), per.end(), [](int n) { return n > 0; }));
        std::printf("%-18s %-5s %4d %9.1f %9.1f %6d %9d\n", s.name, pdl ? "pdl" : "plain", inst, ts[ts.size() / 2],
                    (hi - lo) / 1e3, used, *std::max_element(per.begin(), per.end()));
        CHECK(cudaGraphExecDestroy(ge));
        CHECK(cudaGraphDestroy(g));
      }
    }
  }
  return 0;
}
