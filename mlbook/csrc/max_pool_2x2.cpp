// 2x2 max-pooling with stride 2 over contiguous float32 H x W planes: Conv4's pooling on a CPU
// (Chapter 3; compiled and loaded by mlbook/maxpool.py). PyTorch reads an NCHW tensor here with
// scalar code; this compares 8 (or 4) windows at a time in vector registers.
//
// The winner of each window is the one PyTorch's CPU kernel picks: the first in row order,
// unless a later value is larger or NaN. Its place in the window (0-3, row-major) is kept as
// one byte, from which the backward pass and the backward of the backward need nothing else.
// With `relu`, a ReLU follows in the same pass (Conv4 pools, then applies ReLU): a winner of
// zero or less gives zero and the code DEAD, through which no gradient flows, as through
// PyTorch's ReLU (NaN passes, as there). At the end of the file, batch or group normalisation
// joins the pool: the normalised map is pooled as it is computed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint8_t DEAD = 4;

template <int N> struct Lanes;
template <> struct Lanes<8> {
    typedef float f __attribute__((vector_size(32)));
    typedef int32_t i __attribute__((vector_size(32)));
    typedef uint8_t b __attribute__((vector_size(8)));
    static constexpr i even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = {1, 3, 5, 7, 9, 11, 13, 15};
    static constexpr i low = {0, 8, 1, 9, 2, 10, 3, 11}, high = {4, 12, 5, 13, 6, 14, 7, 15};
};
template <> struct Lanes<4> {
    typedef float f __attribute__((vector_size(16)));
    typedef int32_t i __attribute__((vector_size(16)));
    typedef uint8_t b __attribute__((vector_size(4)));
    static constexpr i even = {0, 2, 4, 6}, odd = {1, 3, 5, 7};
    static constexpr i low = {0, 4, 1, 5}, high = {2, 6, 3, 7};
};

// The four corners of N consecutive windows of the row pair (r0, r1).
template <int N>
inline void corners(const float* r0, const float* r1, typename Lanes<N>::f* out) {
    typedef typename Lanes<N>::f F;
    F p0, p1, q0, q1;
    std::memcpy(&p0, r0, sizeof(F)); std::memcpy(&p1, r0 + N, sizeof(F));
    std::memcpy(&q0, r1, sizeof(F)); std::memcpy(&q1, r1 + N, sizeof(F));
    out[0] = __builtin_shuffle(p0, p1, Lanes<N>::even);
    out[1] = __builtin_shuffle(p0, p1, Lanes<N>::odd);
    out[2] = __builtin_shuffle(q0, q1, Lanes<N>::even);
    out[3] = __builtin_shuffle(q0, q1, Lanes<N>::odd);
}

// With `Affine`, the window's values are first mapped to x * scale + shift (the normalisation's
// map for this plane), so the normalised map need not be written out.
template <int N, bool Affine = false>
inline void pool_group(const float* r0, const float* r1, float* out, uint8_t* code, bool relu, float scale = 1,
                       float shift = 0) {
    typedef typename Lanes<N>::f F;
    typedef typename Lanes<N>::i I;
    F c[4];
    corners<N>(r0, r1, c);
    if (Affine)
        for (int corner = 0; corner < 4; ++corner) c[corner] = c[corner] * scale + shift;
    F m = c[0];
    I k = {};
    for (int corner = 1; corner < 4; ++corner) {
        const I take = (c[corner] > m) | (c[corner] != c[corner]);
        m = take ? c[corner] : m;
        k = take ? corner : k;
    }
    if (relu) {
        const I dead = m <= 0;
        m = dead ? 0 : m;
        k = dead ? DEAD : k;
    }
    const typename Lanes<N>::b bytes = __builtin_convertvector(k, typename Lanes<N>::b);
    std::memcpy(out, &m, sizeof(F));
    std::memcpy(code, &bytes, sizeof(bytes));
}

template <int N>
inline typename Lanes<N>::i load_code(const uint8_t* code) {
    typename Lanes<N>::b bytes;
    std::memcpy(&bytes, code, sizeof(bytes));
    return __builtin_convertvector(bytes, typename Lanes<N>::i);
}

