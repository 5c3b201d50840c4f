// Decoding of llama.cpp's block-quantized weights (runtime/core/ggml_quant.hpp), shared by the CPU
// reference and portable kernels, the CUDA kernels and the tests: every weight comes out as the
// very f32 that ggml's dequantize_row_* (ggml-quants.c) gives, bit for bit. That fixes the order
// of operations, which is part of the contract:
//
//   q8_0  q·d                        q4_0  (q − 8)·d          q5_0  (q − 16)·d
//   q4_1  q·d + m                    q5_1  q·d + m
//   q4_k  (d·sc)·q − (dmin·mn)       q5_k  the same with a fifth bit
//   q6_k  (d·sc)·(q − 32)
//
// each product and sum rounded to f32 on its own: a fused multiply-add would round once and give
// a different weight, so on the device the products go through __fmul_rn / __fadd_rn (nvcc fuses
// across statements otherwise), and on the host each product is its own expression (C++ compilers
// contract within one expression at most).
//
// The unit is a chunk: 32 consecutive weights of a block (one block of the 32-element formats,
// one of the 8 sub-blocks of a 256-element one). A chunk's bytes sit at no particular alignment
// (a q6_k row is 210·n bytes), so everything is read a byte at a time.
#pragma once

#include <cstdint>
#include <type_traits>

#include "runtime/core/dtype.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/host_device.hpp"

