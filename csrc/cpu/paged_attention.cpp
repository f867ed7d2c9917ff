// PagedAttention for the CPU: decode and prefill-with-context over a paged KV cache.
//
// Stage 4. Mirrors vllm/csrc/cpu/attention.cpp (vLLM's CPU backend), with the work split of
// csrc/attention/paged_attention_v2.cu. Layout (shared with every backend):
//   query       [num_tokens, num_heads, head_size]  (rows may be strided: a view of the qkv
//                                                    output; each row's heads are contiguous)
//   key_cache   [num_blocks, block_size, num_kv_heads, head_size]   (value_cache likewise)
//   block_table [num_seqs, max_blocks_per_seq] int32, seq_lens [num_seqs] int32,
//   query_start_loc [num_seqs + 1] int32: sequence i's queries are the LAST q_len of its context.
//
// A task is one query token and one partition of at most 128 context positions, for all heads:
// each cache block is read front to back (a position's row holds every kv head), and the query
// heads that share a kv head (GQA) reuse its K/V rows from the L1 cache. A task makes three
// passes: logits = q.k for every position, softmax, out = sum_j p_j v_j. Each pass is a long run
// of independent vector work; measured faster here than an online softmax block by block, where
// each block's work waits on the running max of the one before. Tokens whose context spans
// several partitions leave (max, sum, unnormalised output) per partition; a reduce step rescales
// them to the global max and adds them up (v2's reduce kernel). The partition length is fixed,
// not chosen per step: a token's partitions, hence the order of its float sums, then depend on
// its own context only, never on how many tokens share the step or on the thread count, so a
// request's output does not change with its batch neighbours or when it is preempted and
// recomputed (batch invariance, as the int8 GGUF matmul of gguf_gemm_q8.cpp keeps it too).
//
// Two implementations of a task: plain loops (any CPU, any head size) and AVX-512 intrinsics, 16
// floats per instruction, used when the compiler targets AVX-512 and head_size is 64, 128 or 256.
// The tests run both (`portable=True` forces the plain loops). Compiled by setup.py at install
// time into the module vllm_mini._C, called by vllm_mini/attention/ops/cpu_paged_attn.py.
// Next: cpu_types_x86.hpp, then csrc/attention/paged_attention_v2.cu.
#include <torch/extension.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include "cpu_types_x86.hpp"
#endif

namespace {

// Positions per task (v2's PARTITION_SIZE is 512): short enough that one decode token over a
// context of a few hundred positions still feeds both cores of a small CPU, long enough that a
// prefill's tokens (each split into up to 8 partitions at 1,024 new tokens) keep the reduce cheap.
constexpr int kPartitionLen = 128;

template <typename scalar_t>
struct Args {
  const scalar_t *query, *key_cache, *value_cache;
  const int *block_table, *seq_lens, *query_start_loc;
  int num_seqs, num_heads, num_kv_heads, head_size, block_size, max_blocks_per_seq;
  float scale;
  int64_t query_row_stride;  // elements from one token's query row to the next
  int64_t row() const { return static_cast<int64_t>(num_kv_heads) * head_size; }  // 1 position
};

struct Partition {    // one task's slice of a sequence's context: positions [start, start + len)
  const int* blocks;  // the sequence's row of the block table
  int start, len;
};

template <typename scalar_t>  // logical block b of the sequence (counted from position 0)
const scalar_t* block_start(const Args<scalar_t>& a, const scalar_t* cache, const Partition& p,
                            int b) {
  return cache + static_cast<int64_t>(p.blocks[b]) * a.block_size * a.row();
}

// Thread-lifetime scratch (a decode step allocates nothing), 64-byte aligned so that no 16-float
// vector load straddles two cache lines. Slot tells a thread's buffers apart.
template <int Slot>
float* thread_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n + 16) buf.resize(n + 16);
  const size_t misalign = reinterpret_cast<uintptr_t>(buf.data()) % 64;
  return buf.data() + (misalign ? (64 - misalign) / sizeof(float) : 0);
}

