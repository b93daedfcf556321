// pygen._C: the host (CPU, OpenMP) build of csrc/. Functions take integer data pointers, sizes and
// strides (common/tensor_arg.h) and release the GIL while the OpenMP loops run.
#include <pybind11/pybind11.h>

#include <omp.h>

#include <string>

#include "moe/moe_bind.h"
#include "moe/moe_launch.h"
#include "roi/roi_bind.h"
#include "roi/roi_launch.h"

namespace py = pybind11;
using pygen::roi::bind::Launch;

namespace {

// Runs `launch` with the GIL released; a false return (an unknown dtype code) raises.
template <typename F>
void run_released(const char* fn, int dtype, F&& launch) {
  bool ok;
  {
    py::gil_scoped_release nogil;
    ok = launch();
  }
  if (!ok) throw py::value_error(std::string(fn) + ": unknown dtype code " + std::to_string(dtype));
}

struct CpuBackend {
  // ctx = [num_threads]; pygen/_ext.py passes torch.get_num_threads() so both thread pools agree.
  static int threads(const std::vector<int64_t>& ctx) {
    return ctx.empty() ? omp_get_max_threads() : static_cast<int>(ctx[0]);
  }
  static void forward(const Launch& l, const std::vector<int64_t>& ctx) {
    run_released(l.fn, l.dtype, [&] { return pygen::roi::cpu_forward(l.op, l.dtype, l.p, threads(ctx)); });
  }
  static void backward(const Launch& l, bool /*deterministic: always*/, const std::vector<int64_t>& ctx) {
    run_released(l.fn, l.dtype, [&] { return pygen::roi::cpu_backward(l.op, l.dtype, l.p, threads(ctx)); });
  }
};

struct CpuMoeBackend {
  static void align(const pygen::moe::AlignParams& p, const std::vector<int64_t>& ctx) {
    run_released("moe_align", 0, [&] { return pygen::moe::cpu_align(p, CpuBackend::threads(ctx)), true; });
  }
  static void permute(pygen::moe::PermuteOp op, const pygen::moe::PermuteParams& p, const std::vector<int64_t>& ctx) {
    run_released("moe_permute", p.dtype, [&] { return pygen::moe::cpu_permute(op, p, CpuBackend::threads(ctx)); });
  }
  static void route(const pygen::moe::RouteParams& p, const std::vector<int64_t>& ctx) {
    run_released("moe_route", p.dtype, [&] { return pygen::moe::cpu_route(p, CpuBackend::threads(ctx)); });
  }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pygen host kernels (g++ -O3 -fopenmp): RoI and MoE families. See pygen/native/.";
  pygen::roi::bind::def_roi<CpuBackend>(m);
  pygen::moe::bind::def_moe<CpuMoeBackend>(m);
  pygen::moe::bind::def_moe_route<CpuMoeBackend>(m);
  m.def("_set_cpu_impl", &pygen::roi::set_cpu_impl,
        "Verification hook: 0 = optimised CPU loops, 1 = the CUDA kernels' per-element bodies "
        "(atomic-style backward, run serially), 2 = as 1 with the deterministic per-column "
        "backward bodies.");
  m.def("_cpu_impl", &pygen::roi::cpu_impl);
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); });
}
