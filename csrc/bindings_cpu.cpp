// pygen._C: the host (CPU, OpenMP) build of csrc/. Functions take integer data pointers, sizes and
// strides (see roi/roi_bind.h) and release the GIL while the OpenMP loops run.
#include <pybind11/pybind11.h>

#include <omp.h>

#include "moe/moe_bind.h"
#include "moe/moe_launch.h"
#include "roi/roi_bind.h"
#include "roi/roi_launch.h"

namespace py = pybind11;
using pygen::roi::Op;
using pygen::roi::RoiParams;

namespace {

struct CpuBackend {
  // ctx = [num_threads]; the launcher passes torch.get_num_threads() so both thread pools agree.
  static int threads(const std::vector<int64_t>& ctx) {
    return ctx.empty() ? omp_get_max_threads() : static_cast<int>(ctx[0]);
  }
  static void forward(Op op, int dtype, const RoiParams& p, const std::vector<int64_t>& ctx) {
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = pygen::roi::cpu_forward(op, dtype, p, threads(ctx));
    }
    if (!ok) throw py::value_error("unknown dtype code " + std::to_string(dtype));
  }
  static void backward(Op op, int dtype, const RoiParams& p, bool /*deterministic: always*/,
                       const std::vector<int64_t>& ctx) {
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = pygen::roi::cpu_backward(op, dtype, p, threads(ctx));
    }
    if (!ok) throw py::value_error("unknown dtype code " + std::to_string(dtype));
  }
};

struct CpuMoeBackend {
  static void align(const pygen::moe::AlignParams& p, const std::vector<int64_t>& ctx) {
    py::gil_scoped_release nogil;
    pygen::moe::cpu_align(p, CpuBackend::threads(ctx));
  }
  static void permute(pygen::moe::PermuteOp op, const pygen::moe::PermuteParams& p, const std::vector<int64_t>& ctx) {
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = pygen::moe::cpu_permute(op, p, CpuBackend::threads(ctx));
    }
    if (!ok) throw py::value_error("moe_permute: unknown dtype code " + std::to_string(p.dtype));
  }
  static void route(const pygen::moe::RouteParams& p, const std::vector<int64_t>& ctx) {
    bool ok;
    {
      py::gil_scoped_release nogil;
      ok = pygen::moe::cpu_route(p, CpuBackend::threads(ctx));
    }
    if (!ok) throw py::value_error("moe_route: unknown dtype code " + std::to_string(p.dtype));
  }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pygen host kernels (g++ -O3 -fopenmp): RoI family. See pygen/native/roi.py.";
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