namespace ferry::kernels {

// Weights per chunk, and chunks per block (1 or 8).
inline constexpr int kGgmlChunk = 32;
FERRY_HD constexpr int ggml_block_chunks(DType t) {
  return static_cast<int>(ggml_block_elems(t) / kGgmlChunk);
}

// The little-endian f16 at p (any alignment), as f32.
FERRY_HD float ggml_f16(const unsigned char* p) {
  return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}

FERRY_HD uint32_t ggml_u32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

// a·b and a + b, each rounded once and never fused into a multiply-add.
FERRY_HD float ggml_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FERRY_HD float ggml_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// ggml's get_scale_min_k4: the 6-bit scale and minimum of sub-block j (0…7) of a q4_k / q5_k
// block, from its 12 scale bytes.
FERRY_HD void ggml_scale_min_k4(int j, const unsigned char* q, int& sc, int& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The scale terms a chunk of a K-quant block applies: (d·sc) and (dmin·mn).
struct GgmlKScale {
  float d;
  float m;
};
FERRY_HD GgmlKScale ggml_k4_scale(const unsigned char* block, int c) {
  int sc = 0;
  int mn = 0;
  ggml_scale_min_k4(c, block + 4, sc, mn);
  return {ggml_mul(ggml_f16(block), static_cast<float>(sc)),
          ggml_mul(ggml_f16(block + 2), static_cast<float>(mn))};
}

// The integer code of weight l (0…31) of chunk c; what the format multiplies by its scale (q4_0,
// q5_0, q6_k: already less their offset of 8, 16, 32).
template <DType T>
FERRY_HD int ggml_code_t(const unsigned char* b, int c, int l) {
  if constexpr (T == DType::q8_0) {
    return static_cast<int8_t>(b[2 + l]);
  } else if constexpr (T == DType::q4_0 || T == DType::q4_1) {
    const unsigned char* qs = b + (T == DType::q4_0 ? 2 : 4);
    const int q = l < 16 ? (qs[l] & 0xF) : (qs[l - 16] >> 4);
    return T == DType::q4_0 ? q - 8 : q;
  } else if constexpr (T == DType::q5_0 || T == DType::q5_1) {
    const int off = T == DType::q5_0 ? 2 : 4;
    const uint32_t qh = ggml_u32(b + off);
    const unsigned char* qs = b + off + 4;
    const int lo = l < 16 ? (qs[l] & 0xF) : (qs[l - 16] >> 4);
    const int q = lo | static_cast<int>(((qh >> l) & 1u) << 4);
    return T == DType::q5_0 ? q - 16 : q;
  } else if constexpr (T == DType::q4_k) {
    const unsigned char v = b[16 + 32 * (c / 2) + l];
    return (c & 1) != 0 ? (v >> 4) : (v & 0xF);
  } else if constexpr (T == DType::q5_k) {
    const unsigned char v = b[48 + 32 * (c / 2) + l];
    const int lo = (c & 1) != 0 ? (v >> 4) : (v & 0xF);
    return lo + ((b[16 + l] & (1u << c)) != 0 ? 16 : 0);
  } else {  // q6_k: chunk c is quarter t of half h
    const int h = c / 4;
    const int t = c % 4;
    const unsigned char v = b[64 * h + l + 32 * (t & 1)];
    const int lo = t >= 2 ? (v >> 4) : (v & 0xF);
    const int hi = (b[128 + 32 * h + l] >> (2 * t)) & 3;
    return (lo | (hi << 4)) - 32;
  }
}

// The 32 weights of chunk c of the block at b, in out[0…31], as ggml decodes them: the same
// values as ggml_code_t and ggml_block_weight_t, written as branch-free loops over the chunk so
// the portable CPU path vectorizes them.
template <DType T>
FERRY_HD void ggml_decode_chunk_t(const unsigned char* __restrict__ b, int c,
                                  float* __restrict__ out) {
  if constexpr (T == DType::q8_0) {
    const float d = ggml_f16(b);
    for (int l = 0; l < kGgmlChunk; ++l)
      out[l] = ggml_mul(static_cast<float>(static_cast<int8_t>(b[2 + l])), d);
  } else if constexpr (T == DType::q4_0 || T == DType::q4_1 || T == DType::q5_0 ||
                       T == DType::q5_1) {
    constexpr bool kFive = T == DType::q5_0 || T == DType::q5_1;
    constexpr bool kMin = T == DType::q4_1 || T == DType::q5_1;
    constexpr int kQs = (kMin ? 4 : 2) + (kFive ? 4 : 0);
    constexpr int kOffset = kMin ? 0 : (kFive ? 16 : 8);
    const float d = ggml_f16(b);
    const float m = kMin ? ggml_f16(b + 2) : 0.0f;
    const uint32_t qh = kFive ? ggml_u32(b + kQs - 4) : 0u;
    for (int l = 0; l < 16; ++l) {
      const int lo = (b[kQs + l] & 0xF) | static_cast<int>(((qh >> l) & 1u) << 4);
      const int hi = (b[kQs + l] >> 4) | static_cast<int>(((qh >> (l + 16)) & 1u) << 4);
      const float wl = ggml_mul(static_cast<float>(lo - kOffset), d);
      const float wh = ggml_mul(static_cast<float>(hi - kOffset), d);
      out[l] = kMin ? ggml_add(wl, m) : wl;
      out[l + 16] = kMin ? ggml_add(wh, m) : wh;
    }
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    constexpr bool kFive = T == DType::q5_k;
    const GgmlKScale s = ggml_k4_scale(b, c);
    const unsigned char* qs = b + (kFive ? 48 : 16) + 32 * (c / 2);
    const int shift = 4 * (c & 1);
    for (int l = 0; l < kGgmlChunk; ++l) {
      const int fifth = kFive ? ((b[16 + l] >> c) & 1) << 4 : 0;
      const int q = ((qs[l] >> shift) & 0xF) + fifth;
      out[l] = ggml_add(ggml_mul(s.d, static_cast<float>(q)), -s.m);
    }
  } else {  // q6_k: chunk c is quarter t of half h
    const int h = c / 4;
    const int t = c % 4;
    const float d = ggml_f16(b + 208);
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h + 2 * t);
    const unsigned char* ql = b + 64 * h + 32 * (t & 1);
    const unsigned char* qh = b + 128 + 32 * h;
    const int lo_shift = t >= 2 ? 4 : 0;
    for (int half = 0; half < 2; ++half) {
      const float ds = ggml_mul(d, static_cast<float>(sc[half]));
      for (int l = 16 * half; l < 16 * half + 16; ++l) {
        const int q = (((ql[l] >> lo_shift) & 0xF) | (((qh[l] >> (2 * t)) & 3) << 4)) - 32;
        out[l] = ggml_mul(ds, static_cast<float>(q));
      }
    }
  }
}

// Weight i of the block at b (i < ggml_block_elems(T)), the same f32 as ggml_decode_chunk_t's.
template <DType T>
FERRY_HD float ggml_block_weight_t(const unsigned char* b, int i) {
  const int c = i / kGgmlChunk;
  const int l = i % kGgmlChunk;
  const auto q = static_cast<float>(ggml_code_t<T>(b, c, l));
  if constexpr (T == DType::q8_0 || T == DType::q4_0 || T == DType::q5_0) {
    return ggml_mul(q, ggml_f16(b));
  } else if constexpr (T == DType::q4_1 || T == DType::q5_1) {
    return ggml_add(ggml_mul(q, ggml_f16(b)), ggml_f16(b + 2));
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    const GgmlKScale s = ggml_k4_scale(b, c);
    return ggml_add(ggml_mul(s.d, q), -s.m);
  } else {
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * (c / 4));
    return ggml_mul(ggml_mul(ggml_f16(b + 208), static_cast<float>(sc[2 * (c % 4) + l / 16])), q);
  }
}

