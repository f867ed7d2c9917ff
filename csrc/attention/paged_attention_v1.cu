// PagedAttention v1 (decode): one thread block per (head, sequence).
//
// Stage 4. Mirrors vllm/csrc/attention/paged_attention_v1.cu + attention_kernels.cuh, simplified
// for reading: vLLM splits each head into "thread groups" that load 16-byte vectors of K; here
// every thread owns whole context positions (phase 1) and whole output dimensions (phase 3).
//   phase 1: thread t computes q.k for positions t, t + NUM_THREADS, ... following the block
//            table (position p lives in physical block block_table[p / BLOCK_SIZE], slot p % BLOCK_SIZE)
//   phase 2: block-wide max and sum turn the logits (kept in shared memory) into probabilities
//   phase 3: thread t sums p * v over all positions for dimensions t, t + NUM_THREADS, ...
// The whole context's logits must fit in shared memory; v2 removes that limit.
#include <cuda_runtime.h>

#include "attention_utils.cuh"

namespace vllm_mini {

template <typename scalar_t, int NUM_THREADS>
__global__ void paged_attention_v1_kernel(
    scalar_t* __restrict__ out,              // [num_seqs, num_heads, head_size]
    const scalar_t* __restrict__ q,          // [num_seqs, num_heads, head_size]
    const scalar_t* __restrict__ k_cache,    // [num_blocks, block_size, num_kv_heads, head_size]
    const scalar_t* __restrict__ v_cache,    // same
    const int* __restrict__ block_tables,    // [num_seqs, max_blocks_per_seq]
    const int* __restrict__ seq_lens,        // [num_seqs]
    int max_blocks_per_seq, int num_kv_heads, int head_size, int block_size, float scale) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int num_heads = gridDim.x;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int seq_len = seq_lens[seq];
  const int* block_table = block_tables + seq * max_blocks_per_seq;

  extern __shared__ float smem[];  // [head_size] query, [seq_len] logits
  float* q_s = smem;
  float* logits = smem + head_size;
  __shared__ float red[NUM_THREADS / WARP_SIZE];

  const scalar_t* q_ptr = q + (static_cast<long>(seq) * num_heads + head) * head_size;
  for (int d = threadIdx.x; d < head_size; d += NUM_THREADS) q_s[d] = to_float(q_ptr[d]) * scale;
  __syncthreads();

  // Phase 1: logits.
  float local_max = -FLT_MAX;
  for (int pos = threadIdx.x; pos < seq_len; pos += NUM_THREADS) {
    const long block = block_table[pos / block_size];
    const scalar_t* k = k_cache + ((block * block_size + pos % block_size) * num_kv_heads + kv_head) * head_size;
    float dot = 0.f;
    for (int d = 0; d < head_size; ++d) dot += q_s[d] * to_float(k[d]);
    logits[pos] = dot;
    local_max = fmaxf(local_max, dot);
  }
  // Phase 2: softmax.
  const float max_logit = block_reduce<NUM_THREADS, true>(local_max, red);
  float local_sum = 0.f;
  for (int pos = threadIdx.x; pos < seq_len; pos += NUM_THREADS) {
    const float e = __expf(logits[pos] - max_logit);
    logits[pos] = e;
    local_sum += e;
  }
  const float inv_sum = 1.f / (block_reduce<NUM_THREADS, false>(local_sum, red) + 1e-6f);
  __syncthreads();
  // Phase 3: weighted sum of V.
  scalar_t* out_ptr = out + (static_cast<long>(seq) * num_heads + head) * head_size;
  for (int d = threadIdx.x; d < head_size; d += NUM_THREADS) {
    float acc = 0.f;
    for (int pos = 0; pos < seq_len; ++pos) {
      const long block = block_table[pos / block_size];
      const scalar_t* v = v_cache + ((block * block_size + pos % block_size) * num_kv_heads + kv_head) * head_size;
      acc += logits[pos] * to_float(v[d]);
    }
    out_ptr[d] = from_float<scalar_t>(acc * inv_sum);
  }
}

template <typename scalar_t>
void launch_v1(void* out, const void* q, const void* k, const void* v, const int* bt, const int* sl,
               int num_seqs, int num_heads, int num_kv_heads, int head_size, int block_size,
               int max_blocks_per_seq, int max_seq_len, float scale, cudaStream_t stream) {
  constexpr int NUM_THREADS = 128;
  const size_t smem = (head_size + max_seq_len) * sizeof(float);
  auto kernel = paged_attention_v1_kernel<scalar_t, NUM_THREADS>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  kernel<<<dim3(num_heads, num_seqs), NUM_THREADS, smem, stream>>>(
      static_cast<scalar_t*>(out), static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k),
      static_cast<const scalar_t*>(v), bt, sl, max_blocks_per_seq, num_kv_heads, head_size,
      block_size, scale);
}

}  // namespace vllm_mini

// Plain-pointer entry point so this file compiles without torch headers (see torch_bindings.cpp).
extern "C" void vllm_mini_paged_attention_v1(
    int dtype, void* out, const void* q, const void* k, const void* v, const int* block_tables,
    const int* seq_lens, int num_seqs, int num_heads, int num_kv_heads, int head_size,
    int block_size, int max_blocks_per_seq, int max_seq_len, float scale, cudaStream_t stream) {
  using namespace vllm_mini;
  if (dtype == kFloat32)
    launch_v1<float>(out, q, k, v, block_tables, seq_lens, num_seqs, num_heads, num_kv_heads,
                     head_size, block_size, max_blocks_per_seq, max_seq_len, scale, stream);
  else if (dtype == kFloat16)
    launch_v1<__half>(out, q, k, v, block_tables, seq_lens, num_seqs, num_heads, num_kv_heads,
                      head_size, block_size, max_blocks_per_seq, max_seq_len, scale, stream);
  else
    launch_v1<__nv_bfloat16>(out, q, k, v, block_tables, seq_lens, num_seqs, num_heads,
                             num_kv_heads, head_size, block_size, max_blocks_per_seq, max_seq_len,
                             scale, stream);
}
