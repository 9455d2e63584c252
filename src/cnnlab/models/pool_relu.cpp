// relu(max_pool2d(x, 2)) and its gradient on channels-last (NHWC) tensors, in one pass each.
//
// ATen runs the pair as three kernels and stores an int64 index per output (8 bytes, as
// many as a float32 pair of outputs): the backward then zero-fills the whole input gradient
// and scatters into it. Here the forward keeps one byte per output, `code`: 0..3 = where in
// the 2x2 window the maximum came from (dy * 2 + dx), 4 = the ReLU zeroed the output (no
// gradient flows). The backward writes every input-gradient element once, in order.
//
// Same numbers as ATen, bit for bit (tests/test_pool_relu.py):
// - the maximum: scan order (0,0) (0,1) (1,0) (1,1); a later value wins only if greater or
//   NaN (ATen's `val > max || isnan(val)`), so ties go to the first position;
// - the ReLU: negatives become +0, -0.0 stays -0.0, NaN stays NaN (torch.relu);
//   the gradient passes where the ReLU's output is not <= 0 (threshold_backward);
// - the gradient: 0 + g, as ATen's zero-fill + scatter-add gives (-0.0 becomes +0.0);
// - odd heights / widths: the last row / column is dropped (floor) and gets gradient 0.
// NaN payloads may differ (all NaN either way). bf16 is compared in float32, as ATen does.
//
// The second half fuses a network's first block, conv 3x3 'same' on a 1-channel image + bias,
// then the pool and the ReLU (see conv_forward below).
//
// Built on first use by cnnlab/models/pool_relu.py (g++ -O3 -fopenmp); the OpenMP runtime is
// the one torch has already loaded, so `threads` are torch's threads.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint8_t kNoGrad = 4;  // `code` of an output the ReLU zeroed

// Both types are handled as their bits, so that the backward's select is an integer
// select of one width, which the compiler vectorizes (a float select on a byte compare
// it did not).
struct F32 {  // float32 stored as its 32 bits
    using T = uint32_t;
    static float value(uint32_t v) {
        float f;
        std::memcpy(&f, &v, sizeof f);
        return f;
    }
    static uint32_t grad(uint32_t g) {  // 0 + g: -0 -> +0, NaN quieted
        const uint32_t a = g & 0x7fffffffu;
        const uint32_t r = a == 0 ? 0u : g;
        return a > 0x7f800000u ? (g | 0x00400000u) : r;
    }
};

struct BF16 {  // bfloat16 stored as its 16 bits: the top half of a float32
    using T = uint16_t;
    static float value(uint16_t v) {
        uint32_t u = uint32_t(v) << 16;
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }
    static uint16_t grad(uint16_t g) {  // 0 + g rounded to bf16: -0 -> +0, NaN -> 0x7fc0
        const uint16_t a = g & 0x7fff;  // branch-free, so the backward loop vectorizes
        const uint16_t r = a == 0 ? uint16_t(0) : g;
        return a > 0x7f80 ? uint16_t(0x7fc0) : r;
    }
};

template <class D>
void forward(const typename D::T* x, typename D::T* y, uint8_t* code, int64_t B, int64_t H,
             int64_t W, int64_t C, int threads) {
    using T = typename D::T;
    const int64_t Ho = H / 2, Wo = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < B * Ho; r++) {  // one output row: two input rows
        const T* top = x + ((r / Ho) * H + (r % Ho) * 2) * W * C;
        const T* bottom = top + W * C;
        T* out = y + r * Wo * C;
        uint8_t* cd = code ? code + r * Wo * C : nullptr;
        for (int64_t ow = 0; ow < Wo; ow++) {
            const T* p0 = top + 2 * ow * C;
            const T* p1 = p0 + C;
            const T* p2 = bottom + 2 * ow * C;
            const T* p3 = p2 + C;
            for (int64_t c = 0; c < C; c++) {
                float m = D::value(p0[c]);
                T best = p0[c];
                uint8_t k = 0;
                float v = D::value(p1[c]);
                bool u = v > m || std::isnan(v);
                m = u ? v : m, best = u ? p1[c] : best, k = u ? 1 : k;
                v = D::value(p2[c]);
                u = v > m || std::isnan(v);
                m = u ? v : m, best = u ? p2[c] : best, k = u ? 2 : k;
                v = D::value(p3[c]);
                u = v > m || std::isnan(v);
                m = u ? v : m, best = u ? p3[c] : best, k = u ? 3 : k;
                out[ow * C + c] = m < 0.0f ? T(0) : best;
                if (cd) cd[ow * C + c] = m <= 0.0f ? kNoGrad : k;
            }
        }
    }
}

