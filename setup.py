"""Build the native kernels of csrc/ when vllm_mini is pip-installed. Stage 4.

Mirrors vLLM's setup.py, which compiles csrc/ during `pip install` (it drives CMake through
CMakeLists.txt and cmake/cpu_extension.cmake; one C++ file needs no CMake, so we hand torch's
own `BuildExtension` the sources and flags directly). The result is a shared library inside the
package, imported like any module:

- `vllm_mini._C`: the CPU PagedAttention kernel, csrc/cpu/paged_attention.cpp, the W4A16, GGUF
  (float and int8-activation) and FP8 matmuls, and the fused per-layer ops of
  csrc/cpu/layer_kernels.cpp (always built; needs g++ with OpenMP).
- `vllm_mini._C_cuda`: the CUDA kernels of csrc/attention/ and csrc/cache_kernels.cu, built only
  when torch was built with CUDA and a CUDA toolkit (nvcc) is installed.

Compiling here, once, replaces building on first use: the first run no longer pauses for a
minute, two checkouts no longer share one build directory, and a build killed halfway cannot
leave a lock file that makes every later run wait forever.

Install with `pip install --no-build-isolation -e .`: the kernels must be compiled against the
torch already installed (the pinned CPU wheel), and pip's default isolated build would fetch
another torch first. Everything else about the package lives in pyproject.toml. Next:
vllm_mini/attention/ops/cpu_paged_attn.py, which imports `vllm_mini._C`.
"""

from __future__ import annotations

import platform

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:
    raise SystemExit(
        "building vllm_mini's kernels needs the installed torch: install torch==2.13.0 first, "
        "then `pip install --no-build-isolation -e .` (an isolated build cannot see it)"
    ) from e

CPU_CFLAGS = [
    "-O3",
    # The build machine's vector instructions (AVX-512 where it has them): the kernel's fast path
    # is chosen at compile time, so the library suits this machine, like vLLM's CPU build.
    "-march=native",
    "-fopenmp",
    # Lets float sums reorder into SIMD lanes and exp use glibc's vector version (libmvec). The
    # kernel never relies on inf or NaN (its maxima start at the lowest float, not -inf), so the
    # finite-math part of the flag is safe, and it is the part that enables libmvec.
    "-ffast-math",
]
if platform.machine() in ("x86_64", "AMD64"):
    # gcc prefers 256-bit vectors when tuning for recent Intel cores; the loops it vectorizes
    # itself (the portable path, the reduce) run faster with all 512 bits where they exist.
    CPU_CFLAGS.append("-mprefer-vector-width=512")


def cpu_extension() -> CppExtension:
    return CppExtension(
        name="vllm_mini._C",
        sources=[
            "csrc/cpu/paged_attention.cpp",
            "csrc/cpu/w4a16_gemm.cpp",
            "csrc/cpu/gguf_gemm.cpp",
            "csrc/cpu/layer_kernels.cpp",
            "csrc/cpu/gguf_gemm_q8.cpp",
            "csrc/cpu/fp8_gemm.cpp",
            "csrc/cpu/int8_quant.cpp",
            "csrc/cpu/dense_gemm.cpp",
        ],
        # An edited header rebuilds too; sdists carry them.
        depends=[
            "csrc/cpu/cpu_types_x86.hpp",
            "csrc/cpu/cpu_vec_io.hpp",
            "csrc/cpu/gguf_q8_quantize.hpp",
        ],
        extra_compile_args={"cxx": CPU_CFLAGS},
        extra_link_args=["-fopenmp"],
    )


def cuda_extension() -> CUDAExtension | None:
    """The CUDA kernels, or None where torch or the machine cannot build them."""
    # A CPU-only torch has no CUDA headers and libraries to link against, and nvcc is needed to
    # compile the .cu files; csrc/check_nvcc.sh still compile-checks them without either.
    if torch.version.cuda is None or CUDA_HOME is None:
        return None
    return CUDAExtension(
        name="vllm_mini._C_cuda",
        sources=[
            "csrc/torch_bindings.cpp",
            "csrc/attention/paged_attention_v1.cu",
            "csrc/attention/paged_attention_v2.cu",
            "csrc/cache_kernels.cu",
        ],
        depends=["csrc/attention/attention_utils.cuh"],
        include_dirs=["csrc"],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++17"]},
    )


ext_modules = [cpu_extension()]
cuda_ext = cuda_extension()
if cuda_ext is not None:
    ext_modules.append(cuda_ext)

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtension})
