// Linear layers in bf16 on CPUs with AMX: out = residual + activation(x W^T + bias), one pass.
// oneDNN's matmul (what PyTorch runs) applies a fused epilogue after each output block, while
// the tile unit waits: on ViT-B/32's MLP the exact GELU and the residual addition cost a
// sizeable share of the matmuls. Here the epilogue of one 32 x 32 output block
// (bias, GELU or SiLU, residual, rounding to bf16) is spread over the k-steps of the next
// block, so the AVX-512 work runs while the tile unit multiplies.
//
// Inputs: x (..., K) contiguous bf16; the weight packed by mmcl.nn.kernels.pack_linear_weight
// as (N/32, K/32, 2, 16, 16, 2) bf16: for each pair of 16-column blocks and each k-step of 32,
// two B tiles of 1 KB in VNNI order (row r holds k = 2r, 2r+1 for 16 output features);
// optional bias (N) and residual (..., N). Output (..., N) bf16. Built on first use by
// mmcl.nn.kernels (torch.utils.cpp_extension), which calls it only where the CPU has AMX.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "amx_common.h"

namespace {

using namespace mmcl::amx;

enum class Activation { kNone, kGelu, kSwish };

// x Phi(x), the exact (erf) GELU, as max(x, 0) - |x| Phi(-|x|), with Phi(-z) = q(z)^16 and q
// a degree-5 polynomial fitted (weighted least squares, Lawson's iterations) to Phi(-z)^(1/16)
// on [0, 5.5]; beyond 5.5, |x| Phi(-|x|) < 1.1e-7 is dropped. Measured in float32 against
// float64 on 4M points over [-12, 12] and every bf16 in [-20, 20]: relative error at most
// 2.3e-5 for x >= -4 (1.8e-5 for x > 0), absolute at most 3.5e-6, and 1.1e-7 for x < -4. On
// the kernel test's grid, 99.98% of the bf16 results for x >= -4 are the correctly rounded
// ones (PyTorch's bf16 F.gelu, whose 1 + erf cancels: 99.31%; the Abramowitz & Stegun 7.1.26
// erfc used before: 99.80%). No exp, no division: 13 instructions, where that erfc with its
// exp took about 27 and, with only 24 k-steps to hide in (K = 768), set the pace of the MLP's
// first matmul.
inline vf gelu(vf v) {
  const __m512 x = reinterpret_cast<__m512>(v);
  const __m512 z = _mm512_abs_ps(x);
  __m512 q = _mm512_set1_ps(-4.652166535e-05f);
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(6.976058357e-04f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-1.402518828e-03f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-1.777285896e-02f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-4.776909575e-02f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(9.576029181e-01f));
  q = _mm512_mul_ps(q, q);
  q = _mm512_mul_ps(q, q);
  q = _mm512_mul_ps(q, q);
  q = _mm512_mul_ps(q, q);  // Phi(-z)
  // NaN counts as near, so that it propagates; -inf gives 0 and +inf itself
  const __mmask16 near = _mm512_cmp_ps_mask(z, _mm512_set1_ps(5.5f), _CMP_NGT_UQ);
  return reinterpret_cast<vf>(
      _mm512_mask3_fnmadd_ps(z, q, _mm512_max_ps(x, _mm512_setzero_ps()), near));
}

// x sigmoid(x) (SiLU) as x / (1 + 2^t), t = -x log2(e): vreduceps splits off f = t - floor(t)
// in [0, 1) in one instruction and scalef applies 2^floor(t), so neither a roundscale nor a
// Cody-Waite step is needed; 2^f is a degree-5 polynomial fitted for relative error (linear
// programming on [0, 1]: 1.1e-7 with float32 coefficients). A true division: one rounding,
// and in the MLP's first matmul no slower than rcp14 and its Newton step (which still needs a
// multiplication by x). No exp(-|x|), hence no blend on the sign: 11 instructions, where that
// form took 21 and, with 24 k-steps to hide in at K = 768, set the pace of QuickGELU's MLP.
// Measured in float32 against float64 on every float32 in [-88, 88]: relative error at most
// 4e-6 (the rounding of t, at x near -88), 99.9994% correctly rounded to bf16, and every
// normal bf16 input there gives the correctly rounded result. x is clamped at -88, which keeps
// 2^t finite and gives -5.3e-37 below (-inf included, whose limit is 0); NaN passes the max.
inline vf swish(vf v) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-88.0f), reinterpret_cast<__m512>(v));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f));
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(1.8786415e-03f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.9854980e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5831328e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015097e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9315350e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9999994e-01f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(p, t), _mm512_set1_ps(1.0f));  // 1 + e^-x
  return reinterpret_cast<vf>(_mm512_div_ps(x, d));
}

struct Problem {
  const uint16_t* x;
  const char* packed;
  const float* bias;        // null: none
  const uint16_t* residual;  // null: none
  uint16_t* out;
  int64_t rows, n, k;
  Activation activation;
};

constexpr int64_t kBlock = 32;                 // output block: 32 rows x 32 columns, 2 x 2 tiles
constexpr int64_t kChunkBytes = 768 * 1024;  // weight columns a thread keeps in L2 at once