template <class D>
void backward(const typename D::T* g, const uint8_t* code, typename D::T* gx, int64_t B,
              int64_t H, int64_t W, int64_t C, int threads) {
    using T = typename D::T;
    const int64_t Ho = H / 2, Wo = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < B * H; r++) {  // one input row of the gradient, written in order
        const int64_t ih = r % H;
        T* out = gx + r * W * C;
        if (ih >= 2 * Ho) {  // the row an odd height drops
            std::memset(out, 0, W * C * sizeof(T));
            continue;
        }
        const int64_t o = ((r / H) * Ho + ih / 2) * Wo * C;
        const T* gr = g + o;
        const uint8_t* cr = code + o;
        const uint8_t dy = uint8_t((ih % 2) * 2);
        for (int64_t ow = 0; ow < Wo; ow++) {
            for (uint8_t dx = 0; dx < 2; dx++) {
                const uint8_t want = dy + dx;
                T* dst = out + (2 * ow + dx) * C;
                const T* gw = gr + ow * C;
                const uint8_t* cw = cr + ow * C;
                for (int64_t c = 0; c < C; c++) {  // loads outside the select: vectorizes
                    const T v = D::grad(gw[c]);
                    dst[c] = cw[c] == want ? v : T(0);
                }
            }
        }
        if (W % 2) std::memset(out + 2 * Wo * C, 0, C * sizeof(T));  // the dropped column
    }
}


// ---- conv 3x3 (1 input channel, padding 1, stride 1) + bias -> 2x2 max-pool -> ReLU ----
//
// A first block on a grey image (seed-mnist, seed-neu) is a convolution with one input
// channel: K = 9 is too short for oneDNN's GEMM-like kernels, and the C-channel output, four
// times the pooled one (256 MB a seed-neu batch), is written, read by the pool, and its
// gradient written and read again. Here each pooled output's 4x4 input patch gives the
// window's 4 convolution outputs in registers (8 channels at a time), and only the pooled
// output and its 1-byte `code` (as above) reach memory. The backward needs no input
// gradient (the input is the data) and no dense conv gradient: the weight gradient is the
// sum over pooled outputs of their gradient times the patch under the window position the
// code names, the bias gradient the sum of the gradients that pass the ReLU. Sums run in
// float over one output row, then in double per thread, then over threads in order: the same
// numbers for the same thread count; not ATen's bits (tests/test_pool_relu.py compares with
// float64 and with ATen). The maximum, ties and ReLU follow forward() above.
typedef float v8f __attribute__((vector_size(32)));  // 8 float32 channels (GCC / Clang)
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline v8f load8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

// The 4x4 input patch under pooled output (oh, ow): rows 2*oh-1 .. 2*oh+2, columns alike,
// zero outside the image (the convolution's 'same' padding).
inline void patch4(const float* img, int64_t H, int64_t W, int64_t oh, int64_t ow, float* p) {
    for (int i = 0; i < 4; i++) {
        const int64_t ih = 2 * oh - 1 + i;
        for (int j = 0; j < 4; j++) {
            const int64_t iw = 2 * ow - 1 + j;
            p[i * 4 + j] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? img[ih * W + iw] : 0.0f;
        }
    }
}

constexpr int tap(int t) { return (t / 3) * 4 + t % 3; }  // tap t's place in a 4x4 patch

// x (B, H, W); wt (9, C): the weight with taps first; bias (C); y, code (B, H/2, W/2, C).
void conv_forward(const float* x, const float* wt, const float* bias, float* y, uint8_t* code,
                  int64_t B, int64_t H, int64_t W, int64_t C, int threads) {
    const int64_t Ho = H / 2, Wo = W / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < B * Ho; r++) {  // one row of pooled outputs
        const float* img = x + (r / Ho) * H * W;
        float* out = y + r * Wo * C;
        uint8_t* cd = code ? code + r * Wo * C : nullptr;
        for (int64_t ow = 0; ow < Wo; ow++) {
            float p[16];
            patch4(img, H, W, r % Ho, ow, p);
            v8f v[16];
            for (int i = 0; i < 16; i++) v[i] = v8f{} + p[i];
            for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
                const v8f b = load8(bias + c0);
                v8f a0 = b, a1 = b, a2 = b, a3 = b;  // the window's 4 convolution outputs
                for (int t = 0; t < 9; t++) {
                    const v8f w = load8(wt + t * C + c0);
                    a0 += v[tap(t)] * w;
                    a1 += v[tap(t) + 1] * w;
                    a2 += v[tap(t) + 4] * w;
                    a3 += v[tap(t) + 5] * w;
                }
                v8f m = a0;  // scan order; a later value wins if greater or NaN
                v8i k = v8i{};
                v8i u = (a1 > m) | (a1 != a1);
                m = u ? a1 : m, k = u ? v8i{} + 1 : k;
                u = (a2 > m) | (a2 != a2);
                m = u ? a2 : m, k = u ? v8i{} + 2 : k;
                u = (a3 > m) | (a3 != a3);
                m = u ? a3 : m, k = u ? v8i{} + 3 : k;
                store8(out + ow * C + c0, m < v8f{} ? v8f{} : m);
                if (cd) {
                    const v8i kk = (m <= v8f{}) ? v8i{} + kNoGrad : k;
                    for (int l = 0; l < kLanes; l++) cd[ow * C + c0 + l] = uint8_t(kk[l]);
                }
            }
        }
    }
}