// ---- Portable task: the three passes as plain loops. logits: [num_heads, p.len] ---------------
template <typename scalar_t>
void attend_portable(const Args<scalar_t>& a, const Partition& p, const float* q, float* logits,
                     float* acc, float* m, float* l) {
  const int H = a.num_heads, G = H / a.num_kv_heads, D = a.head_size, bs = a.block_size;
  const int first = p.start / bs, num_blocks = (p.start + p.len + bs - 1) / bs - first;
  for (int b = 0; b < num_blocks; ++b) {  // 1) logits[h][j] = q_h . k_j
    const scalar_t* kb = block_start(a, a.key_cache, p, first + b);
    for (int i = 0; i < std::min(bs, p.len - b * bs); ++i) {
      for (int h = 0; h < H; ++h) {
        const scalar_t* k = kb + i * a.row() + (h / G) * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += q[h * D + d] * static_cast<float>(k[d]);
        logits[h * p.len + b * bs + i] = dot;
      }
    }
  }
  for (int h = 0; h < H; ++h) {  // 2) softmax, left unnormalised: p_j = exp(x_j - max)
    float* x = logits + h * p.len;
    const float max = *std::max_element(x, x + p.len);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < p.len; ++j) {
      x[j] = std::exp(x[j] - max);  // -ffast-math: glibc's vector exp (libmvec)
      sum += x[j];
    }
    m[h] = max;
    l[h] = sum;
  }
  std::fill(acc, acc + H * D, 0.f);
  for (int b = 0; b < num_blocks; ++b) {  // 3) acc_h = sum_j p_hj v_j
    const scalar_t* vb = block_start(a, a.value_cache, p, first + b);
    for (int i = 0; i < std::min(bs, p.len - b * bs); ++i) {
      for (int h = 0; h < H; ++h) {
        const scalar_t* v = vb + i * a.row() + (h / G) * D;
        const float w = logits[h * p.len + b * bs + i];
#pragma omp simd
        for (int d = 0; d < D; ++d) acc[h * D + d] += w * static_cast<float>(v[d]);
      }
    }
  }
}

#if defined(__AVX512F__)
// ---- AVX-512 task: the same three passes, 16 floats per instruction (helpers: cpu_types_x86.hpp).
using namespace cpu_x86;

