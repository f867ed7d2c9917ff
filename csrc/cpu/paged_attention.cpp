// PagedAttention for the CPU: decode and prefill-with-context over a paged KV cache.
//
// Stage 4. Mirrors vllm/csrc/cpu/attention.cpp (vLLM's CPU backend) and, in spirit,
// csrc/attention/paged_attention_v1.cu. Layout (shared with every backend):
//   query       [num_tokens, num_heads, head_size]
//   key_cache   [num_blocks, block_size, num_kv_heads, head_size]   (value_cache likewise)
//   block_table [num_seqs, max_blocks_per_seq] int32, seq_lens [num_seqs] int32,
//   query_start_loc [num_seqs + 1] int32: sequence i's queries are the LAST q_len of its context.
//
// Work split: one task per (query token, kv head). A task handles the `group` query heads that
// share this kv head (GQA), so each K/V row is loaded once for all of them. Inside, the classic
// online softmax (Milakov & Gimelshein 2018; FlashAttention) walks the context block by block:
// logits for one block, a running max m and sum l, and the output accumulator rescaled by
// exp(m_old - m_new) whenever the max grows. Inner loops run over head_size with float
// accumulators, which the compiler vectorizes (-O3 -march=native).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline float to_float(T x) { return static_cast<float>(x); }

template <typename scalar_t>
void paged_attention_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ query,
                            const scalar_t* __restrict__ key_cache,
                            const scalar_t* __restrict__ value_cache, const int* block_table,
                            const int* seq_lens, const int* query_start_loc, int num_seqs,
                            int num_heads, int num_kv_heads, int head_size, int block_size,
                            int max_blocks_per_seq, float scale) {
  const int group = num_heads / num_kv_heads;
  const int num_tokens = query_start_loc[num_seqs];
  // token -> sequence, so a flat parallel loop over (token, kv head) can find its sequence.
  std::vector<int> token_seq(num_tokens);
  for (int s = 0; s < num_seqs; ++s)
    for (int t = query_start_loc[s]; t < query_start_loc[s + 1]; ++t) token_seq[t] = s;

  const int64_t kv_row = static_cast<int64_t>(num_kv_heads) * head_size;  // one token's K
  const int64_t kv_block = static_cast<int64_t>(block_size) * kv_row;      // one block's K

  at::parallel_for(0, static_cast<int64_t>(num_tokens) * num_kv_heads, 1, [&](int64_t begin,
                                                                              int64_t end) {
    std::vector<float> q(group * head_size), acc(group * head_size);
    std::vector<float> logits(group * block_size), m(group), l(group);
    for (int64_t task = begin; task < end; ++task) {
      const int t = static_cast<int>(task / num_kv_heads);
      const int kvh = static_cast<int>(task % num_kv_heads);
      const int s = token_seq[t];
      const int q_len = query_start_loc[s + 1] - query_start_loc[s];
      const int seq_len = seq_lens[s];
      // Causal: this query sits at position seq_len - q_len + j and sees keys 0..that position.
      const int ctx_len = seq_len - q_len + (t - query_start_loc[s]) + 1;
      const int* blocks = block_table + static_cast<int64_t>(s) * max_blocks_per_seq;

      for (int g = 0; g < group; ++g) {
        const scalar_t* qp = query + (static_cast<int64_t>(t) * num_heads + kvh * group + g) * head_size;
        for (int d = 0; d < head_size; ++d) q[g * head_size + d] = to_float(qp[d]) * scale;
        m[g] = -std::numeric_limits<float>::max();
        l[g] = 0.f;
      }
      std::fill(acc.begin(), acc.end(), 0.f);

      const int num_blocks = (ctx_len + block_size - 1) / block_size;
      for (int b = 0; b < num_blocks; ++b) {
        const int64_t base = static_cast<int64_t>(blocks[b]) * kv_block + kvh * head_size;
        const int n = std::min(block_size, ctx_len - b * block_size);
        // 1) logits for this block, for every query head of the group.
        for (int i = 0; i < n; ++i) {
          const scalar_t* kp = key_cache + base + i * kv_row;
          for (int g = 0; g < group; ++g) {
            const float* qg = &q[g * head_size];
            float dot = 0.f;
            // A float sum is a reduction the compiler may not reorder on its own; this pragma
            // allows it, so the loop becomes SIMD multiply-adds.
#pragma omp simd reduction(+ : dot)
            for (int d = 0; d < head_size; ++d) dot += qg[d] * to_float(kp[d]);
            logits[g * block_size + i] = dot;
          }
        }
        // 2) online softmax update, then 3) accumulate V weighted by the new probabilities.
        for (int g = 0; g < group; ++g) {
          float* lg = &logits[g * block_size];
          float block_max = *std::max_element(lg, lg + n);
          const float new_m = std::max(m[g], block_max);
          const float correction = std::exp(m[g] - new_m);
          float sum = 0.f;
          // With -ffast-math this loop calls glibc's vector exp (libmvec), 16 lanes at a time.
#pragma omp simd reduction(+ : sum)
          for (int i = 0; i < n; ++i) {
            lg[i] = std::exp(lg[i] - new_m);
            sum += lg[i];
          }
          l[g] = l[g] * correction + sum;
          m[g] = new_m;
          float* ag = &acc[g * head_size];
#pragma omp simd
          for (int d = 0; d < head_size; ++d) ag[d] *= correction;
          for (int i = 0; i < n; ++i) {
            const scalar_t* vp = value_cache + base + i * kv_row;
            const float p = lg[i];
#pragma omp simd
            for (int d = 0; d < head_size; ++d) ag[d] += p * to_float(vp[d]);
          }
        }
      }
      for (int g = 0; g < group; ++g) {
        scalar_t* op = out + (static_cast<int64_t>(t) * num_heads + kvh * group + g) * head_size;
        const float inv = 1.f / l[g];
        for (int d = 0; d < head_size; ++d) op[d] = static_cast<scalar_t>(acc[g * head_size + d] * inv);
      }
    }
  });
}

}  // namespace