// N windows' gradients g placed at their winners, zeros elsewhere: the two rows' 2N values as
// four vectors (upper row, then lower row, N values each).
template <int N>
inline void at_winners(typename Lanes<N>::f g, const uint8_t* code, typename Lanes<N>::f* rows) {
    typedef typename Lanes<N>::f F;
    const typename Lanes<N>::i k = load_code<N>(code);
    const F zero = {};
    const F a = k == 0 ? g : zero, b = k == 1 ? g : zero, c = k == 2 ? g : zero, d = k == 3 ? g : zero;
    rows[0] = __builtin_shuffle(a, b, Lanes<N>::low);
    rows[1] = __builtin_shuffle(a, b, Lanes<N>::high);
    rows[2] = __builtin_shuffle(c, d, Lanes<N>::low);
    rows[3] = __builtin_shuffle(c, d, Lanes<N>::high);
}

template <int N>
inline void unpool_group(const float* grad, const uint8_t* code, float* r0, float* r1) {
    typedef typename Lanes<N>::f F;
    F g, v[4];
    std::memcpy(&g, grad, sizeof(F));
    at_winners<N>(g, code, v);
    std::memcpy(r0, &v[0], sizeof(F)); std::memcpy(r0 + N, &v[1], sizeof(F));
    std::memcpy(r1, &v[2], sizeof(F)); std::memcpy(r1 + N, &v[3], sizeof(F));
}

// Normalisation's input gradient over the two rows of N windows: scale * (the pooled gradient at
// each window's winner) + offset + slope * (x - centre) at every value.
template <int N>
inline void norm_input_grad_group(const float* grad, const uint8_t* code, const float* x0, const float* x1,
                                  float* r0, float* r1, float scale, float offset, float slope, float centre) {
    typedef typename Lanes<N>::f F;
    F g, v[4], winners[4];
    std::memcpy(&g, grad, sizeof(F));
    at_winners<N>(g * scale, code, winners);
    const F mid = centre - F{};
    std::memcpy(&v[0], x0, sizeof(F)); std::memcpy(&v[1], x0 + N, sizeof(F));
    std::memcpy(&v[2], x1, sizeof(F)); std::memcpy(&v[3], x1 + N, sizeof(F));
    for (int q = 0; q < 4; ++q) v[q] = winners[q] + offset + slope * (v[q] - mid);
    std::memcpy(r0, &v[0], sizeof(F)); std::memcpy(r0 + N, &v[1], sizeof(F));
    std::memcpy(r1, &v[2], sizeof(F)); std::memcpy(r1 + N, &v[3], sizeof(F));
}

template <int N>
inline void select_group(const float* r0, const float* r1, const uint8_t* code, float* out) {
    typedef typename Lanes<N>::f F;
    const typename Lanes<N>::i k = load_code<N>(code);
    F c[4];
    corners<N>(r0, r1, c);
    const F zero = {};
    const F m = k == 0 ? c[0] : k == 1 ? c[1] : k == 2 ? c[2] : k == 3 ? c[3] : zero;
    std::memcpy(out, &m, sizeof(F));
}

// One row of windows in groups of N; the last group ends at the row's end and may redo some
// windows (with the same result), so no window is left to scalar code.
template <int N, typename Group>
inline bool by_groups(int64_t wo, Group group) {
    if (wo < N) return false;
    int64_t j = 0;
    for (; j + N <= wo; j += N) group(j);
    if (j < wo) group(wo - N);
    return true;
}

template <typename Group8, typename Group4, typename Single>
inline void row(int64_t wo, Group8 group8, Group4 group4, Single single) {
    if (by_groups<8>(wo, group8) || by_groups<4>(wo, group4)) return;
    for (int64_t j = 0; j < wo; ++j) single(j);
}

// Calls body(top, out) for each pair of input rows: `top` is the offset of its upper row in
// the input, `out` the offset of its row of windows in the output.
template <typename Body>
inline void each_row_pair(int64_t planes, int64_t h, int64_t w, Body body) {
    const int64_t ho = h / 2, wo = w / 2;
    for (int64_t p = 0; p < planes; ++p)
        for (int64_t i = 0; i < ho; ++i) body((p * h + 2 * i) * w, (p * ho + i) * wo);
}