template <typename scalar_t, int D>
void attend_avx512(const Args<scalar_t>& a, const Partition& p, const float* q, float* logits,
                   float* acc, float* m, float* l) {
  constexpr int C = D / 16;  // vectors per head
  const int H = a.num_heads, G = H / a.num_kv_heads, bs = a.block_size;
  const int64_t row = a.row(), block_elems = bs * row;
  const int first = p.start / bs, num_blocks = (p.start + p.len + bs - 1) / bs - first;
  auto key_block = [&](int b) { return block_start(a, a.key_cache, p, first + b); };
  auto value_block = [&](int b) { return block_start(a, a.value_cache, p, first + b); };
  for (int b = 0; b < num_blocks; ++b) {  // 1) logits, 16 positions of a block at a time
    const scalar_t* kb = key_block(b);
    if (b + 1 < num_blocks) prefetch_block(key_block(b + 1), block_elems);
    const int n = std::min(bs, p.len - b * bs);
    for (int r0 = 0; r0 < n; r0 += 16) {
      const int rows = std::min(16, n - r0);
      for (int h = 0; h < H; ++h) {
        const scalar_t* k = kb + r0 * row + (h / G) * D;
        __m512 qh[C], dots[16];
        for (int c = 0; c < C; ++c) qh[c] = _mm512_loadu_ps(q + h * D + 16 * c);
#pragma GCC unroll 16  // unrolled, the 16 dots stay in registers
        for (int i = 0; i < 16; ++i) {
          __m512 dot = _mm512_setzero_ps();  // rows past the end of the block add zeros
          if (i < rows)
            for (int c = 0; c < C; ++c)
              dot = _mm512_fmadd_ps(qh[c], load16(k + i * row + 16 * c), dot);
          dots[kButterfly[i]] = dot;
        }
        _mm512_mask_storeu_ps(logits + h * p.len + b * bs + r0, first_lanes(rows), sum16x16(dots));
      }
    }
  }
  prefetch_block(value_block(0), block_elems);
  for (int h = 0; h < H; ++h) {  // 2) softmax, left unnormalised: p_j = exp(x_j - max)
    float* x = logits + h * p.len;
    __m512 vmax = _mm512_set1_ps(std::numeric_limits<float>::lowest());
    for (int j = 0; j < p.len; j += 16)
      vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, first_lanes(p.len - j), x + j));
    m[h] = _mm512_reduce_max_ps(vmax);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < p.len; j += 16) {
      const __mmask16 valid = first_lanes(p.len - j);
      const __m512 xj = _mm512_maskz_loadu_ps(valid, x + j);
      const __m512 e = exp512(_mm512_sub_ps(xj, _mm512_set1_ps(m[h])));
      _mm512_mask_storeu_ps(x + j, valid, e);
      sum = _mm512_mask_add_ps(sum, valid, sum, e);
    }
    l[h] = _mm512_reduce_add_ps(sum);
  }
  std::fill(acc, acc + H * D, 0.f);
  for (int b = 0; b < num_blocks; ++b) {  // 3) acc_h += p_hj v_j, block by block
    const scalar_t* vb = value_block(b);
    if (b + 1 < num_blocks) prefetch_block(value_block(b + 1), block_elems);
    const int n = std::min(bs, p.len - b * bs);
    for (int h = 0; h < H; ++h) {
      const scalar_t* v = vb + (h / G) * D;
      const float* w = logits + h * p.len + b * bs;
      __m512 o[C];  // the head's output stays in registers for the whole block
      for (int c = 0; c < C; ++c) o[c] = _mm512_loadu_ps(acc + h * D + 16 * c);
      for (int i = 0; i < n; ++i) {
        const __m512 wi = _mm512_set1_ps(w[i]);
        for (int c = 0; c < C; ++c) o[c] = _mm512_fmadd_ps(wi, load16(v + i * row + 16 * c), o[c]);
      }
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + h * D + 16 * c, o[c]);
    }
  }
}
#endif

// One task. Per head h: m = max_j x_j, l = sum_j exp(x_j - m), acc = sum_j exp(x_j - m) v_j.
template <typename scalar_t>
void attend(const Args<scalar_t>& a, const Partition& p, const float* q, float* logits, float* acc,
            float* m, float* l, bool portable) {
#if defined(__AVX512F__)
  if (!portable) {
    switch (a.head_size) {  // the head sizes the vector code is compiled for
      case 64: return attend_avx512<scalar_t, 64>(a, p, q, logits, acc, m, l);
      case 128: return attend_avx512<scalar_t, 128>(a, p, q, logits, acc, m, l);
      case 256: return attend_avx512<scalar_t, 256>(a, p, q, logits, acc, m, l);
    }
  }
#endif
  attend_portable(a, p, q, logits, acc, m, l);
}

// out = acc / l per head. One out-of-line copy serves the direct path and the reduce, so that a
// token whose context fits one partition gets the same bits whether its step needed partials.
template <typename scalar_t>
__attribute__((noinline)) void normalise(const float* acc, const float* l, int H, int D,
                                         scalar_t* out) {
  for (int i = 0; i < H * D; ++i) out[i] = static_cast<scalar_t>(acc[i] / l[i / D]);
}

