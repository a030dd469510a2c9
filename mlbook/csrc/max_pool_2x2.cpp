// 2x2 max-pooling with stride 2 over contiguous float32 H x W planes: Conv4's pooling on a CPU
// (Chapter 3; compiled and loaded by mlbook/maxpool.py). PyTorch reads an NCHW tensor here with
// scalar code; this compares 8 (or 4) windows at a time in vector registers.
//
// The winner of each window is the one PyTorch's CPU kernel picks: the first in row order,
// unless a later value is larger or NaN. Its place in the window (0-3, row-major) is kept as
// one byte, from which the backward pass and the backward of the backward need nothing else.
// With `relu`, a ReLU follows in the same pass (Conv4 pools, then applies ReLU): a winner of
// zero or less gives zero and the code DEAD, through which no gradient flows, as through
// PyTorch's ReLU (NaN passes, as there). At the end of the file, batch normalisation with the
// batch's statistics joins the pool: the normalised map is pooled as it is computed.
#include <cmath>
#include <cstdint>
#include <cstring>

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

// With `Affine`, the window's values are first mapped to x * scale + shift (batch
// normalisation's per-channel map), so the normalised map need not be written out.
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

template <int N>
inline void unpool_group(const float* grad, const uint8_t* code, float* r0, float* r1) {
    typedef typename Lanes<N>::f F;
    const typename Lanes<N>::i k = load_code<N>(code);
    F g;
    const F zero = {};
    std::memcpy(&g, grad, sizeof(F));
    F a = k == 0 ? g : zero, b = k == 1 ? g : zero, c = k == 2 ? g : zero, d = k == 3 ? g : zero;
    const F top0 = __builtin_shuffle(a, b, Lanes<N>::low), top1 = __builtin_shuffle(a, b, Lanes<N>::high);
    const F bottom0 = __builtin_shuffle(c, d, Lanes<N>::low), bottom1 = __builtin_shuffle(c, d, Lanes<N>::high);
    std::memcpy(r0, &top0, sizeof(F)); std::memcpy(r0 + N, &top1, sizeof(F));
    std::memcpy(r1, &bottom0, sizeof(F)); std::memcpy(r1 + N, &bottom1, sizeof(F));
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

// ---- Batch normalisation with the current batch's statistics (training mode), then the pool ----
// For an N x C x H x W batch, channel c's statistics pool all N planes of that channel. Sums are
// taken 16 floats at a time within a plane and added up in double across planes.

namespace {

inline double plane_sum(const float* x, int64_t n, float centre, bool squares) {
    typedef Lanes<8>::f F;
    F acc0 = {}, acc1 = {};
    const F mid = centre - F{};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        F a, b;
        std::memcpy(&a, x + i, sizeof(F)); std::memcpy(&b, x + i + 8, sizeof(F));
        a -= mid; b -= mid;
        if (squares) { a *= a; b *= b; }
        acc0 += a; acc1 += b;
    }
    double total = 0;
    for (int lane = 0; lane < 8; ++lane) total += double(acc0[lane]) + double(acc1[lane]);
    for (; i < n; ++i) {
        const double d = double(x[i]) - centre;
        total += squares ? d * d : d;
    }
    return total;
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

}  // namespace

// Per channel: the batch mean and 1 / sqrt(biased variance + eps), as PyTorch's batch norm saves them.
extern "C" void bn_stats_float32(const float* x, int64_t batch, int64_t channels, int64_t hw, double eps,
                                 float* mean, float* invstd) {
    const double count = double(batch) * double(hw);
    for (int64_t c = 0; c < channels; ++c) {
        double sum = 0;
        for (int64_t n = 0; n < batch; ++n) sum += plane_sum(x + (n * channels + c) * hw, hw, 0.0f, false);
        const float m = float(sum / count);
        double squares = 0;
        for (int64_t n = 0; n < batch; ++n) squares += plane_sum(x + (n * channels + c) * hw, hw, m, true);
        mean[c] = m;
        invstd[c] = float(1.0 / std::sqrt(squares / count + eps));
    }
}

// The pool (and ReLU) of batch norm's output, from x and the statistics: out and code as pool_float32's.
extern "C" void bn_pool_float32(const float* x, const float* mean, const float* invstd, const float* weight,
                                const float* bias, int64_t batch, int64_t channels, int64_t h, int64_t w, int relu,
                                float* out, uint8_t* code, float* scale, float* shift) {
    for (int64_t n = 0; n < batch; ++n)
        for (int64_t c = 0; c < channels; ++c) {
            const float a = invstd[c] * weight[c];
            scale[n * channels + c] = a;
            shift[n * channels + c] = bias[c] - mean[c] * a;
        }
    pool_planes<true>(x, out, code, batch * channels, h, w, relu, scale, shift);
}

// The backward pass of batch norm -> pool (-> ReLU) from the pooled gradient: grad_x is filled with
// the pooled gradient at the winners (unpool_float32), then batch norm's input gradient,
//   w * invstd * (g - sum(g) / M) - w * invstd^3 * (x - mean) * sum(g * (x - mean)) / M,
// is formed in place; sum(g) and sum(g * (x - mean)) need only the winners (`selected`: x there).
extern "C" void bn_pool_backward_float32(const float* grad, const uint8_t* code, const float* selected,
                                         const float* x, const float* mean, const float* invstd,
                                         const float* weight, int64_t batch, int64_t channels, int64_t h,
                                         int64_t w, float* grad_x, float* grad_weight, float* grad_bias) {
    const int64_t hw = h * w, windows = (h / 2) * (w / 2);
    const double count = double(batch) * double(hw);
    unpool_float32(grad, code, grad_x, batch * channels, h, w);
    for (int64_t c = 0; c < channels; ++c) {
        double sum_g = 0, sum_gx = 0;
        for (int64_t n = 0; n < batch; ++n) {
            const int64_t at = (n * channels + c) * windows;
            winner_sums(grad + at, code + at, selected + at, windows, mean[c], sum_g, sum_gx);
        }
        grad_bias[c] = float(sum_g);
        grad_weight[c] = float(sum_gx * invstd[c]);
        const float k = weight[c] * invstd[c];
        const float offset = float(k * sum_g / count);
        const float slope = float(double(k) * invstd[c] * invstd[c] * sum_gx / count);
        const float m = mean[c];
        for (int64_t n = 0; n < batch; ++n) {
            float* g = grad_x + (n * channels + c) * hw;
            const float* v = x + (n * channels + c) * hw;
            for (int64_t i = 0; i < hw; ++i) g[i] = k * g[i] - offset - slope * (v[i] - m);
        }
    }
}
