// pygen._cuda: the CUDA build of csrc/ (kernels compiled by nvcc, this file by the host compiler,
// cudart linked statically). Functions take integer data pointers, sizes, strides, and
// ctx = [device_index, stream_handle]; every launch is followed by cudaGetLastError and a failure
// raises RuntimeError with the CUDA error string.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <string>

#include "moe/moe_bind.h"
#include "moe/moe_launch.h"
#include "roi/roi_bind.h"
#include "roi/roi_launch.h"

namespace py = pybind11;
using pygen::roi::bind::Launch;

namespace {

[[noreturn]] void raise_cuda(const char* what, cudaError_t err) {
  throw std::runtime_error(std::string("pygen._cuda: ") + what + ": " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

// Makes the tensor's device current for the launch and restores the caller's afterwards. This
// module has its own (static) CUDA runtime, so torch's device guard does not reach it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaError_t err = cudaGetDevice(&prev_);
    if (err != cudaSuccess) raise_cuda("cudaGetDevice", err);
    if (prev_ != device) {
      err = cudaSetDevice(device);
      if (err != cudaSuccess) raise_cuda("cudaSetDevice", err);
    }
    restore_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
  bool restore_ = false;
};

void finish(int rc, int dtype) {
  if (rc == pygen::roi::kBadDtype)
    throw py::value_error("dtype code " + std::to_string(dtype) +
                          " is not built for CUDA (float32, float16, bfloat16 only)");
  if (rc != 0) raise_cuda("kernel launch", static_cast<cudaError_t>(rc));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) raise_cuda("after launch", err);
}

// Runs launch(stream) with ctx = [device_index, stream_handle]'s device current, then raises on
// a launch error (launch returns a cudaError_t value or kBadDtype).
template <typename F>
void launch_on(const std::vector<int64_t>& ctx, int dtype, F&& launch) {
  if (ctx.size() != 2) throw py::value_error("ctx must be [device_index, stream_handle]");
  DeviceGuard guard(static_cast<int>(ctx[0]));
  finish(launch(reinterpret_cast<void*>(ctx[1])), dtype);
}

struct CudaBackend {
  static void forward(const Launch& l, const std::vector<int64_t>& ctx) {
    launch_on(ctx, l.dtype, [&](void* stream) { return pygen::roi::cuda_forward(l.op, l.dtype, l.p, stream); });
  }
  static void backward(const Launch& l, bool deterministic, const std::vector<int64_t>& ctx) {
    // the deterministic kernels run one thread per grad column with 32-bit indices
    const int64_t cols = deterministic ? pygen::roi::grad_columns(l.p) : 0;
    if (cols >= (int64_t(1) << 31))
      throw py::value_error(std::string(l.fn) + ": deterministic CUDA backward supports N*C*W < 2^31 grad " +
                            "columns, got " + std::to_string(cols));
    launch_on(ctx, l.dtype,
              [&](void* stream) { return pygen::roi::cuda_backward(l.op, l.dtype, l.p, deterministic, stream); });
  }
};

struct CudaMoeBackend {
  static void align(const pygen::moe::AlignParams& p, const std::vector<int64_t>& ctx) {
    launch_on(ctx, 0, [&](void* stream) { return pygen::moe::cuda_align(p, stream); });
  }
  static void permute(pygen::moe::PermuteOp op, const pygen::moe::PermuteParams& p, const std::vector<int64_t>& ctx) {
    launch_on(ctx, p.dtype, [&](void* stream) { return pygen::moe::cuda_permute(op, p, stream); });
  }
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pygen CUDA kernels (nvcc, static cudart): RoI and MoE families. See pygen/native/.";
  pygen::roi::bind::def_roi<CudaBackend>(m);
  pygen::moe::bind::def_moe<CudaMoeBackend>(m);
  m.def("device_count", []() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
}
