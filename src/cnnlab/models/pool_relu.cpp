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
// Built on first use by cnnlab/models/pool_relu.py (g++ -O3 -fopenmp); the OpenMP runtime is
// the one torch has already loaded, so `threads` are torch's threads.
#include <cmath>
#include <cstdint>
#include <cstring>

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

}  // extern "C"
