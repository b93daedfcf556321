// Shared compiler glue for csrc/: one per-element body source for host (g++) and device (nvcc).
//
// HOST_DEVICE marks a function that both the CUDA kernels and the OpenMP CPU loops call. Under
// nvcc it is `__host__ __device__ inline`; under the host compiler it is plain `inline`, so the
// host build never needs a CUDA header.
#pragma once

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__ inline
#define PYGEN_RESTRICT __restrict__
#else
#define HOST_DEVICE inline
#define PYGEN_RESTRICT __restrict__
#endif

// True while compiling device code (the device pass of nvcc); host passes take the #else branch.
#if defined(__CUDA_ARCH__)
#define PYGEN_DEVICE_PASS 1
#else
#define PYGEN_DEVICE_PASS 0
#endif

// PYGEN_HOST_OR_DEVICE(host_expr, device_expr): the expression of the pass being compiled; the
// other one is never seen by that pass's compiler (device intrinsics stay out of host code).
#if PYGEN_DEVICE_PASS
#define PYGEN_HOST_OR_DEVICE(host_expr, device_expr) (device_expr)
#else
#define PYGEN_HOST_OR_DEVICE(host_expr, device_expr) (host_expr)
#endif