// g, code (B, H/2, W/2, C) -> dwt (9, C), db (C).
void conv_wgrad(const float* x, const float* g, const uint8_t* code, float* dwt, float* db,
                int64_t B, int64_t H, int64_t W, int64_t C, int threads) {
    const int64_t Ho = H / 2, Wo = W / 2;
    std::vector<double> part(size_t(threads) * 10 * C, 0.0);  // per thread: 9 taps + bias
#pragma omp parallel num_threads(threads)
    {
        double* acc = part.data() + size_t(omp_get_thread_num()) * 10 * C;
        std::vector<float> patches(Wo * 16);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < B * Ho; r++) {
            const float* img = x + (r / Ho) * H * W;
            for (int64_t ow = 0; ow < Wo; ow++) patch4(img, H, W, r % Ho, ow, &patches[ow * 16]);
            const float* gr = g + r * Wo * C;
            const uint8_t* cr = code + r * Wo * C;
            for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
                v8f s[10] = {};  // this row's sums for these 8 channels
                for (int64_t ow = 0; ow < Wo; ow++) {
                    const float* p = &patches[ow * 16];
                    const v8f gv = load8(gr + ow * C + c0);
                    v8i k;
                    for (int l = 0; l < kLanes; l++) k[l] = cr[ow * C + c0 + l];
                    const v8f m0 = k == 0 ? gv : v8f{}, m1 = k == 1 ? gv : v8f{};
                    const v8f m2 = k == 2 ? gv : v8f{}, m3 = k == 3 ? gv : v8f{};
                    s[9] += k < int(kNoGrad) ? gv : v8f{};
                    for (int t = 0; t < 9; t++) {
                        const float* q = p + tap(t);
                        s[t] += q[0] * m0 + q[1] * m1 + q[4] * m2 + q[5] * m3;
                    }
                }
                for (int t = 0; t < 10; t++)
                    for (int l = 0; l < kLanes; l++) acc[t * C + c0 + l] += s[t][l];
            }
        }
    }
    for (int64_t i = 0; i < 10 * C; i++) {
        double sum = 0.0;
        for (int th = 0; th < threads; th++) sum += part[th * 10 * C + i];
        (i < 9 * C ? dwt[i] : db[i - 9 * C]) = float(sum);
    }
}

}  // namespace

extern "C" {

void pool_relu_forward_f32(const uint32_t* x, uint32_t* y, uint8_t* code, int64_t B, int64_t H,
                           int64_t W, int64_t C, int threads) {
    forward<F32>(x, y, code, B, H, W, C, threads);
}

void pool_relu_forward_bf16(const uint16_t* x, uint16_t* y, uint8_t* code, int64_t B,
                            int64_t H, int64_t W, int64_t C, int threads) {
    forward<BF16>(x, y, code, B, H, W, C, threads);
}

void pool_relu_backward_f32(const uint32_t* g, const uint8_t* code, uint32_t* gx, int64_t B,
                            int64_t H, int64_t W, int64_t C, int threads) {
    backward<F32>(g, code, gx, B, H, W, C, threads);
}

void pool_relu_backward_bf16(const uint16_t* g, const uint8_t* code, uint16_t* gx, int64_t B,
                             int64_t H, int64_t W, int64_t C, int threads) {
    backward<BF16>(g, code, gx, B, H, W, C, threads);
}

void conv_pool_relu_forward_f32(const float* x, const float* wt, const float* bias, float* y,
                                uint8_t* code, int64_t B, int64_t H, int64_t W, int64_t C,
                                int threads) {
    conv_forward(x, wt, bias, y, code, B, H, W, C, threads);
}

void conv_pool_relu_wgrad_f32(const float* x, const float* g, const uint8_t* code, float* dwt,
                              float* db, int64_t B, int64_t H, int64_t W, int64_t C,
                              int threads) {
    conv_wgrad(x, g, code, dwt, db, B, H, W, C, threads);
}

}  // extern "C"
