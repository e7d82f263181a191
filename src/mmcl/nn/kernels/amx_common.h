// Pieces shared by mmcl's AMX kernels (short_attention_amx.cpp, linear_amx.cpp): float32
// vectors of 16 lanes, bf16 rounding, exp, and the AMX tile set-up. Each kernel includes it
// and uses namespace mmcl::amx.
#pragma once
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace mmcl::amx {

typedef float vf __attribute__((vector_size(64)));    // 16 floats
typedef int32_t vi __attribute__((vector_size(64)));  // 16 int32
constexpr int W = 16;

inline vf splat(float x) { return vf{} + x; }
inline vf loadf(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store_bf16(uint16_t* p, vf f) {  // round to nearest even (AVX-512 BF16)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(reinterpret_cast<__m512>(f))));
}

inline vf load_bf16(const uint16_t* p) {  // exact: a bf16 is a float32's upper half
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<vf>(_mm512_slli_epi32(wide, 16));
}

// exp(x) for x <= 0: 2^n p(r) with |r| <= ln2/2 and a degree-6 Taylor polynomial (relative
// error ~2e-7); 0 below -87, where float32 denormals begin.
inline vf exp_nonpositive(vf x) {
  const vf low = splat(-87.0f);
  vf clamped = x < low ? low : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (clamped * splat(1.44269504088896341f) + magic) - magic;
  vf r = clamped - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vf p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof scale);
  return x < low ? splat(0.0f) : p * scale;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// masks of the first n lanes (all for n >= width, none for n <= 0)
inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? 0xffff : n <= 0 ? 0 : __mmask16((1u << n) - 1);
}
inline __mmask32 mask32(int64_t n) {
  return n >= 32 ? 0xffffffffu : n <= 0 ? 0 : __mmask32((1u << n) - 1);
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-7 as 16 rows of 64 bytes, for the calling thread.
inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  // GCC may drop stores it believes nothing reads; ldtilecfg reads all 64 bytes.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

inline bool request_amx() {
  // Linux hands out the AMX register state on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  static const bool granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return granted;
}

}  // namespace mmcl::amx
