// reshape_and_cache: scatter this step's new K/V rows into their paged-cache slots.
//
// Stage 4. Mirrors vllm/csrc/cache_kernels.cu. One thread block per token; its threads copy the
// token's num_kv_heads * head_size elements of K and of V to slot_mapping[token] (= block_id *
// block_size + offset). Negative slots are padding and skipped.
#include <cuda_runtime.h>

#include "attention/attention_utils.cuh"

namespace vllm_mini {

template <typename scalar_t>
__global__ void reshape_and_cache_kernel(const scalar_t* __restrict__ key,
                                         const scalar_t* __restrict__ value,
                                         scalar_t* __restrict__ key_cache,
                                         scalar_t* __restrict__ value_cache,
                                         const long* __restrict__ slot_mapping, int row) {
  const long token = blockIdx.x;
  const long slot = slot_mapping[token];
  if (slot < 0) return;
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    key_cache[slot * row + i] = key[token * row + i];
    value_cache[slot * row + i] = value[token * row + i];
  }
}

template <typename scalar_t>
void launch(const void* k, const void* v, void* kc, void* vc, const long* slots, int num_tokens,
            int row, cudaStream_t stream) {
  if (num_tokens == 0) return;
  reshape_and_cache_kernel<scalar_t><<<num_tokens, 256, 0, stream>>>(
      static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v), static_cast<scalar_t*>(kc),
      static_cast<scalar_t*>(vc), slots, row);
}

}  // namespace vllm_mini

extern "C" void vllm_mini_reshape_and_cache(int dtype, const void* key, const void* value,
                                            void* key_cache, void* value_cache,
                                            const long* slot_mapping, int num_tokens, int row,
                                            cudaStream_t stream) {
  using namespace vllm_mini;
  if (dtype == kFloat32)
    launch<float>(key, value, key_cache, value_cache, slot_mapping, num_tokens, row, stream);
  else if (dtype == kFloat16)
    launch<__half>(key, value, key_cache, value_cache, slot_mapping, num_tokens, row, stream);
  else
    launch<__nv_bfloat16>(key, value, key_cache, value_cache, slot_mapping, num_tokens, row, stream);
}
