/* fusedmoe C API: one MoE layer over caller-owned device (or host) memory, for engines and
 * FFIs (ctypes, cffi) that cannot use the C++ API. Every function returns 0 on success and
 * otherwise copies the fusedmoe::Error message into err (if not null). Pointers are raw data
 * pointers in the layouts of fusedmoe/weights.h; nothing is copied or owned, except that CUDA
 * layers given fp4 weights in the checkpoint's order keep a packed copy of w13 and w2 (pack them
 * in place with fmoe_pack_fp4_weights_sm90 and set fp4_packing = 1 to avoid it). */
#ifndef FUSEDMOE_C_API_H
#define FUSEDMOE_C_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fmoe_layer fmoe_layer;

typedef struct fmoe_layer_desc {
  int64_t num_experts, hidden_size, intermediate_size;
  int32_t top_k;
  const char* quant;       /* "bf16", "fp8-block", ... (the CLI names) */
  const char* activation;  /* "silu", "gelu", "gelu-tanh", "swiglu-oai", "relu2" */
  const char* routing;     /* "softmax-topk", "topk-softmax", "softmax-topk-renormalize", "deepseek-v3", ... */
  int32_t num_expert_group, topk_group, renormalize;
  float routed_scaling_factor;
  const void* correction_bias; /* f32 [E] or null */
  int32_t device;              /* -1: CPU, else the CUDA device index */
  const void *w13, *w2, *w13_scale, *w2_scale; /* every scheme's layout: fusedmoe/weights.h */
  int32_t use_monolithic;
  /* The scheme's other tensors, null where it has none: nvfp4's f32 [E] global scales,
   * fp8-tensor's f32 [1] static activation scales, optional f32 expert biases [E, N1] / [E, K]. */
  const void *w13_global_scale, *w2_global_scale, *a13_scale, *a2_scale, *w13_bias, *w2_bias;
  /* fp4 (nvfp4, mxfp4) w13 / w2: 0 in the checkpoint's order, 1 in the sm90 packing (fusedmoe/formats.h). */
  int32_t fp4_packing;
} fmoe_layer_desc;

int fmoe_layer_create(const fmoe_layer_desc* desc, fmoe_layer** out, char* err, size_t err_len);
/* Rewrites the fp4 w13 and w2 that desc describes (fp4_packing 0) into the sm90 packing, in place, on their
 * device; synchronous. Then create layers with fp4_packing = 1. */
int fmoe_pack_fp4_weights_sm90(const fmoe_layer_desc* desc, char* err, size_t err_len);
void fmoe_layer_destroy(fmoe_layer* layer);
size_t fmoe_layer_workspace_bytes(const fmoe_layer* layer, int64_t num_tokens);
/* hidden bf16 [M, K]; router_logits f32 [M, E]; out bf16 [M, K]; workspace (may be null: then
 * allocated per call, not capturable) of workspace_bytes(M); stream: a cudaStream_t or null. */
int fmoe_layer_forward(const fmoe_layer* layer, const void* hidden, const void* router_logits, void* out,
                       int64_t num_tokens, void* workspace, void* stream, char* err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif
