// PagedAttention v2 (decode, long contexts): split the context into partitions, then reduce.
//
// Stage 4. Mirrors vllm/csrc/attention/paged_attention_v2.cu. v1 gives a whole sequence to one
// thread block, so long contexts use few SMs and need seq_len floats of shared memory. v2 launches
// one block per (head, sequence, partition of PARTITION_SIZE positions). Each block writes, for its
// partition, the max logit m_p, the sum of exp(logit - m_p) l_p, and the normalised partial output
// o_p. The reduce kernel then combines partitions exactly:
//   M = max_p m_p,  w_p = l_p * exp(m_p - M),  out = sum_p w_p * o_p / sum_p w_p.
#include <cuda_runtime.h>

#include "attention_utils.cuh"

namespace vllm_mini {

constexpr int PARTITION_SIZE = 512;

template <typename scalar_t, int NUM_THREADS>
__global__ void paged_attention_v2_kernel(
    float* __restrict__ exp_sums,    // [num_seqs, num_heads, max_partitions]
    float* __restrict__ max_logits,  // same
    float* __restrict__ tmp_out,     // [num_seqs, num_heads, max_partitions, head_size]
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k_cache,
    const scalar_t* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, int max_blocks_per_seq, int num_kv_heads, int head_size,
    int block_size, int max_partitions, float scale) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int part = blockIdx.z;
  const int num_heads = gridDim.x;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int seq_len = seq_lens[seq];
  const int start = part * PARTITION_SIZE;
  if (start >= seq_len) return;  // this sequence is shorter than the grid's longest
  const int end = min(start + PARTITION_SIZE, seq_len);
  const int* block_table = block_tables + seq * max_blocks_per_seq;

  __shared__ float q_s[256];  // head_size <= 256
  __shared__ float logits[PARTITION_SIZE];
  __shared__ float red[NUM_THREADS / WARP_SIZE];
  const scalar_t* q_ptr = q + (static_cast<long>(seq) * num_heads + head) * head_size;
  for (int d = threadIdx.x; d < head_size; d += NUM_THREADS) q_s[d] = to_float(q_ptr[d]) * scale;
  __syncthreads();

  float local_max = -FLT_MAX;
  for (int pos = start + threadIdx.x; pos < end; pos += NUM_THREADS) {
    const long block = block_table[pos / block_size];
    const scalar_t* k = k_cache + ((block * block_size + pos % block_size) * num_kv_heads + kv_head) * head_size;
    float dot = 0.f;
    for (int d = 0; d < head_size; ++d) dot += q_s[d] * to_float(k[d]);
    logits[pos - start] = dot;
    local_max = fmaxf(local_max, dot);
  }
  const float m = block_reduce<NUM_THREADS, true>(local_max, red);
  float local_sum = 0.f;
  for (int pos = start + threadIdx.x; pos < end; pos += NUM_THREADS) {
    const float e = __expf(logits[pos - start] - m);
    logits[pos - start] = e;
    local_sum += e;
  }
  const float l = block_reduce<NUM_THREADS, false>(local_sum, red);
  __syncthreads();

  const long idx = (static_cast<long>(seq) * num_heads + head) * max_partitions + part;
  if (threadIdx.x == 0) {
    max_logits[idx] = m;
    exp_sums[idx] = l;
  }
  for (int d = threadIdx.x; d < head_size; d += NUM_THREADS) {
    float acc = 0.f;
    for (int pos = start; pos < end; ++pos) {
      const long block = block_table[pos / block_size];
      const scalar_t* v = v_cache + ((block * block_size + pos % block_size) * num_kv_heads + kv_head) * head_size;
      acc += logits[pos - start] * to_float(v[d]);
    }
    tmp_out[idx * head_size + d] = acc / l;
  }
}

