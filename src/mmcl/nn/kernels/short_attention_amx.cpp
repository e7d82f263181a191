// Self-attention over short sequences (ViT-B/32's 50 tokens, captions' <= 77) in bf16 on
// CPUs with AMX, one fused pass per (item, head). PyTorch's CPU flash attention is built for
// long sequences: at 50 tokens its share of a ViT-B/32 forward is far above its share of the
// FLOPs. Here
// Q, K^T and V are laid out once per head in small per-thread buffers (L1/L2), QK^T and PV run
// on the AMX tile unit (bf16 products, float32 sums) and the softmax in float32 with AVX-512.
// As in PyTorch's kernels, the probabilities are rounded to bf16 before PV.
//
// Input: qkv (batch, tokens, 3 * width), contiguous bf16, the fused QKV projection's output;
// heads of dim width / heads (a multiple of 16). Output: (batch, tokens, width), heads side by
// side, i.e. already in the layout the output projection reads. Built on first use by
// mmcl.nn.kernels (torch.utils.cpp_extension), which calls it only where the CPU has AMX.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_common.h"

namespace {

using namespace mmcl::amx;

// 16 rows of 16 32-bit elements, transposed in registers (32-, 64-bit interleaves, then
// 128-bit lane shuffles); rows[n] becomes column n.
inline void transpose16(__m512i rows[16]) {
  __m512i a[16], b[16];
  for (int k = 0; k < 8; ++k) {
    a[2 * k] = _mm512_unpacklo_epi32(rows[2 * k], rows[2 * k + 1]);
    a[2 * k + 1] = _mm512_unpackhi_epi32(rows[2 * k], rows[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    b[4 * k] = _mm512_unpacklo_epi64(a[4 * k], a[4 * k + 2]);
    b[4 * k + 1] = _mm512_unpackhi_epi64(a[4 * k], a[4 * k + 2]);
    b[4 * k + 2] = _mm512_unpacklo_epi64(a[4 * k + 1], a[4 * k + 3]);
    b[4 * k + 3] = _mm512_unpackhi_epi64(a[4 * k + 1], a[4 * k + 3]);
  }
  // b[4k + c], 128-bit lane l: column 4l + c of rows 4k..4k+3
  for (int c = 0; c < 4; ++c) {
    __m512i e0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
    __m512i e1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    __m512i f0 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
    __m512i f1 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    rows[c] = _mm512_shuffle_i32x4(e0, f0, 0x88);
    rows[4 + c] = _mm512_shuffle_i32x4(e0, f0, 0xDD);
    rows[8 + c] = _mm512_shuffle_i32x4(e1, f1, 0x88);
    rows[12 + c] = _mm512_shuffle_i32x4(e1, f1, 0xDD);
  }
}

// C (16 x 16*N float32, ldc floats) = A (16 rows of 32*ksteps bf16, lda bytes apart) times B,
// whose tile (k-step s, column block t) starts at b + s*b_step + t*64 bytes, rows ldb apart
// (VNNI: each 4-byte element holds a pair of consecutive k). tmm0-3: C, tmm4: A, tmm5-6: B.
template <int N>
inline void strip(const char* a, int64_t lda, const char* b, int64_t ldb, int64_t b_step,
                  int ksteps, float* c, int64_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (N == 4) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int s = 0; s < ksteps; ++s) {
    const char* bs = b + s * b_step;
    _tile_loadd(4, a + s * 64, lda);
    _tile_loadd(5, bs, ldb);
    _tile_loadd(6, bs + 64, ldb);
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 6);
    if constexpr (N == 4) {
      _tile_loadd(5, bs + 128, ldb);
      _tile_loadd(6, bs + 192, ldb);
      _tile_dpbf16ps(2, 4, 5);
      _tile_dpbf16ps(3, 4, 6);
    }
  }
  _tile_stored(0, c, ldc * 4);
  _tile_stored(1, c + 16, ldc * 4);
  if constexpr (N == 4) {
    _tile_stored(2, c + 32, ldc * 4);
    _tile_stored(3, c + 48, ldc * 4);
  }
}

// All column blocks (an even number) of C = A B, four at a time.
inline void gemm_rows(const char* a, int64_t lda, const char* b, int64_t ldb, int64_t b_step,
                      int ksteps, int blocks, float* c, int64_t ldc) {
  int t = 0;
  for (; t + 4 <= blocks; t += 4)
    strip<4>(a, lda, b + t * 64, ldb, b_step, ksteps, c + t * 16, ldc);
  if (t < blocks) strip<2>(a, lda, b + t * 64, ldb, b_step, ksteps, c + t * 16, ldc);
}

struct Shape {
  int64_t tokens, dim, width;
  int64_t qk_dim;   // head dim padded to whole k-steps (32)
  int64_t keys;     // tokens padded to whole k-steps (32)
  int64_t out_dim;  // head dim padded to an even number of column blocks (32)
  bool causal;
  float scale;
};

void attend_head(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t stride,
                 uint16_t* out, const Shape& sh, uint16_t* qbuf, uint32_t* kt, uint32_t* vpairs,
                 float* scores, uint16_t* probs, float* obuf) {
  const int64_t T = sh.tokens, D = sh.dim, Dq = sh.qk_dim, Kp = sh.keys, Do = sh.out_dim;
  // Q rows as they are (bf16), zero-padded to 16-row blocks and Dq columns.
  const int64_t q_rows = round_up(T, 16);
  for (int64_t i = 0; i < q_rows; ++i)
    for (int64_t d = 0; d < Dq; d += 32) {
      const __mmask32 valid = i < T ? mask32(D - d) : 0;
      _mm512_storeu_si512(qbuf + i * Dq + d, _mm512_maskz_loadu_epi16(valid, q + i * stride + d));
    }
  // K^T in VNNI form, kt[d/2][j] = (K[j][d], K[j][d+1]): K's rows as 32-bit pairs, transposed
  // 16 x 16 at a time; zero past the last token and the head dim.
  for (int64_t j0 = 0; j0 < Kp; j0 += 16)
    for (int64_t e0 = 0; e0 < Dq / 2; e0 += 16) {
      const __mmask16 valid = mask16(D / 2 - e0);
      __m512i rows[16];
      for (int n = 0; n < 16; ++n)
        rows[n] = j0 + n < T ? _mm512_maskz_loadu_epi32(valid, k + (j0 + n) * stride + 2 * e0)
                             : _mm512_setzero_si512();
      transpose16(rows);
      for (int n = 0; n < 16; ++n) _mm512_storeu_si512(kt + (e0 + n) * Kp + j0, rows[n]);
    }
  // V in VNNI form, vpairs[j/2][d] = (V[j][d], V[j+1][d]); zero past the last token.
  for (int64_t j = 0; j < Kp; j += 2)
    for (int64_t d = 0; d < Do; d += W) {
      const __mmask16 valid = mask16(D - d);
      __m512i lo = j < T ? _mm512_maskz_cvtepu16_epi32(
                               valid, _mm256_maskz_loadu_epi16(valid, v + j * stride + d))
                         : _mm512_setzero_si512();
      __m512i hi = j + 1 < T ? _mm512_maskz_cvtepu16_epi32(
                                   valid, _mm256_maskz_loadu_epi16(valid, v + (j + 1) * stride + d))
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(vpairs + j / 2 * Do + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  for (int64_t i0 = 0; i0 < T; i0 += 16) {
    // keys this block of queries can see, in whole k-steps
    const int64_t seen = sh.causal ? std::min(Kp, round_up(i0 + 16, 32)) : Kp;
    gemm_rows(reinterpret_cast<const char*>(qbuf + i0 * Dq), Dq * 2,
              reinterpret_cast<const char*>(kt), Kp * 4, 16 * Kp * 4, int(Dq / 32), int(seen / 16),
              scores, Kp);
    float inv_sum[16];
    const int rows = int(std::min<int64_t>(16, T - i0));
    for (int r = 0; r < 16; ++r) {
      float* s = scores + r * Kp;
      uint16_t* p = probs + r * Kp;
      const int64_t visible = r >= rows ? 0 : sh.causal ? i0 + r + 1 : T;
      if (visible == 0) {
        std::memset(p, 0, seen * 2);
        inv_sum[r] = 0;
        continue;
      }
      // keys at or past `visible` are masked out: -inf for the max, 0 after exp
      const vi lane = vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      vf mv = splat(-INFINITY);
      for (int64_t j = 0; j < visible; j += W) {
        vf x = loadf(s + j);
        mv = (lane + int(j) < int(visible)) & (x > mv) ? x : mv;
      }
      const float m = _mm512_reduce_max_ps(reinterpret_cast<__m512>(mv));
      const vf shift = splat(m * sh.scale), scale = splat(sh.scale);
      vf total = splat(0.0f);
      for (int64_t j = 0; j < seen; j += W) {
        vf e = exp_nonpositive(loadf(s + j) * scale - shift);
        e = lane + int(j) < int(visible) ? e : splat(0.0f);
        total += e;
        store_bf16(p + j, e);
      }
      const float sum = _mm512_reduce_add_ps(reinterpret_cast<__m512>(total));
      inv_sum[r] = 1.0f / sum;
    }
    gemm_rows(reinterpret_cast<const char*>(probs), Kp * 2, reinterpret_cast<const char*>(vpairs),
              Do * 4, 16 * Do * 4, int(seen / 32), int(Do / 16), obuf, Do);
    for (int r = 0; r < rows; ++r)
      for (int64_t d = 0; d < D; d += W)
        store_bf16(out + (i0 + r) * sh.width + d, loadf(obuf + r * Do + d) * splat(inv_sum[r]));
  }
}

at::Tensor short_attention(const at::Tensor& qkv, int64_t heads, bool causal) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.scalar_type() == at::kBFloat16 && qkv.is_contiguous() &&
                  qkv.device().is_cpu(),
              "short_attention: qkv must be a contiguous CPU bf16 (batch, tokens, 3*width) tensor");
  TORCH_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0,
              "short_attention: 3 * heads must divide the last dimension");
  TORCH_CHECK(request_amx(), "short_attention: the kernel could not enable AMX");
  const int64_t batch = qkv.size(0), width = qkv.size(2) / 3;
  Shape sh;
  sh.tokens = qkv.size(1);
  sh.dim = width / heads;
  TORCH_CHECK(sh.dim % 16 == 0, "short_attention: head dim must be a multiple of 16");
  sh.width = width;
  sh.qk_dim = round_up(sh.dim, 32);
  sh.keys = round_up(sh.tokens, 32);
  sh.out_dim = round_up(sh.dim, 32);
  sh.causal = causal;
  sh.scale = 1.0f / std::sqrt(float(sh.dim));
  auto out = at::empty({batch, sh.tokens, width}, qkv.options());
  if (batch == 0 || sh.tokens == 0) return out;
  const auto* base = reinterpret_cast<const uint16_t*>(qkv.data_ptr<at::BFloat16>());
  auto* out_base = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t q_rows = round_up(sh.tokens, 16);
  // per-thread buffers (64-byte aligned blocks, in floats)
  const int64_t n_q = round_up(q_rows * sh.qk_dim / 2, 16),
                n_kt = round_up(sh.qk_dim / 2 * sh.keys, 16);
  const int64_t n_v = round_up(sh.keys / 2 * sh.out_dim, 16), n_s = 16 * sh.keys;
  const int64_t n_p = round_up(16 * sh.keys / 2, 16), n_o = 16 * sh.out_dim;
  // OpenMP directly, not at::parallel_for: PyTorch's thread count is per thread (streams give
  // each worker its share), and at::parallel_for's header-inline first-call initialisation,
  // compiled into this library, would reset the calling thread's count to the last one set by
  // any thread.
  const int64_t items = batch * heads;
  const int threads = int(std::min<int64_t>(omp_get_max_threads(), items));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(n_q + n_kt + n_v + n_s + n_p + n_o + 16);
    float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) &
                                              ~uintptr_t(63));
    auto* qbuf = reinterpret_cast<uint16_t*>(aligned);
    auto* kt = reinterpret_cast<uint32_t*>(aligned + n_q);
    auto* vpairs = reinterpret_cast<uint32_t*>(aligned + n_q + n_kt);
    float* scores = aligned + n_q + n_kt + n_v;
    auto* probs = reinterpret_cast<uint16_t*>(scores + n_s);
    float* obuf = scores + n_s + n_p;
    configure_tiles();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const uint16_t* row = base + b * sh.tokens * 3 * width + h * sh.dim;
      attend_head(row, row + width, row + 2 * width, 3 * width,
                  out_base + b * sh.tokens * width + h * sh.dim, sh, qbuf, kt, vpairs, scores,
                  probs, obuf);
    }
    _tile_release();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmcl_kernels, m) {
  m.def("short_attention(Tensor qkv, int heads, bool causal) -> Tensor");
}
TORCH_LIBRARY_IMPL(mmcl_kernels, CPU, m) { m.impl("short_attention", &short_attention); }