// Pools the planes of x, each after the map v * scale[p] + shift[p] of its plane p when Affine.
template <bool Affine>
void pool_planes(const float* x, float* out, uint8_t* code, int64_t planes, int64_t h, int64_t w, bool relu,
                 const float* scale, const float* shift) {
    const int64_t wo = w / 2;
    each_row_pair(planes, h, w, [&](int64_t top, int64_t windows) {
        const int64_t plane = top / (h * w);
        const float a = Affine ? scale[plane] : 1.0f, b = Affine ? shift[plane] : 0.0f;
        const float* r0 = x + top;
        const float* r1 = r0 + w;
        float* o = out + windows;
        uint8_t* c = code + windows;
        row(wo, [&](int64_t j) { pool_group<8, Affine>(r0 + 2 * j, r1 + 2 * j, o + j, c + j, relu, a, b); },
            [&](int64_t j) { pool_group<4, Affine>(r0 + 2 * j, r1 + 2 * j, o + j, c + j, relu, a, b); },
            [&](int64_t j) {
                float corner[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
                if (Affine)
                    for (float& v : corner) v = v * a + b;
                float m = corner[0];
                uint8_t k = 0;
                for (uint8_t q = 1; q < 4; ++q)
                    if (corner[q] > m || std::isnan(corner[q])) { m = corner[q]; k = q; }
                if (relu && m <= 0) { m = 0; k = DEAD; }
                o[j] = m;
                c[j] = k;
            });
    });
}

}  // namespace

extern "C" void pool_float32(const float* x, float* out, uint8_t* code, int64_t planes, int64_t h, int64_t w,
                             int relu) {
    pool_planes<false>(x, out, code, planes, h, w, relu, nullptr, nullptr);
}

// The input-gradient: each output's gradient at its window's winner, zeros elsewhere (also in
// a last odd row or column, which no window covers).
extern "C" void unpool_float32(const float* grad, const uint8_t* code, float* out, int64_t planes, int64_t h,
                               int64_t w) {
    const int64_t wo = w / 2;
    each_row_pair(planes, h, w, [&](int64_t top, int64_t windows) {
        float* r0 = out + top;
        float* r1 = r0 + w;
        const float* g = grad + windows;
        const uint8_t* c = code + windows;
        row(wo, [&](int64_t j) { unpool_group<8>(g + j, c + j, r0 + 2 * j, r1 + 2 * j); },
            [&](int64_t j) { unpool_group<4>(g + j, c + j, r0 + 2 * j, r1 + 2 * j); },
            [&](int64_t j) {
                r0[2 * j] = c[j] == 0 ? g[j] : 0.0f; r0[2 * j + 1] = c[j] == 1 ? g[j] : 0.0f;
                r1[2 * j] = c[j] == 2 ? g[j] : 0.0f; r1[2 * j + 1] = c[j] == 3 ? g[j] : 0.0f;
            });
        if (w % 2) r0[w - 1] = r1[w - 1] = 0.0f;
    });
    if (h % 2)
        for (int64_t p = 0; p < planes; ++p) std::memset(out + (p * h + h - 1) * w, 0, w * sizeof(float));
}

// The values of a full-size tensor at the winners: the derivative of unpool.
extern "C" void select_float32(const float* x, const uint8_t* code, float* out, int64_t planes, int64_t h,
                               int64_t w) {
    const int64_t wo = w / 2;
    each_row_pair(planes, h, w, [&](int64_t top, int64_t windows) {
        const float* r0 = x + top;
        const float* r1 = r0 + w;
        float* o = out + windows;
        const uint8_t* c = code + windows;
        row(wo, [&](int64_t j) { select_group<8>(r0 + 2 * j, r1 + 2 * j, c + j, o + j); },
            [&](int64_t j) { select_group<4>(r0 + 2 * j, r1 + 2 * j, c + j, o + j); },
            [&](int64_t j) { o[j] = c[j] == DEAD ? 0.0f : (c[j] >> 1 ? r1 : r0)[2 * j + (c[j] & 1)]; });
    });
}

// ---- Normalisation, then the pool ----
// Batch norm with the batch's statistics (`groups` = 0: channel c's statistics pool all N
// planes of that channel) or group norm (`groups` = G: each example's G groups of C / G
// channels have their own), each followed by a per-channel scale and shift. Sums are taken 16
// floats at a time within a plane and added up in double across planes.