// One thread's share of the output: columns [pair_begin, pair_end) in pairs of 16-column
// blocks, rows [block_begin, block_end) in 32-row blocks. The activation is a template
// argument: the epilogue in the k-loop then carries no branch on it and keeps its constants
// in registers, which made the GELU's share of the K = 768 matmul fall by more than half.
template <Activation kActivation>
class Worker {
 public:
  Worker(const Problem& p, uint16_t* padded_tail) : p_(p), padded_tail_(padded_tail) {}

  void run(int64_t pair_begin, int64_t pair_end, int64_t block_begin, int64_t block_end) {
    const int64_t steps = p_.k / 32;
    // rows of the pending block's epilogue done by the end of each k-step (no division there)
    step_rows_.resize(steps + 1);
    for (int64_t s = 0; s <= steps; ++s) step_rows_[s] = int(s * kBlock / steps);
    // Weight columns for up to kChunkBytes stay in L2 while every row block passes through
    // them; chunks of equal size, as a short last one would reuse each row block less.
    const int64_t most = std::max<int64_t>(1, kChunkBytes / (p_.k * 64));
    const int64_t chunks = (pair_end - pair_begin + most - 1) / most;
    const int64_t chunk = std::max<int64_t>(1, (pair_end - pair_begin + chunks - 1) / chunks);
    for (int64_t first = pair_begin; first < pair_end; first += chunk) {
      const int64_t last = std::min(pair_end, first + chunk), count = last - first;
      // While this row block multiplies, its successor's rows are fetched into L2, a share
      // per column pair.
      const int64_t share = (kBlock + count - 1) / count;
      for (int64_t block = block_begin; block < block_end; ++block) {
        const bool next_full = block + 1 < block_end && (block + 2) * kBlock <= p_.rows;
        for (int64_t pair = first; pair < last; ++pair) {
          const int64_t row = (pair - first) * share;
          const int64_t fetch = next_full ? std::clamp<int64_t>(kBlock - row, 0, share) : 0;
          multiply(block, pair, steps, fetch ? p_.x + ((block + 1) * kBlock + row) * p_.k : nullptr,
                   fetch);
        }
      }
    }
    finish_rows(0, kBlock);  // the last block's epilogue
  }

 private:
  const uint16_t* rows_of(int64_t block) const {
    return (block + 1) * kBlock <= p_.rows ? p_.x + block * kBlock * p_.k : padded_tail_;
  }