template <typename scalar_t>
void paged_attention_kernel(const Args<scalar_t>& a, scalar_t* out, bool portable) {
  const int H = a.num_heads, D = a.head_size, bs = a.block_size;
  const int num_tokens = a.query_start_loc[a.num_seqs];
  if (num_tokens == 0) return;
  const int max_len = std::max(1, *std::max_element(a.seq_lens, a.seq_lens + a.num_seqs));
  const int threads = at::get_num_threads();
  const int part_len = std::max(1, kPartitionLen / bs) * bs;  // whole blocks
  auto num_parts = [&] { return (max_len + part_len - 1) / part_len; };
  const int parts = num_parts();
  const int64_t num_tasks = static_cast<int64_t>(num_tokens) * parts;
  const int stride = (H * D + 2 * H + 15) / 16 * 16;  // a partial (acc, m, l) in whole lines
  float* partials = parts > 1 ? thread_scratch<0>(num_tasks * stride) : nullptr;

  // A shared counter hands out tasks: a thread that finishes early takes the next one.
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, std::min<int64_t>(threads, num_tasks), 1, [&](int64_t, int64_t) {
    float* q = thread_scratch<1>(H * D + H * part_len + stride);
    float* logits = q + H * D;
    for (int64_t task; (task = next_task++) < num_tasks;) {
      const int t = static_cast<int>(task / parts), part = static_cast<int>(task % parts);
      const int* qsl = a.query_start_loc;
      const int s = static_cast<int>(std::upper_bound(qsl, qsl + a.num_seqs + 1, t) - qsl) - 1;
      // Causal: the j-th new token of sequence s sits at position seq_len - q_len + j.
      const int ctx_len = a.seq_lens[s] - (qsl[s + 1] - qsl[s]) + (t - qsl[s]) + 1;
      const Partition p{a.block_table + static_cast<int64_t>(s) * a.max_blocks_per_seq,
                        part * part_len, std::min(part_len, ctx_len - part * part_len)};
      float* acc = parts > 1 ? partials + task * stride : logits + H * part_len;
      float *m = acc + H * D, *l = m + H;
      if (p.len <= 0) {  // past this token's context: an empty partial, skipped by the reduce
        std::fill(l, l + H, 0.f);
        continue;
      }
      const scalar_t* qt = a.query + static_cast<int64_t>(t) * a.query_row_stride;
      for (int i = 0; i < H * D; ++i) q[i] = static_cast<float>(qt[i]) * a.scale;
      attend(a, p, q, logits, acc, m, l, portable);
      if (parts == 1) normalise(acc, l, H, D, out + static_cast<int64_t>(t) * H * D);
    }
  });
  if (parts == 1) return;
  // Reduce (v2): out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p, with M = max_p m_p.
  at::parallel_for(0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    float* o = thread_scratch<2>(D);
    for (int64_t t = begin; t < end; ++t) {
      const float* tp = partials + t * parts * stride;  // this token's partials
      int only = -1, filled = 0;  // a context within one partition: no merge, as when parts == 1
      for (int p = 0; p < parts; ++p)
        if (tp[p * stride + H * D + H] > 0.f) only = p, ++filled;
      if (filled == 1) {
        normalise(tp + only * stride, tp + only * stride + H * D + H, H, D, out + t * H * D);
        continue;
      }
      for (int h = 0; h < H; ++h) {
        auto m = [&](int p) { return tp[p * stride + H * D + h]; };
        auto l = [&](int p) { return tp[p * stride + H * D + H + h]; };
        float big_m = std::numeric_limits<float>::lowest(), big_l = 0.f;
        for (int p = 0; p < parts; ++p)
          if (l(p) > 0.f) big_m = std::max(big_m, m(p));  // l == 0: an empty partition
        std::fill(o, o + D, 0.f);
        for (int p = 0; p < parts; ++p) {
          if (l(p) == 0.f) continue;
          const float w = std::exp(m(p) - big_m);
          big_l += w * l(p);
          for (int d = 0; d < D; ++d) o[d] += w * tp[p * stride + h * D + d];
        }
        for (int d = 0; d < D; ++d) out[(t * H + h) * D + d] = static_cast<scalar_t>(o[d] / big_l);
      }
    }
  });
}

}  // namespace