namespace {

// sum(x - centre) and sum((x - centre)^2) over one plane, added to `sum` and `squares`.
inline void plane_sums(const float* x, int64_t n, float centre, double& sum, double& squares) {
    typedef Lanes<8>::f F;
    F s0 = {}, s1 = {}, q0 = {}, q1 = {};
    const F mid = centre - F{};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        F a, b;
        std::memcpy(&a, x + i, sizeof(F)); std::memcpy(&b, x + i + 8, sizeof(F));
        a -= mid; b -= mid;
        s0 += a; s1 += b;
        q0 += a * a; q1 += b * b;
    }
    for (int lane = 0; lane < 8; ++lane) {
        sum += double(s0[lane]) + double(s1[lane]);
        squares += double(q0[lane]) + double(q1[lane]);
    }
    for (; i < n; ++i) {
        const double d = double(x[i]) - centre;
        sum += d;
        squares += d * d;
    }
}

// sum(g) and sum(g * (x - centre)) over one plane's windows, leaving out those ReLU zeroed;
// `selected` holds x at each window's winner.
inline void winner_sums(const float* grad, const uint8_t* code, const float* selected, int64_t n, float centre,
                        double& sum_g, double& sum_gx) {
    typedef Lanes<8>::f F;
    F acc_g = {}, acc_gx = {};
    const F mid = centre - F{}, zero = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        F g, v;
        std::memcpy(&g, grad + i, sizeof(F)); std::memcpy(&v, selected + i, sizeof(F));
        g = load_code<8>(code + i) != DEAD ? g : zero;
        acc_g += g;
        acc_gx += g * (v - mid);
    }
    for (int lane = 0; lane < 8; ++lane) { sum_g += acc_g[lane]; sum_gx += acc_gx[lane]; }
    for (; i < n; ++i)
        if (code[i] != DEAD) {
            sum_g += grad[i];
            sum_gx += double(grad[i]) * (double(selected[i]) - centre);
        }
}

// Which statistic plane p of an N x C batch belongs to.
inline int64_t statistic_of(int64_t plane, int64_t channels, int64_t groups) {
    const int64_t c = plane % channels;
    return groups ? (plane / channels) * groups + c / (channels / groups) : c;
}

}  // namespace

// The mean and 1 / sqrt(biased variance + eps) of each statistic (C of them for batch norm,
// N x G for group norm), as PyTorch's kernels save them.
extern "C" void norm_stats_float32(const float* x, int64_t batch, int64_t channels, int64_t groups, int64_t hw,
                                   double eps, float* mean, float* invstd) {
    const int64_t planes = batch * channels, statistics = groups ? batch * groups : channels;
    const double count = double(planes / statistics) * double(hw);
    // One pass, each statistic's values taken relative to its first value (a stand-in for its
    // mean), so that the variance as E[d^2] - E[d]^2 loses no precision to a large mean.
    std::vector<float> centre(statistics);
    for (int64_t p = planes - 1; p >= 0; --p) centre[statistic_of(p, channels, groups)] = x[p * hw];
    std::vector<double> sums(statistics, 0.0), squares(statistics, 0.0);
    for (int64_t p = 0; p < planes; ++p) {
        const int64_t s = statistic_of(p, channels, groups);
        plane_sums(x + p * hw, hw, centre[s], sums[s], squares[s]);
    }
    for (int64_t s = 0; s < statistics; ++s) {
        const double shift = sums[s] / count;
        mean[s] = float(centre[s] + shift);
        invstd[s] = float(1.0 / std::sqrt(std::max(squares[s] / count - shift * shift, 0.0) + eps));
    }
}

// The pool (and ReLU) of the normalised, scaled and shifted x: out and code as pool_float32's.
extern "C" void norm_pool_float32(const float* x, const float* mean, const float* invstd, const float* weight,
                                  const float* bias, int64_t batch, int64_t channels, int64_t groups, int64_t h,
                                  int64_t w, int relu, float* out, uint8_t* code) {
    std::vector<float> scale(batch * channels), shift(batch * channels);
    for (int64_t p = 0; p < batch * channels; ++p) {
        const int64_t s = statistic_of(p, channels, groups), c = p % channels;
        scale[p] = invstd[s] * weight[c];
        shift[p] = bias[c] - mean[s] * scale[p];
    }
    pool_planes<true>(x, out, code, batch * channels, h, w, relu, scale.data(), shift.data());
}

