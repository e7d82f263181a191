// Attention of a few queries a row over cached keys and values (a decoding step: one new
// token against the self-attention cache, or against an image's cross-attention keys), in
// bf16 or float32, with AVX-512. Such a step is a handful of dot products per key: PyTorch
// runs it as two batched matmuls, a softmax and dtype conversions, each a pass over the
// scores and each with its own set-up, which costs several times the reading of the keys and
// values themselves. Here each (row, head) is one pass for up to four of its queries at once
// (the beams of an image, which mmcl.nn.attention folds into one row's queries, read its keys
// once): scores, softmax and the weighted sum of the values in float32, rounded once at the end.
//
// Input: query (batch, heads, queries, dim), key and value (batch, heads, keys, dim), all of
// one dtype (bf16 or float32), each with its last dimension contiguous (a cache buffer's
// views are fine); dim a multiple of 16, at most 256. mask: none, or booleans expanded to
// (batch, heads, queries, keys), True where a query may attend; a query that may attend to
// no key gets zeros. Output: (batch, queries, heads, dim) contiguous, i.e. the heads side by
// side already, as the output projection reads them. Built with the AMX kernels by
// mmcl.nn.kernels (it needs AVX-512 BF16, which every CPU with AMX has).
#include <ATen/ATen.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "amx_common.h"

namespace {

using namespace mmcl::amx;

constexpr int64_t kMaxDim = 256;

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) { return reinterpret_cast<__m512>(load_bf16(p)); }
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(uint16_t* p, __m512 v) { store_bf16(p, reinterpret_cast<vf>(v)); }

struct Strides {
  int64_t b, h, t;  // in elements; the last dimension is contiguous
};

template <typename T>
struct Problem {
  const T *query, *key, *value;
  const bool* mask;  // null: none
  T* out;
  int64_t batch, heads, queries, keys, dim;
  Strides q, k, v;
  int64_t mask_strides[4];
  float scale;
};

// Up to kBlock queries of one (row, head) attend in one pass over the keys and one over the
// values, so that each key and value is loaded (and in bf16 widened) once for all of them: the
// beams of an image, folded into one row's queries by mmcl.nn.attention, read its keys once.
constexpr int kBlock = 4;

// Queries i0 .. i0 + Q - 1 of (row b, head h): scores (float32, `keys` a query, in `scores`
// at `stride` apart) -> softmax -> weighted values.
template <typename T, int Q>
void attend_block(const Problem<T>& p, int64_t b, int64_t h, int64_t i0, float* scores,
                  int64_t stride) {
  const int64_t vectors = p.dim / 16;
  const T* k = p.key + b * p.k.b + h * p.k.h;
  const T* v = p.value + b * p.v.b + h * p.v.h;
  const __m512 scale = _mm512_set1_ps(p.scale);
  __m512 qv[Q][kMaxDim / 16];
  const bool* allowed[Q];
  T* out[Q];
  float best[Q];
  for (int q = 0; q < Q; ++q) {
    const int64_t i = i0 + q;
    const T* query = p.query + b * p.q.b + h * p.q.h + i * p.q.t;
    for (int64_t j = 0; j < vectors; ++j) qv[q][j] = _mm512_mul_ps(load16(query + 16 * j), scale);
    allowed[q] = p.mask ? p.mask + b * p.mask_strides[0] + h * p.mask_strides[1] +
                              i * p.mask_strides[2]
                        : nullptr;
    out[q] = p.out + ((b * p.queries + i) * p.heads + h) * p.dim;
    best[q] = -INFINITY;
  }
  for (int64_t t = 0; t < p.keys; ++t) {
    const T* kt = k + t * p.k.t;
    __m512 acc[Q];
    __m512 key = load16(kt);
    for (int q = 0; q < Q; ++q) acc[q] = _mm512_mul_ps(qv[q][0], key);
    for (int64_t j = 1; j < vectors; ++j) {
      key = load16(kt + 16 * j);
      for (int q = 0; q < Q; ++q) acc[q] = _mm512_fmadd_ps(qv[q][j], key, acc[q]);
    }
    for (int q = 0; q < Q; ++q) {
      const bool masked = allowed[q] && !allowed[q][t * p.mask_strides[3]];
      const float s = masked ? -INFINITY : _mm512_reduce_add_ps(acc[q]);
      scores[q * stride + t] = s;
      best[q] = std::max(best[q], s);
    }
  }
  // exp(score - best) in vectors of 16 (masked keys: -inf -> 0), and 1 / their total; a query
  // with no key allowed gets zeros, as mmcl.nn.attention.attend gives
  float inverse[Q];
  for (int q = 0; q < Q; ++q) {
    float* row = scores + q * stride;
    if (best[q] == -INFINITY) {
      for (int64_t t = 0; t < p.keys; ++t) row[t] = 0.0f;
      inverse[q] = 0.0f;
      continue;
    }
    __m512 total = _mm512_setzero_ps();
    const __m512 shift = _mm512_set1_ps(best[q]);
    for (int64_t t = 0; t < p.keys; t += 16) {
      const __mmask16 lanes = mask16(p.keys - t);
      const __m512 s = _mm512_maskz_loadu_ps(lanes, row + t);
      __m512 e = reinterpret_cast<__m512>(
          exp_nonpositive(reinterpret_cast<vf>(_mm512_sub_ps(s, shift))));
      e = _mm512_maskz_mov_ps(lanes, e);
      total = _mm512_add_ps(total, e);
      _mm512_mask_storeu_ps(row + t, lanes, e);
    }
    inverse[q] = 1.0f / _mm512_reduce_add_ps(total);
  }
  __m512 sum[Q][kMaxDim / 16];
  for (int q = 0; q < Q; ++q)
    for (int64_t j = 0; j < vectors; ++j) sum[q][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < p.keys; ++t) {
    __m512 w[Q];
    bool any = false;
    for (int q = 0; q < Q; ++q) {
      const float weight = scores[q * stride + t];
      any |= weight != 0.0f;  // masked (or underflowed) for every query: adds nothing
      w[q] = _mm512_set1_ps(weight);
    }
    if (!any) continue;
    const T* vt = v + t * p.v.t;
    for (int64_t j = 0; j < vectors; ++j) {
      const __m512 value = load16(vt + 16 * j);
      for (int q = 0; q < Q; ++q) sum[q][j] = _mm512_fmadd_ps(w[q], value, sum[q][j]);
    }
  }
  for (int q = 0; q < Q; ++q) {
    const __m512 factor = _mm512_set1_ps(inverse[q]);
    for (int64_t j = 0; j < vectors; ++j)
      store16(out[q] + 16 * j, _mm512_mul_ps(sum[q][j], factor));
  }
}

