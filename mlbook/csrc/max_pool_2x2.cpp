// 2x2 max-pooling with stride 2 over contiguous float32 H x W planes: Conv4's pooling on a CPU
// (Chapter 3; compiled and loaded by mlbook/maxpool.py). PyTorch reads an NCHW tensor here with
// scalar code; this compares 8 (or 4) windows at a time in vector registers.
//
// The winner of each window is the one PyTorch's CPU kernel picks: the first in row order,
// unless a later value is larger or NaN. Its place in the window (0-3, row-major) is kept as
// one byte, from which the backward pass and the backward of the backward need nothing else.
// With `relu`, a ReLU follows in the same pass (Conv4 pools, then applies ReLU): a winner of
// zero or less gives zero and the code DEAD, through which no gradient flows, as through
// PyTorch's ReLU (NaN passes, as there).
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

template <int N>
inline void pool_group(const float* r0, const float* r1, float* out, uint8_t* code, bool relu) {
    typedef typename Lanes<N>::f F;
    typedef typename Lanes<N>::i I;
    F c[4];
    corners<N>(r0, r1, c);
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

}  // namespace

extern "C" void pool_float32(const float* x, float* out, uint8_t* code, int64_t planes, int64_t h, int64_t w,
                             int relu) {
    const int64_t wo = w / 2;
    each_row_pair(planes, h, w, [&](int64_t top, int64_t windows) {
        const float* r0 = x + top;
        const float* r1 = r0 + w;
        float* o = out + windows;
        uint8_t* c = code + windows;
        row(wo, [&](int64_t j) { pool_group<8>(r0 + 2 * j, r1 + 2 * j, o + j, c + j, relu); },
            [&](int64_t j) { pool_group<4>(r0 + 2 * j, r1 + 2 * j, o + j, c + j, relu); },
            [&](int64_t j) {
                const float corner[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
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
