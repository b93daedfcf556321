// Storage types, float conversions and dtype dispatch shared by every csrc/ family.
//
// Tensors arrive as raw pointers plus an integer dtype code (pygen/_ext.py DTYPE_CODE):
//   0 = float32, 1 = float64, 2 = float16, 3 = bfloat16 (4 = int32, 5 = int64 for index tensors).
// Kernels are templated on <S, T>: S is the storage type read from / written to memory and T the
// compute type (float for 16-bit and float32 storage, double for float64).
//
// float16 / bfloat16 are carried as 16-bit bit patterns (half_t, bf16_t) so the host build needs
// no CUDA header. On the device the conversions use cuda_fp16 / cuda_bf16 intrinsics (hardware
// cvt instructions); on the host they are exact bit manipulations with round-to-nearest-even,
// the rounding torch's .to(float16/bfloat16) uses, so the CPU backend's 16-bit outputs match the
// reference's final cast.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace pygen {

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

namespace detail {

// Bit casts: memcpy on the host (no aliasing UB), the reinterpreting intrinsics on the device.
template <typename To, typename From>
inline To host_bit_cast(From v) {
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

HOST_DEVICE uint32_t f32_bits(float f) { return PYGEN_HOST_OR_DEVICE(host_bit_cast<uint32_t>(f), __float_as_uint(f)); }
HOST_DEVICE float bits_f32(uint32_t u) { return PYGEN_HOST_OR_DEVICE(host_bit_cast<float>(u), __uint_as_float(u)); }

// IEEE half -> float, exact. Normals and subnormals: shift the 15 magnitude bits into the float
// position and rescale by 2^112 (the exponent-bias difference); Inf/NaN keep an all-ones exponent.
HOST_DEVICE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t mag = h & 0x7fffu;
  if (mag >= 0x7c00u) return bits_f32(sign | 0x7f800000u | ((mag & 0x3ffu) << 13));
  return bits_f32(sign | f32_bits(bits_f32(mag << 13) * 5.192296858534828e+33f));  // 2^112
}

// float -> IEEE half, round to nearest even (F. Giesen's branch-light formulation, rewritten).
HOST_DEVICE uint16_t float_to_half_bits(float f) {
  uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t o;
  if (u >= (143u << 23)) {                     // >= 2^16: Inf, or NaN (made quiet)
    o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {               // half subnormal or zero: let the FPU round,
    const float magic = bits_f32(126u << 23);  // adding 0.5 aligns the 10 mantissa bits at the
    o = f32_bits(bits_f32(u) + magic) - (126u << 23);  // bottom (round-to-nearest-even add)
  } else {                                     // normal: rebias, round half to even by hand
    const uint32_t odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    o = u >> 13;                               // a carry into exponent 31 gives Inf, as it should
  }
  return static_cast<uint16_t>(o | sign);
}

HOST_DEVICE float bf16_bits_to_float(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }

HOST_DEVICE uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace detail

// load<T>(p): read one stored element as compute type T.
template <typename T> HOST_DEVICE T load(const float* p) { return static_cast<T>(*p); }
template <typename T> HOST_DEVICE T load(const double* p) { return static_cast<T>(*p); }
template <typename T> HOST_DEVICE T load(const half_t* p) {
  return static_cast<T>(
      PYGEN_HOST_OR_DEVICE(detail::half_bits_to_float(p->bits), __half2float(__ushort_as_half(p->bits))));
}
template <typename T> HOST_DEVICE T load(const bf16_t* p) {
  return static_cast<T>(
      PYGEN_HOST_OR_DEVICE(detail::bf16_bits_to_float(p->bits), __bfloat162float(__ushort_as_bfloat16(p->bits))));
}

// store(p, v): write compute value v in storage type (round to nearest even for 16-bit types).
template <typename T> HOST_DEVICE void store(float* p, T v) { *p = static_cast<float>(v); }
template <typename T> HOST_DEVICE void store(double* p, T v) { *p = static_cast<double>(v); }
template <typename T> HOST_DEVICE void store(half_t* p, T v) {
  const float f = static_cast<float>(v);
  p->bits = PYGEN_HOST_OR_DEVICE(detail::float_to_half_bits(f), __half_as_ushort(__float2half_rn(f)));
}
template <typename T> HOST_DEVICE void store(bf16_t* p, T v) {
  const float f = static_cast<float>(v);
  p->bits = PYGEN_HOST_OR_DEVICE(detail::float_to_bf16_bits(f), __bfloat16_as_ushort(__float2bfloat16_rn(f)));
}

// ---- dtype dispatch ---------------------------------------------------------------------------
template <typename X> struct type_tag { using type = X; };

// Codes of pygen/_ext.py DTYPE_CODE; the integer ones are index tensors (never dispatched here).
enum DtypeCode : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3, kInt32 = 4, kInt64 = 5 };

// Calls f(type_tag<S>{}, type_tag<T>{}) for the storage/compute pair of `code`; returns false for
// an unknown code (the caller raises). with_double=false leaves float64 out, for device builds
// that do not instantiate it (the cuda backend takes float32/float16/bfloat16 only).
template <bool with_double = true, typename F>
bool dispatch_dtype(int code, F&& f) {
  switch (code) {
    case kFloat32: f(type_tag<float>{}, type_tag<float>{}); return true;
    case kFloat64:
      if constexpr (with_double) {
        f(type_tag<double>{}, type_tag<double>{});
        return true;
      } else {
        return false;
      }
    case kFloat16: f(type_tag<half_t>{}, type_tag<float>{}); return true;
    case kBFloat16: f(type_tag<bf16_t>{}, type_tag<float>{}); return true;
    default: return false;
  }
}

}  // namespace pygen
