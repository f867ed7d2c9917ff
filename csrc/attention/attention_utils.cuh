// Shared helpers for the CUDA PagedAttention kernels: dtype conversion and block-wide reductions.
// Mirrors the role of vllm/csrc/attention/attention_utils.cuh and dtype_*.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cfloat>

namespace vllm_mini {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

constexpr int WARP_SIZE = 32;

// Reduce within a warp with shuffles, then across warps through shared memory.
// `red` needs NUM_THREADS / WARP_SIZE floats. Every thread gets the result.
template <int NUM_THREADS, bool IS_MAX>
__device__ float block_reduce(float v, float* red) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffff, v, offset);
    v = IS_MAX ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = IS_MAX ? -FLT_MAX : 0.f;
  for (int w = 0; w < NUM_THREADS / WARP_SIZE; ++w) v = IS_MAX ? fmaxf(v, red[w]) : v + red[w];
  __syncthreads();
  return v;
}

// dtype codes shared with the torch binding (csrc/torch_bindings.cpp).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace vllm_mini
