// Host-callable entry points of the RoI family, for the pybind11 bindings. No CUDA or torch header
// is needed to include this file: streams travel as void* (a cudaStream_t), errors as int.
#pragma once

#include "roi_params.h"

namespace pygen {
namespace roi {

// Returned by the CUDA launchers for a dtype code they were not built for.
constexpr int kBadDtype = -1;

// CUDA (roi.cu): return a cudaError_t value (0 = success) or kBadDtype. Grad buffers must be
// zero-filled by the caller; nothing is allocated.
int cuda_forward(Op op, int dtype, const RoiParams& p, void* stream);
int cuda_backward(Op op, int dtype, const RoiParams& p, bool deterministic, void* stream);

// CPU (roi_cpu.cpp): OpenMP with num_threads threads; false for an unknown dtype code.
// The CPU backward is always deterministic (each grad plane has one writer).
bool cpu_forward(Op op, int dtype, const RoiParams& p, int num_threads);
bool cpu_backward(Op op, int dtype, const RoiParams& p, int num_threads);

// Verification hook: 0 = the optimised CPU loops (default); 1 = run the device per-element bodies
// on the host (forward elements, atomic-style backward serially); 2 = as 1 but the backward runs
// the deterministic per-column device bodies. Lets the host test suite check the arithmetic that
// the CUDA kernels execute.
void set_cpu_impl(int mode);
int cpu_impl();

}  // namespace roi
}  // namespace pygen