// The backward pass of normalisation -> pool (-> ReLU) from the pooled gradient g. With, per
// plane, S = sum(g) and T = sum(g * (x - mean)) (only the winners carry a gradient: `selected`
// holds x there), and per statistic A = sum(w_c S) and B = sum(w_c T) over its M values, the
// input gradient is  w_c invstd g_full - invstd A / M - invstd^3 B (x - mean) / M,  where
// g_full is g at each window's winner and zero elsewhere; it is written a pair of rows at a
// time, g_full formed in registers as unpool_float32 forms it. The weight's gradient is
// sum(T invstd), the bias's sum(S).
extern "C" void norm_pool_backward_float32(const float* grad, const uint8_t* code, const float* selected,
                                           const float* x, const float* mean, const float* invstd,
                                           const float* weight, int64_t batch, int64_t channels, int64_t groups,
                                           int64_t h, int64_t w, float* grad_x, float* grad_weight,
                                           float* grad_bias) {
    const int64_t hw = h * w, windows = (h / 2) * (w / 2), planes = batch * channels;
    const int64_t statistics = groups ? batch * groups : channels;
    const double count = double(planes / statistics) * double(hw);
    std::vector<double> weight_sum(channels, 0.0), bias_sum(channels, 0.0), a(statistics, 0.0), b(statistics, 0.0);
    for (int64_t p = 0; p < planes; ++p) {
        const int64_t s = statistic_of(p, channels, groups), c = p % channels;
        double sum_g = 0, sum_gx = 0;
        winner_sums(grad + p * windows, code + p * windows, selected + p * windows, windows, mean[s], sum_g, sum_gx);
        bias_sum[c] += sum_g;
        weight_sum[c] += sum_gx * invstd[s];
        a[s] += weight[c] * sum_g;
        b[s] += weight[c] * sum_gx;
    }
    for (int64_t c = 0; c < channels; ++c) { grad_weight[c] = float(weight_sum[c]); grad_bias[c] = float(bias_sum[c]); }
    std::vector<float> scale(planes), offset(planes), slope(planes), centre(planes);
    for (int64_t p = 0; p < planes; ++p) {
        const int64_t s = statistic_of(p, channels, groups);
        const double r = invstd[s];
        scale[p] = weight[p % channels] * invstd[s];
        offset[p] = float(-r * a[s] / count);
        slope[p] = float(-r * r * r * b[s] / count);
        centre[p] = mean[s];
    }
    const int64_t wo = w / 2;
    each_row_pair(planes, h, w, [&](int64_t top, int64_t windows_at) {
        const int64_t p = top / hw;
        const float k = scale[p], o = offset[p], sl = slope[p], m = centre[p];
        const float* x0 = x + top;
        const float* x1 = x0 + w;
        float* r0 = grad_x + top;
        float* r1 = r0 + w;
        const float* g = grad + windows_at;
        const uint8_t* c = code + windows_at;
        row(wo,
            [&](int64_t j) {
                norm_input_grad_group<8>(g + j, c + j, x0 + 2 * j, x1 + 2 * j, r0 + 2 * j, r1 + 2 * j, k, o, sl, m);
            },
            [&](int64_t j) {
                norm_input_grad_group<4>(g + j, c + j, x0 + 2 * j, x1 + 2 * j, r0 + 2 * j, r1 + 2 * j, k, o, sl, m);
            },
            [&](int64_t j) {
                for (int q = 0; q < 4; ++q) {
                    const int64_t at = (q >> 1) * w + 2 * j + (q & 1);
                    r0[at] = (c[j] == q ? k * g[j] : 0.0f) + o + sl * (x0[at] - m);
                }
            });
        if (w % 2) {
            r0[w - 1] = o + sl * (x0[w - 1] - m);
            r1[w - 1] = o + sl * (x1[w - 1] - m);
        }
    });
    if (h % 2)
        for (int64_t p = 0; p < planes; ++p) {
            const int64_t last = (p * h + h - 1) * w;
            for (int64_t i = 0; i < w; ++i) grad_x[last + i] = offset[p] + slope[p] * (x[last + i] - centre[p]);
        }
}