template <typename T>
void attend_item(const Problem<T>& p, int64_t b, int64_t h, float* scores, int64_t stride) {
  for (int64_t i = 0; i < p.queries; i += kBlock) {
    switch (std::min<int64_t>(kBlock, p.queries - i)) {
      case 1: attend_block<T, 1>(p, b, h, i, scores, stride); break;
      case 2: attend_block<T, 2>(p, b, h, i, scores, stride); break;
      case 3: attend_block<T, 3>(p, b, h, i, scores, stride); break;
      default: attend_block<T, 4>(p, b, h, i, scores, stride); break;
    }
  }
}

template <typename T>
void run(const Problem<T>& p) {
  const int64_t items = p.batch * p.heads;
  const int64_t stride = round_up(p.keys, 16);  // a query's scores, whole vectors of 16
  // OpenMP directly, not at::parallel_for: see short_attention_amx.cpp.
  const int threads = int(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(items, 1)));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> scores(kBlock * stride + 16);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item)
      attend_item(p, item / p.heads, item % p.heads, scores.data(), stride);
  }
}

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const std::optional<at::Tensor>& mask) {
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat,
              "decode_attention: query must be bf16 or float32");
  for (const at::Tensor* t : {&query, &key, &value}) {
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == dtype && t->device().is_cpu() &&
                    (t->size(3) <= 1 || t->stride(3) == 1),
                "decode_attention: query, key and value must be CPU tensors of one dtype, "
                "(batch, heads, tokens, dim), the last dimension contiguous");
  }
  const int64_t batch = query.size(0), heads = query.size(1), queries = query.size(2),
                dim = query.size(3), keys = key.size(2);
  TORCH_CHECK(dim % 16 == 0 && dim > 0 && dim <= kMaxDim,
              "decode_attention: head dim must be a positive multiple of 16, at most ", kMaxDim,
              ", not ", dim);
  TORCH_CHECK(key.sizes() == value.sizes() && key.size(0) == batch && key.size(1) == heads &&
                  key.size(3) == dim,
              "decode_attention: key and value must be (batch, heads, keys, dim) like the query");
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->device().is_cpu() &&
                    mask->sizes() == at::IntArrayRef({batch, heads, queries, keys}),
                "decode_attention: mask must be a CPU bool tensor expanded to (batch, heads, "
                "queries, keys)");
  }
  auto out = at::empty({batch, queries, heads, dim}, query.options());
  if (out.numel() == 0) return out;
  const float scale = 1.0f / std::sqrt(float(dim));
  auto fill = [&](auto& p) {
    p.mask = mask ? mask->data_ptr<bool>() : nullptr;
    p.batch = batch;
    p.heads = heads;
    p.queries = queries;
    p.keys = keys;
    p.dim = dim;
    p.q = strides_of(query);
    p.k = strides_of(key);
    p.v = strides_of(value);
    for (int d = 0; d < 4; ++d) p.mask_strides[d] = mask ? mask->stride(d) : 0;
    p.scale = scale;
  };
  if (dtype == at::kFloat) {
    Problem<float> p;
    fill(p);
    p.query = query.data_ptr<float>();
    p.key = key.data_ptr<float>();
    p.value = value.data_ptr<float>();
    p.out = out.data_ptr<float>();
    run(p);
  } else {
    Problem<uint16_t> p;
    fill(p);
    p.query = reinterpret_cast<const uint16_t*>(query.data_ptr<at::BFloat16>());
    p.key = reinterpret_cast<const uint16_t*>(key.data_ptr<at::BFloat16>());
    p.value = reinterpret_cast<const uint16_t*>(value.data_ptr<at::BFloat16>());
    p.out = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
    run(p);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmcl_kernels, m) {
  m.def("decode_attention(Tensor query, Tensor key, Tensor value, Tensor? mask) -> Tensor");
}
TORCH_LIBRARY_IMPL(mmcl_kernels, CPU, m) { m.impl("decode_attention", &decode_attention); }