// Calls f(std::integral_constant<DType, T>) for a ggml block dtype t (q6_k for any other).
template <class F>
FERRY_HD decltype(auto) ggml_dispatch(DType t, F&& f) {
  switch (t) {
    case DType::q8_0:
      return f(std::integral_constant<DType, DType::q8_0>{});
    case DType::q4_0:
      return f(std::integral_constant<DType, DType::q4_0>{});
    case DType::q4_1:
      return f(std::integral_constant<DType, DType::q4_1>{});
    case DType::q5_0:
      return f(std::integral_constant<DType, DType::q5_0>{});
    case DType::q5_1:
      return f(std::integral_constant<DType, DType::q5_1>{});
    case DType::q4_k:
      return f(std::integral_constant<DType, DType::q4_k>{});
    case DType::q5_k:
      return f(std::integral_constant<DType, DType::q5_k>{});
    default:
      return f(std::integral_constant<DType, DType::q6_k>{});
  }
}

// Element j of a row of t's blocks.
FERRY_HD float ggml_row_weight(const unsigned char* row, DType t, int64_t j) {
  return ggml_dispatch(t, [&](auto c) {
    constexpr DType T = decltype(c)::value;
    constexpr int64_t kElems = ggml_block_elems(T);
    const int64_t blk = j / kElems;
    return ggml_block_weight_t<T>(row + static_cast<uint64_t>(blk) * ggml_block_bytes(T),
                                  static_cast<int>(j - blk * kElems));
  });
}

// dst[0 … n) = columns j0 … j0 + n − 1 of a row of t's blocks, j0 and n multiples of 32.
FERRY_HD void ggml_dequantize(const unsigned char* row, DType t, int64_t j0, int64_t n,
                              float* dst) {
  ggml_dispatch(t, [&](auto c) {
    constexpr DType T = decltype(c)::value;
    constexpr int kChunks = ggml_block_chunks(T);
    for (int64_t j = j0; j < j0 + n; j += kGgmlChunk) {
      const int64_t ch = j / kGgmlChunk;
      const unsigned char* b = row + static_cast<uint64_t>(ch / kChunks) * ggml_block_bytes(T);
      ggml_decode_chunk_t<T>(b, static_cast<int>(ch % kChunks), dst + (j - j0));
    }
  });
}

}  // namespace ferry::kernels
