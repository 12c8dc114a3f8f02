# The CUDA backend: Hopper (sm_90a) kernels and the CUTLASS grouped GEMMs, compiled into the
# fusedmoe library. CUTLASS headers come from the pinned nvidia-cutlass wheel
# (scripts/fetch_cutlass.sh, run here when they are missing).
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.4)
  message(FATAL_ERROR "the CUDA backend needs nvcc >= 12.4 (sm_90a, C++20), found ${CMAKE_CUDA_COMPILER_VERSION}")
endif()

set(FUSEDMOE_CUTLASS_DIR "${PROJECT_SOURCE_DIR}/third_party/cutlass-4.2.0.0" CACHE PATH
    "CUTLASS headers (include/ and util/include/) unpacked from nvidia-cutlass 4.2.0.0")
if(NOT EXISTS "${FUSEDMOE_CUTLASS_DIR}/include/cutlass/cutlass.h")
  execute_process(COMMAND bash "${PROJECT_SOURCE_DIR}/scripts/fetch_cutlass.sh" RESULT_VARIABLE fetch_rc)
  if(fetch_rc OR NOT EXISTS "${FUSEDMOE_CUTLASS_DIR}/include/cutlass/cutlass.h")
    message(FATAL_ERROR "CUTLASS headers not found in ${FUSEDMOE_CUTLASS_DIR} (scripts/fetch_cutlass.sh failed)")
  endif()
endif()

# CMake 3.25 does not know nvcc's C++20 flag (nvcc >= 12 has it).
if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()

# Machine code for sm_90a only (wgmma, setmaxnreg), in the -gencode form.
set(FUSEDMOE_CUDA_FLAGS -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -Xcompiler=-fPIC)

function(fusedmoe_cuda_objects name std)
  add_library(${name} OBJECT ${ARGN})
  set_target_properties(${name} PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD ${std} CUDA_STANDARD_REQUIRED ON
                                           CUDA_EXTENSIONS OFF POSITION_INDEPENDENT_CODE ON)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
  target_compile_options(${name} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${FUSEDMOE_CUDA_FLAGS}>")
  target_sources(fusedmoe PRIVATE $<TARGET_OBJECTS:${name}>)
endfunction()

# CUTLASS translation units: C++17, CUTLASS headers only.
fusedmoe_cuda_objects(fusedmoe_cutlass 17
  src/cuda/cutlass/grouped_gemm_bf16.cu
  src/cuda/cutlass/grouped_gemm_bf16_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_fp8_block.cu
  src/cuda/cutlass/grouped_gemm_fp8_block_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_fp8_group_scaled.cu
  src/cuda/cutlass/grouped_gemm_fp8_group_scaled_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_fp8_group_scaled_fast_accum.cu
  src/cuda/cutlass/grouped_gemm_fp8_group_scaled_fast_accum_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_fp8_channel_scaled.cu
  src/cuda/cutlass/grouped_gemm_fp8_channel_scaled_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_fp8_channel_scaled_fast_accum.cu
  src/cuda/cutlass/grouped_gemm_fp8_channel_scaled_fast_accum_pingpong64.cu
  src/cuda/cutlass/grouped_gemm_bf16_gated_coop128.cu)
target_include_directories(fusedmoe_cutlass SYSTEM PRIVATE ${FUSEDMOE_CUTLASS_DIR}/include
                           ${FUSEDMOE_CUTLASS_DIR}/util/include)

# fusedmoe's own kernels: C++20, the library's headers.
fusedmoe_cuda_objects(fusedmoe_cuda_kernels 20
  src/cuda/kernels/activation.cu
  src/cuda/kernels/batched.cu
  src/cuda/kernels/wgmma_grouped_gemm.cu
  src/cuda/kernels/decode_fused.cu
  src/cuda/kernels/ep_dispatch.cu
  src/cuda/kernels/expert_bias.cu
  src/cuda/kernels/finalize.cu
  src/cuda/kernels/fp4_dequant.cu
  src/cuda/kernels/fp4_pack.cu
  src/cuda/kernels/fp4_wgmma_gemm.cu
  src/cuda/kernels/plan.cu
  src/cuda/kernels/route_plan.cu
  src/cuda/kernels/quantize.cu
  src/cuda/kernels/router.cu
  src/cuda/kernels/small_m_gemm.cu
  src/cuda/kernels/small_m_gemm_fp4.cu
  src/cuda/kernels/tensor_map.cu)
target_compile_definitions(fusedmoe_cuda_kernels PRIVATE FUSEDMOE_WITH_CUDA)

# Host side of the backend (plain C++).
target_sources(fusedmoe PRIVATE
  src/cuda/cuda_backend.cpp
  src/cuda/experts_cuda.cpp
  src/cuda/expert_input.cpp
  src/cuda/monolithic_experts_cuda.cpp
  src/cuda/heuristics.cpp
  src/cuda/prepare_finalize_cuda.cpp
  src/cuda/prepare_finalize_ep_cuda.cpp)
target_compile_definitions(fusedmoe PUBLIC FUSEDMOE_WITH_CUDA)
target_link_libraries(fusedmoe PUBLIC CUDA::cudart_static)

# NCCL (the GPU communicator): the toolkit's or the system's.
find_path(FUSEDMOE_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
find_library(FUSEDMOE_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
if(FUSEDMOE_NCCL_INCLUDE AND FUSEDMOE_NCCL_LIBRARY)
  set(FUSEDMOE_WITH_NCCL ON)
  target_sources(fusedmoe PRIVATE src/cuda/nccl_comm.cpp)
  target_include_directories(fusedmoe PRIVATE ${FUSEDMOE_NCCL_INCLUDE})
  fusedmoe_cuda_objects(fusedmoe_nccl_window 20 src/cuda/nccl_window.cu)  # the device API behind PeerWindow
  target_include_directories(fusedmoe_nccl_window PRIVATE ${FUSEDMOE_NCCL_INCLUDE})
  target_link_libraries(fusedmoe PUBLIC ${FUSEDMOE_NCCL_LIBRARY})
  target_compile_definitions(fusedmoe PUBLIC FUSEDMOE_WITH_NCCL)
  message(STATUS "fusedmoe: NCCL communicator with ${FUSEDMOE_NCCL_LIBRARY}")
else()
  message(STATUS "fusedmoe: NCCL not found; no NCCL communicator")
endif()