// A [tokens, heads, head_size] tensor whose rows may be strided (a view of the qkv output) but
// whose heads within a row are one run: the kernels read it in place; anything else is copied.
static bool rows_contiguous(const torch::Tensor& t) {
  return t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2);
}

torch::Tensor paged_attention(torch::Tensor query, torch::Tensor key_cache,
                              torch::Tensor value_cache, torch::Tensor block_table,
                              torch::Tensor seq_lens, torch::Tensor query_start_loc, double scale,
                              torch::Tensor out, bool portable) {
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous() && out.is_contiguous(),
              "paged_attention: out and the caches must be contiguous");
  TORCH_CHECK(query.dim() == 3, "paged_attention: query must be [num_tokens, heads, head_size]");
  if (!rows_contiguous(query)) query = query.contiguous();
  TORCH_CHECK(block_table.scalar_type() == torch::kInt32 &&
                  seq_lens.scalar_type() == torch::kInt32 &&
                  query_start_loc.scalar_type() == torch::kInt32,
              "paged_attention: block_table, seq_lens, query_start_loc must be int32");
  auto bt = block_table.contiguous();
  auto sl = seq_lens.contiguous();
  auto qsl = query_start_loc.contiguous();
  AT_DISPATCH_V2(query.scalar_type(), "paged_attention", AT_WRAP([&] {
    const Args<scalar_t> a{query.data_ptr<scalar_t>(), key_cache.data_ptr<scalar_t>(),
                           value_cache.data_ptr<scalar_t>(), bt.data_ptr<int>(), sl.data_ptr<int>(),
                           qsl.data_ptr<int>(), static_cast<int>(sl.size(0)),
                           static_cast<int>(query.size(1)), static_cast<int>(key_cache.size(2)),
                           static_cast<int>(query.size(2)), static_cast<int>(key_cache.size(1)),
                           static_cast<int>(bt.size(1)), static_cast<float>(scale),
                           query.stride(0)};
    paged_attention_kernel(a, out.data_ptr<scalar_t>(), portable);
  }), at::kFloat, at::kBFloat16, at::kHalf);
  return out;
}

// Write each new token's K and V into its slot (vLLM: csrc/cpu/cache.cpp reshape_and_cache).
// key/value may be row-strided views of the qkv output, as long as each token's row is one run.
void reshape_and_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                       torch::Tensor value_cache, torch::Tensor slot_mapping) {
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kInt64, "slot_mapping must be int64");
  auto k = rows_contiguous(key) ? key : key.contiguous();
  auto v = rows_contiguous(value) ? value : value.contiguous();
  auto slots = slot_mapping.contiguous();
  const int64_t num_tokens = k.size(0);
  const int64_t row = k.size(1) * k.size(2);  // kv_heads * head_size elements per token
  const int64_t k_stride = k.stride(0), v_stride = v.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "reshape_and_cache", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* kc = key_cache.data_ptr<scalar_t>();
    scalar_t* vc = value_cache.data_ptr<scalar_t>();
    const int64_t* sp = slots.data_ptr<int64_t>();
    for (int64_t t = 0; t < num_tokens; ++t) {
      const int64_t slot = sp[t];
      if (slot < 0) continue;  // padding token
      std::copy(kp + t * k_stride, kp + t * k_stride + row, kc + slot * row);
      std::copy(vp + t * v_stride, vp + t * v_stride + row, vc + slot * row);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention (CPU)", py::arg("query"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("block_table"), py::arg("seq_lens"),
        py::arg("query_start_loc"), py::arg("scale"), py::arg("out"), py::arg("portable") = false);
  m.def("reshape_and_cache", &reshape_and_cache, "write K/V into the paged cache (CPU)");
}