template <typename scalar_t, int NUM_THREADS>
__global__ void paged_attention_v2_reduce_kernel(
    scalar_t* __restrict__ out, const float* __restrict__ exp_sums,
    const float* __restrict__ max_logits, const float* __restrict__ tmp_out,
    const int* __restrict__ seq_lens, int head_size, int max_partitions) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int num_heads = gridDim.x;
  const int num_parts = (seq_lens[seq] + PARTITION_SIZE - 1) / PARTITION_SIZE;
  const long base = (static_cast<long>(seq) * num_heads + head) * max_partitions;
  float global_max = -FLT_MAX;
  for (int p = 0; p < num_parts; ++p) global_max = fmaxf(global_max, max_logits[base + p]);
  float total = 0.f;
  for (int p = 0; p < num_parts; ++p) total += exp_sums[base + p] * __expf(max_logits[base + p] - global_max);
  scalar_t* out_ptr = out + (static_cast<long>(seq) * num_heads + head) * head_size;
  for (int d = threadIdx.x; d < head_size; d += NUM_THREADS) {
    float acc = 0.f;
    for (int p = 0; p < num_parts; ++p) {
      const float w = exp_sums[base + p] * __expf(max_logits[base + p] - global_max);
      acc += w * tmp_out[(base + p) * head_size + d];
    }
    out_ptr[d] = from_float<scalar_t>(acc / total);
  }
}

template <typename scalar_t>
void launch_v2(void* out, float* exp_sums, float* max_logits, float* tmp_out, const void* q,
               const void* k, const void* v, const int* bt, const int* sl, int num_seqs,
               int num_heads, int num_kv_heads, int head_size, int block_size,
               int max_blocks_per_seq, int max_seq_len, float scale, cudaStream_t stream) {
  constexpr int NUM_THREADS = 128;
  const int max_partitions = (max_seq_len + PARTITION_SIZE - 1) / PARTITION_SIZE;
  paged_attention_v2_kernel<scalar_t, NUM_THREADS>
      <<<dim3(num_heads, num_seqs, max_partitions), NUM_THREADS, 0, stream>>>(
          exp_sums, max_logits, tmp_out, static_cast<const scalar_t*>(q),
          static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v), bt, sl,
          max_blocks_per_seq, num_kv_heads, head_size, block_size, max_partitions, scale);
  paged_attention_v2_reduce_kernel<scalar_t, NUM_THREADS>
      <<<dim3(num_heads, num_seqs), NUM_THREADS, 0, stream>>>(
          static_cast<scalar_t*>(out), exp_sums, max_logits, tmp_out, sl, head_size, max_partitions);
}

}  // namespace vllm_mini

// Scratch buffers (exp_sums, max_logits: num_seqs * num_heads * max_partitions floats; tmp_out:
// that times head_size) are allocated by the caller (torch_bindings.cpp).
extern "C" void vllm_mini_paged_attention_v2(
    int dtype, void* out, float* exp_sums, float* max_logits, float* tmp_out, const void* q,
    const void* k, const void* v, const int* block_tables, const int* seq_lens, int num_seqs,
    int num_heads, int num_kv_heads, int head_size, int block_size, int max_blocks_per_seq,
    int max_seq_len, float scale, cudaStream_t stream) {
  using namespace vllm_mini;
  if (dtype == kFloat32)
    launch_v2<float>(out, exp_sums, max_logits, tmp_out, q, k, v, block_tables, seq_lens, num_seqs,
                     num_heads, num_kv_heads, head_size, block_size, max_blocks_per_seq,
                     max_seq_len, scale, stream);
  else if (dtype == kFloat16)
    launch_v2<__half>(out, exp_sums, max_logits, tmp_out, q, k, v, block_tables, seq_lens, num_seqs,
                      num_heads, num_kv_heads, head_size, block_size, max_blocks_per_seq,
                      max_seq_len, scale, stream);
  else
    launch_v2<__nv_bfloat16>(out, exp_sums, max_logits, tmp_out, q, k, v, block_tables, seq_lens,
                             num_seqs, num_heads, num_kv_heads, head_size, block_size,
                             max_blocks_per_seq, max_seq_len, scale, stream);
}