  // The 32 x 32 block (block, pair) into tiles 0-3 over all k-steps; the pending block's
  // epilogue and the prefetches are spread over the steps.
  void multiply(int64_t block, int64_t pair, int64_t steps, const uint16_t* fetch_rows,
                int64_t fetch_count) {
    const char* a = reinterpret_cast<const char*>(rows_of(block));
    const char* b = p_.packed + pair * steps * 2048;
    const int64_t lda = p_.k * 2;
    if (p_.residual) {  // read by this block's epilogue, during the next block
      const int64_t valid = std::min(kBlock, p_.rows - block * kBlock);
      for (int64_t r = 0; r < valid; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(
                         p_.residual + (block * kBlock + r) * p_.n + pair * kBlock),
                     _MM_HINT_T0);
    }
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = 0; s < steps; ++s) {
      _tile_loadd(4, a + s * 64, lda);
      _tile_loadd(6, b + s * 2048, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(5, a + 16 * lda + s * 64, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, b + s * 2048 + 1024, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
      finish_rows(step_rows_[s], step_rows_[s + 1]);
      for (int64_t r = 0; r < fetch_count; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(fetch_rows + r * p_.k) + s * 64, _MM_HINT_T1);
    }
    float* c = sums_[current_];
    _tile_stored(0, c, kBlock * 4);
    _tile_stored(1, c + 16, kBlock * 4);
    _tile_stored(2, c + 16 * kBlock, kBlock * 4);
    _tile_stored(3, c + 16 * kBlock + 16, kBlock * 4);
    current_ ^= 1;
    pending_block_ = block;
    pending_pair_ = pair;
  }

  // Rows [begin, end) of the pending block: bias, activation, residual, bf16.
  void finish_rows(int begin, int end) {
    if (pending_block_ < 0) return;
    const float* c = sums_[current_ ^ 1];
    const int64_t col = pending_pair_ * kBlock, row0 = pending_block_ * kBlock;
    const int valid = int(std::min<int64_t>(end, p_.rows - row0));
    const vf b0 = p_.bias ? loadf(p_.bias + col) : splat(0.0f);
    const vf b1 = p_.bias ? loadf(p_.bias + col + 16) : splat(0.0f);
    for (int r = begin; r < valid; ++r) {
      vf v0 = loadf(c + r * kBlock) + b0, v1 = loadf(c + r * kBlock + 16) + b1;
      if constexpr (kActivation == Activation::kGelu) {
        v0 = gelu(v0);
        v1 = gelu(v1);
      } else if constexpr (kActivation == Activation::kSwish) {
        v0 = swish(v0);
        v1 = swish(v1);
      }
      const int64_t at = (row0 + r) * p_.n + col;
      if (p_.residual) {
        v0 += load_bf16(p_.residual + at);
        v1 += load_bf16(p_.residual + at + 16);
      }
      store_bf16(p_.out + at, v0);
      store_bf16(p_.out + at + 16, v1);
    }
    if (end >= kBlock) pending_block_ = -1;
  }

  const Problem& p_;
  const uint16_t* padded_tail_;
  alignas(64) float sums_[2][kBlock * kBlock];  // the block being stored, the one finishing
  std::vector<int> step_rows_;
  int current_ = 0;
  int64_t pending_block_ = -1, pending_pair_ = 0;
};

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::kNone;
  if (name == "gelu") return Activation::kGelu;
  if (name == "swish") return Activation::kSwish;
  TORCH_CHECK(false, "linear_amx: activation must be 'none', 'gelu' or 'swish', not '", name, "'");
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& packed,
                  const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& residual, const std::string& activation) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kBFloat16 && x.is_contiguous() &&
                  x.device().is_cpu(),
              "linear_amx: x must be a contiguous CPU bf16 tensor (..., in_features)");
  TORCH_CHECK(packed.dim() == 6 && packed.scalar_type() == at::kBFloat16 &&
                  packed.is_contiguous() && packed.size(2) == 2 && packed.size(3) == 16 &&
                  packed.size(4) == 16 && packed.size(5) == 2,
              "linear_amx: the weight must come from pack_linear_weight (a contiguous bf16 "
              "(out/32, in/32, 2, 16, 16, 2) tensor)");
  const int64_t k = x.size(-1), n = packed.size(0) * 32, rows = x.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(packed.size(1) * 32 == k, "linear_amx: x has ", k,
              " input features, the packed weight ", packed.size(1) * 32);
  TORCH_CHECK(request_amx(), "linear_amx: the kernel could not enable AMX");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  at::Tensor bias_f;
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->device().is_cpu(),
                "linear_amx: bias must be a CPU vector of ", n, " elements");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  if (residual) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(shape) &&
                    residual->scalar_type() == at::kBFloat16 && residual->is_contiguous() &&
                    residual->device().is_cpu(),
                "linear_amx: residual must be a contiguous CPU bf16 tensor shaped like the output");
  }
  TORCH_CHECK(k > 0, "linear_amx: x has no input features");
  auto out = at::empty(shape, x.options());
  if (rows == 0 || n == 0) return out;
  const Problem problem{
      reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
      reinterpret_cast<const char*>(packed.data_ptr<at::BFloat16>()),
      bias ? bias_f.data_ptr<float>() : nullptr,
      residual ? reinterpret_cast<const uint16_t*>(residual->data_ptr<at::BFloat16>()) : nullptr,
      reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()),
      rows,
      n,
      k,
      parse_activation(activation)};
  // The last, partial row block is multiplied from a zero-padded copy.
  const int64_t blocks = (rows + kBlock - 1) / kBlock, pairs = n / 32;
  const int64_t tail = rows % kBlock;
  std::vector<uint16_t> padded_tail(tail ? kBlock * k : 0, 0);
  if (tail)
    std::memcpy(padded_tail.data(), problem.x + (blocks - 1) * kBlock * k, tail * k * 2);
  // Threads split the columns (each keeps its weights in L2), and the rows when there are
  // more threads than pairs of column blocks to give each two. OpenMP directly, not
  // at::parallel_for: see short_attention_amx.cpp.
  const int threads = int(std::min<int64_t>(omp_get_max_threads(), pairs * blocks));
  int column_groups = 1;
  for (int d = threads; d > 1; --d)
    if (threads % d == 0 && pairs >= 2 * d) {
      column_groups = d;
      break;
    }
  const int row_groups = threads / column_groups;
#pragma omp parallel num_threads(threads)
  {
    configure_tiles();
    const int id = omp_get_thread_num();
    const int64_t cg = id % column_groups, rg = id / column_groups;
    const int64_t pair_begin = pairs * cg / column_groups;
    const int64_t pair_end = pairs * (cg + 1) / column_groups;
    const int64_t block_begin = blocks * rg / row_groups;
    const int64_t block_end = blocks * (rg + 1) / row_groups;
    switch (problem.activation) {
      case Activation::kNone:
        Worker<Activation::kNone>(problem, padded_tail.data())
            .run(pair_begin, pair_end, block_begin, block_end);
        break;
      case Activation::kGelu:
        Worker<Activation::kGelu>(problem, padded_tail.data())
            .run(pair_begin, pair_end, block_begin, block_end);
        break;
      case Activation::kSwish:
        Worker<Activation::kSwish>(problem, padded_tail.data())
            .run(pair_begin, pair_end, block_begin, block_end);
        break;
    }
    _tile_release();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmcl_kernels, m) {
  m.def(
      "linear(Tensor x, Tensor packed, Tensor? bias, Tensor? residual, str activation) -> "
      "Tensor");
}
TORCH_LIBRARY_IMPL(mmcl_kernels, CPU, m) { m.impl("linear", &linear); }
