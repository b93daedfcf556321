// How a tensor crosses into the pybind11 bindings, and the memory-safety checks every family's
// bindings run on it before a launch.
//
// pygen/_ext.py::call (the one Python path into pygen._C / pygen._cuda) turns each torch tensor
// into a TensorArg (data_ptr, sizes, strides, dtype code of dtype.h; -1 for a dtype no kernel
// reads) and appends ctx: [num_threads] for the CPU module, [device_index, stream_handle] for the
// CUDA module. No torch type or header is involved, so one build works with any torch.
//
// The registered ops (torch.ops.pygen.*) can be called without pygen.ops' validation (TorchScript,
// direct calls), so the bindings check what would otherwise read or write out of bounds: ranks,
// sizes, the dtypes the kernels assume for each pointer, and the contiguity they assume. Friendly
// argument validation is pygen.ops' job (pygen/ops/_*_checks.py); errors here are ValueError
// (shapes, strides) or TypeError (dtypes), prefixed with the function name.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "dtype.h"

namespace pygen {
namespace bind {

namespace py = pybind11;
using TensorArg = std::tuple<int64_t, std::vector<int64_t>, std::vector<int64_t>, int>;
using OptTensorArg = std::optional<TensorArg>;
using Ctx = std::vector<int64_t>;

[[noreturn]] inline void fail(const char* fn, const std::string& msg) {
  throw py::value_error(std::string(fn) + ": " + msg);
}

inline void* data(const TensorArg& t) { return reinterpret_cast<void*>(std::get<0>(t)); }
inline const std::vector<int64_t>& sizes(const TensorArg& t) { return std::get<1>(t); }
inline const std::vector<int64_t>& strides(const TensorArg& t) { return std::get<2>(t); }
inline int dtype(const TensorArg& t) { return std::get<3>(t); }

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kInt32: return "int32";
    case kInt64: return "int64";
    default: return "an unsupported dtype";
  }
}

// The compute type of a float storage code: float64 for float64, float32 otherwise.
inline int compute_code(int code) { return code == kFloat64 ? kFloat64 : kFloat32; }

inline void check_dtype(const char* fn, const TensorArg& t, int code, const char* name) {
  if (dtype(t) != code)
    throw py::type_error(std::string(fn) + ": " + name + " must be " + dtype_name(code) + ", got " +
                         dtype_name(dtype(t)));
}

// A storage dtype the float kernels are built for (float32/float64/float16/bfloat16); returns it.
inline int float_dtype(const char* fn, const TensorArg& t, const char* name) {
  const int code = dtype(t);
  if (code < kFloat32 || code > kBFloat16)
    throw py::type_error(std::string(fn) + ": " + name + " must be a floating-point tensor, got " + dtype_name(code));
  return code;
}

// Rank `rank`, every size in [0, 2^31) (the kernels' 32-bit bounds).
inline void check_rank(const char* fn, const TensorArg& t, size_t rank, const char* name) {
  if (sizes(t).size() != rank || strides(t).size() != rank)
    fail(fn, std::string(name) + ": expected a " + std::to_string(rank) + "-d tensor");
  for (int64_t s : sizes(t))
    if (s < 0 || s >= (int64_t(1) << 31)) fail(fn, std::string(name) + ": sizes must be in [0, 2^31)");
}

// C-contiguous (sizes 1 may have any stride; an empty tensor addresses nothing).
inline bool contiguous(const TensorArg& t) {
  for (int64_t s : sizes(t))
    if (s == 0) return true;
  int64_t expect = 1;
  for (size_t d = sizes(t).size(); d-- > 0;) {
    if (sizes(t)[d] != 1 && strides(t)[d] != expect) return false;
    expect *= sizes(t)[d];
  }
  return true;
}

// A tensor of exactly `shape`, with dtype `code` and, when asked, contiguous; returns its data.
inline void* tensor(const char* fn, const TensorArg& t, const std::vector<int64_t>& shape, int code, const char* name,
                    bool need_contiguous = true) {
  check_dtype(fn, t, code, name);
  if (sizes(t) != shape || strides(t).size() != shape.size()) {
    std::string s;
    for (int64_t z : shape) s += (s.empty() ? "" : ", ") + std::to_string(z);
    fail(fn, std::string(name) + " must have shape [" + s + "]");
  }
  if (need_contiguous && !contiguous(t)) fail(fn, std::string(name) + " must be contiguous");
  return data(t);
}

}  // namespace bind
}  // namespace pygen
