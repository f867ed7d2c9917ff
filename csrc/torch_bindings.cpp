// Torch bindings for the CUDA kernels: tensors in, raw pointers to the extern "C" launchers.
//
// Mirrors vllm/csrc/torch_bindings.cpp. Compiled by setup.py at install time, with the .cu files,
// into the module vllm_mini._C_cuda (only where torch has CUDA and nvcc exists) and called by
// vllm_mini/attention/ops/cuda_paged_attn.py. v1 serves contexts up to V1_MAX_SEQ_LEN, v2
// (partitioned) longer ones, as vLLM chooses between them.
#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

extern "C" void vllm_mini_paged_attention_v1(int, void*, const void*, const void*, const void*,
                                             const int*, const int*, int, int, int, int, int, int,
                                             int, float, cudaStream_t);
extern "C" void vllm_mini_paged_attention_v2(int, void*, float*, float*, float*, const void*,
                                             const void*, const void*, const int*, const int*, int,
                                             int, int, int, int, int, int, float, cudaStream_t);
extern "C" void vllm_mini_reshape_and_cache(int, const void*, const void*, void*, void*,
                                            const long*, int, int, cudaStream_t);

namespace {
constexpr int V1_MAX_SEQ_LEN = 8192;

int dtype_code(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat32) return 0;
  if (t.scalar_type() == torch::kFloat16) return 1;
  TORCH_CHECK(t.scalar_type() == torch::kBFloat16, "unsupported dtype ", t.scalar_type());
  return 2;
}
}  // namespace

// Decode only: one query token per sequence (query [num_seqs, num_heads, head_size]).
torch::Tensor paged_attention_decode(torch::Tensor out, torch::Tensor query, torch::Tensor key_cache,
                                     torch::Tensor value_cache, torch::Tensor block_table,
                                     torch::Tensor seq_lens, int64_t max_seq_len, double scale) {
  const int num_seqs = query.size(0), num_heads = query.size(1), head_size = query.size(2);
  const int block_size = key_cache.size(1), num_kv_heads = key_cache.size(2);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (max_seq_len <= V1_MAX_SEQ_LEN) {
    vllm_mini_paged_attention_v1(dtype_code(query), out.data_ptr(), query.data_ptr(),
                                 key_cache.data_ptr(), value_cache.data_ptr(),
                                 block_table.data_ptr<int>(), seq_lens.data_ptr<int>(), num_seqs,
                                 num_heads, num_kv_heads, head_size, block_size, block_table.size(1),
                                 max_seq_len, scale, stream);
  } else {
    const int parts = (max_seq_len + 511) / 512;
    auto f = query.options().dtype(torch::kFloat32);
    auto exp_sums = torch::empty({num_seqs, num_heads, parts}, f);
    auto max_logits = torch::empty({num_seqs, num_heads, parts}, f);
    auto tmp_out = torch::empty({num_seqs, num_heads, parts, head_size}, f);
    vllm_mini_paged_attention_v2(dtype_code(query), out.data_ptr(), exp_sums.data_ptr<float>(),
                                 max_logits.data_ptr<float>(), tmp_out.data_ptr<float>(),
                                 query.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
                                 block_table.data_ptr<int>(), seq_lens.data_ptr<int>(), num_seqs,
                                 num_heads, num_kv_heads, head_size, block_size, block_table.size(1),
                                 max_seq_len, scale, stream);
  }
  return out;
}

void reshape_and_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                       torch::Tensor value_cache, torch::Tensor slot_mapping) {
  auto k = key.contiguous();
  auto v = value.contiguous();
  vllm_mini_reshape_and_cache(dtype_code(k), k.data_ptr(), v.data_ptr(), key_cache.data_ptr(),
                              value_cache.data_ptr(), slot_mapping.data_ptr<int64_t>(), k.size(0),
                              k.size(1) * k.size(2), at::cuda::getCurrentCUDAStream());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention_decode", &paged_attention_decode, "paged attention v1/v2 (CUDA, decode)");
  m.def("reshape_and_cache", &reshape_and_cache, "write K/V into the paged cache (CUDA)");
}