torch::Tensor paged_attention(torch::Tensor query, torch::Tensor key_cache,
                              torch::Tensor value_cache, torch::Tensor block_table,
                              torch::Tensor seq_lens, torch::Tensor query_start_loc, double scale,
                              torch::Tensor out) {
  TORCH_CHECK(query.is_contiguous() && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_attention: query and caches must be contiguous");
  TORCH_CHECK(block_table.scalar_type() == torch::kInt32 && seq_lens.scalar_type() == torch::kInt32 &&
                  query_start_loc.scalar_type() == torch::kInt32,
              "paged_attention: block_table, seq_lens, query_start_loc must be int32");
  auto bt = block_table.contiguous();
  auto sl = seq_lens.contiguous();
  auto qsl = query_start_loc.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "paged_attention", [&] {
    paged_attention_kernel<scalar_t>(
        out.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), key_cache.data_ptr<scalar_t>(),
        value_cache.data_ptr<scalar_t>(), bt.data_ptr<int>(), sl.data_ptr<int>(), qsl.data_ptr<int>(),
        static_cast<int>(sl.size(0)), static_cast<int>(query.size(1)),
        static_cast<int>(key_cache.size(2)), static_cast<int>(query.size(2)),
        static_cast<int>(key_cache.size(1)), static_cast<int>(bt.size(1)), static_cast<float>(scale));
  });
  return out;
}

// Write each new token's K and V into its slot (vLLM: csrc/cpu/cache.cpp reshape_and_cache).
void reshape_and_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                       torch::Tensor value_cache, torch::Tensor slot_mapping) {
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kInt64, "slot_mapping must be int64");
  auto k = key.contiguous();
  auto v = value.contiguous();
  auto slots = slot_mapping.contiguous();
  const int64_t num_tokens = k.size(0);
  const int64_t row = k.size(1) * k.size(2);  // kv_heads * head_size elements per token
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "reshape_and_cache", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* kc = key_cache.data_ptr<scalar_t>();
    scalar_t* vc = value_cache.data_ptr<scalar_t>();
    const int64_t* sp = slots.data_ptr<int64_t>();
    for (int64_t t = 0; t < num_tokens; ++t) {
      const int64_t slot = sp[t];
      if (slot < 0) continue;  // padding token
      std::copy(kp + t * row, kp + (t + 1) * row, kc + slot * row);
      std::copy(vp + t * row, vp + (t + 1) * row, vc + slot * row);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention (CPU)");
  m.def("reshape_and_cache", &reshape_and_cache, "write K/V into the paged cache (CPU)");
}
