// Winograd F(2x2, 3x3) convolution + bias, fused with the 2x2 max-pool and ReLU after it, on
// channels-last (NHWC) float32 tensors, forward and backward.
//
// A 3x3 'same' convolution computes each 2x2 block of outputs from the 4x4 input patch under
// it. Winograd's F(2x2, 3x3) does that with 16 products per (input, output) channel pair
// instead of 36: the patch d and the filter g are transformed (V = B^T d B, U = G g G^T, 4x4
// each), multiplied element by element and summed over input channels (16 small GEMMs,
// M_k = V_k U_k), and transformed back (Y = A^T M A). The 2x2 output block is exactly the
// window of the max-pool after it, so the inverse transform, the bias, the pool and the ReLU
// run in registers and only the pooled output and its 1-byte code (pool_relu.cpp's meaning)
// reach memory. The backward recomputes V from the input instead of keeping it, builds dM
// from the pooled gradient (one of the window's four outputs gets it), and gives the input
// gradient (B dV B^T with dV = dM U^T, added into the overlapping patches) and the filter
// gradient in the transformed domain (dU = V^T dM; winograd.py maps it to the weights).
//
// The backward also serves a plain 3x3 'same' convolution without bias (the residual CNNs'
// convolutions before a BatchNorm, whose forward ATen runs faster on small maps): its tiles
// are 2x2 output blocks (the last row / column may fall outside an odd-sized map) and dM
// comes from all four gradients of a block.
//
// Work goes in ranges of tiles whose transformed data stay in the cache (`Ranges`); the GEMMs
// run on a 6x16 register-blocked kernel (12 accumulators of 8 floats, AVX2 + FMA with
// -march=native). Sums are float32 in a fixed order: the same bits for the same thread
// count; not ATen's bits (tests/test_winograd.py compares with float64 and with ATen).
// Built with pool_relu.cpp into one library by cnnlab/models/pool_relu.py.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v8f __attribute__((vector_size(32)));  // 8 float32 channels (GCC / Clang)
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr uint8_t kNoGrad = 4;  // `code` of an output the ReLU zeroed (as pool_relu.cpp)
constexpr int64_t kChunk = 24;  // at most this many tiles transformed and multiplied together
constexpr int kRows = 6;        // GEMM register block: kRows x 16
constexpr int64_t kChunkB = 49;  // the backward's: fewer, longer dU sums (one seed-mnist image);
                                 // seed-mnist's backward 2.35 vs 2.66 ms with 24 (2026-12-07)
                                 // on the ResNets' 7x7 / 4x4 maps 32, 96 and 144 were no faster
                                 // (bench_conv_grads.py, one run each, 2026-12-07)

inline v8f load8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

// C (R x 16, row stride ldc) = (acc ? C : 0) + A (R x K) B (K x 16, row stride ldb), where
// A's element (r, k) is A[r * rsa + k * csa] (so A may be read transposed).
template <int R>
inline void micro(const float* A, int64_t rsa, int64_t csa, const float* B, int64_t ldb,
                  float* C, int64_t ldc, int64_t K, bool acc) {
    v8f c0[R], c1[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        c0[r] = acc ? load8(C + r * ldc) : v8f{};
        c1[r] = acc ? load8(C + r * ldc + kLanes) : v8f{};
    }
    for (int64_t k = 0; k < K; k++) {
        const v8f b0 = load8(B + k * ldb), b1 = load8(B + k * ldb + kLanes);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const float s = A[r * rsa + k * csa];
            const v8f a = {s, s, s, s, s, s, s, s};  // a broadcast load (0 + s would add)
            c0[r] += a * b0;
            c1[r] += a * b1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        store8(C + r * ldc, c0[r]);
        store8(C + r * ldc + kLanes, c1[r]);
    }
}

// C (M x N) (+)= A (M x K) B (K x N); N a multiple of 16.
void gemm(const float* A, int64_t rsa, int64_t csa, const float* B, int64_t ldb, float* C,
          int64_t ldc, int64_t M, int64_t N, int64_t K, bool acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        for (int64_t m0 = 0; m0 < M; m0 += kRows) {
            const float* a = A + m0 * rsa;
            const float* b = B + n0;
            float* c = C + m0 * ldc + n0;
            switch (std::min<int64_t>(kRows, M - m0)) {
                case 6: micro<6>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
                case 5: micro<5>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
                case 4: micro<4>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
                case 3: micro<3>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
                case 2: micro<2>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
                default: micro<1>(a, rsa, csa, b, ldb, c, ldc, K, acc); break;
            }
        }
    }
}

struct Shape {
    int64_t B, H, W, Ci, Co;
    bool pool = true;  // tiles are pool windows (floor); else 2x2 output blocks (ceil)
    int64_t Ho() const { return pool ? H / 2 : (H + 1) / 2; }
    int64_t Wo() const { return pool ? W / 2 : (W + 1) / 2; }
    int64_t P() const { return Ho() * Wo(); }  // tiles per image
};

// Work in ranges of tiles t = b * P + p (image b, tile p): an image of more than `most` tiles
// goes in chunks of equal size (seed-mnist's 49 as 17 + 17 + 15, not 24 + 24 + 1: a 1-row
// GEMM runs at a sixth of the 6-row one's speed); smaller images go as many whole ones as
// fit (a 4x4 map's 4 tiles alone would make 4-row GEMMs that reload U for every image).
struct Ranges {
    int64_t P, B, per_image, size, imgs;
    Ranges(int64_t P_, int64_t B_, int64_t most) : P(P_), B(B_) {
        per_image = P >= most ? (P + most - 1) / most : 1;
        imgs = P >= most ? 1 : std::max<int64_t>(1, most / P);
        size = P >= most ? (P + per_image - 1) / per_image : imgs * P;
    }
    int64_t count() const { return imgs == 1 ? B * per_image : (B + imgs - 1) / imgs; }
    void get(int64_t q, int64_t* t0, int64_t* nt) const {
        if (imgs == 1) {
            const int64_t b = q / per_image, p0 = (q % per_image) * size;
            *t0 = b * P + p0, *nt = std::min(size, P - p0);
        } else {
            *t0 = q * size, *nt = std::min(size, B * P - q * size);
        }
    }
};

// V (16 x stride x Ci) for tiles t0 .. t0+nt: B^T d B of each 4x4 input patch (rows
// 2*oh-1 .. 2*oh+2, columns alike, zero outside the image: the 'same' padding).
void input_transform(const float* x, const Shape& s, int64_t t0, int64_t nt, float* V,
                     int64_t stride) {
    const int64_t Ci = s.Ci, P = s.P();
    for (int64_t r = 0; r < nt; r++) {
        const int64_t b = (t0 + r) / P, p = (t0 + r) % P, oh = p / s.Wo(), ow = p % s.Wo();
        const float* img = x + b * s.H * s.W * Ci;
        for (int64_t c0 = 0; c0 < Ci; c0 += kLanes) {
            v8f d[16];
            for (int i = 0; i < 4; i++) {
                const int64_t ih = 2 * oh - 1 + i;
                for (int j = 0; j < 4; j++) {
                    const int64_t iw = 2 * ow - 1 + j;
                    const bool in = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
                    d[i * 4 + j] = in ? load8(img + (ih * s.W + iw) * Ci + c0) : v8f{};
                }
            }
            v8f e[16];
            for (int j = 0; j < 4; j++) {  // B^T along the rows
                e[0 + j] = d[0 + j] - d[8 + j];
                e[4 + j] = d[4 + j] + d[8 + j];
                e[8 + j] = d[8 + j] - d[4 + j];
                e[12 + j] = d[4 + j] - d[12 + j];
            }
            for (int i = 0; i < 4; i++) {  // and along the columns
                const v8f* q = e + i * 4;
                float* v = V + (i * 4 * stride + r) * Ci + c0;
                store8(v, q[0] - q[2]);
                store8(v + stride * Ci, q[1] + q[2]);
                store8(v + 2 * stride * Ci, q[2] - q[1]);
                store8(v + 3 * stride * Ci, q[1] - q[3]);
            }
        }
    }
}

// x (B, H, W, Ci); U (16, Ci, Co); bias (Co); y (B, H/2, W/2, Co), or (B, Co, H/2, W/2) with
// `nchw` (a last block before a Flatten, which then needs no copy); code (B, H/2, W/2, Co) or
// null.
void forward(const float* x, const float* U, const float* bias, float* y, uint8_t* code,
             bool nchw, const Shape& s, int threads) {
    const int64_t P = s.P(), Ci = s.Ci, Co = s.Co;
    const Ranges work(P, s.B, kChunk);
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> V(16 * kChunk * Ci), M(16 * kChunk * 16);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < work.count(); q++) {
            int64_t t0, nt;
            work.get(q, &t0, &nt);
            input_transform(x, s, t0, nt, V.data(), kChunk);
            for (int64_t co0 = 0; co0 < Co; co0 += 16) {
                for (int k = 0; k < 16; k++)
                    gemm(V.data() + k * kChunk * Ci, Ci, 1, U + k * Ci * Co + co0, Co,
                         M.data() + k * kChunk * 16, 16, nt, 16, Ci, false);
                for (int64_t r = 0; r < nt; r++) {
                    const int64_t t = t0 + r, b = t / P, p = t % P;
                    for (int h = 0; h < 2; h++) {
                        v8f m[16];
                        for (int k = 0; k < 16; k++)
                            m[k] = load8(M.data() + (k * kChunk + r) * 16 + h * kLanes);
                        v8f t0v[4], t1v[4];  // A^T along the rows
                        for (int j = 0; j < 4; j++) {
                            t0v[j] = m[j] + m[4 + j] + m[8 + j];
                            t1v[j] = m[4 + j] - m[8 + j] - m[12 + j];
                        }
                        const v8f bv = load8(bias + co0 + h * kLanes);
                        const v8f a0 = t0v[0] + t0v[1] + t0v[2] + bv;  // the window, scan order
                        const v8f a1 = t0v[1] - t0v[2] - t0v[3] + bv;
                        const v8f a2 = t1v[0] + t1v[1] + t1v[2] + bv;
                        const v8f a3 = t1v[1] - t1v[2] - t1v[3] + bv;
                        v8f mx = a0;  // a later value wins if greater or NaN (pool_relu.cpp)
                        v8i k = v8i{};
                        v8i u = (a1 > mx) | (a1 != a1);
                        mx = u ? a1 : mx, k = u ? v8i{} + 1 : k;
                        u = (a2 > mx) | (a2 != a2);
                        mx = u ? a2 : mx, k = u ? v8i{} + 2 : k;
                        u = (a3 > mx) | (a3 != a3);
                        mx = u ? a3 : mx, k = u ? v8i{} + 3 : k;
                        const int64_t oc = t * Co + co0 + h * kLanes;
                        const v8f out = mx < v8f{} ? v8f{} : mx;
                        if (nchw) {
                            float* yc = y + (b * Co + co0 + h * kLanes) * P + p;
                            for (int l = 0; l < kLanes; l++) yc[l * P] = out[l];
                        } else {
                            store8(y + oc, out);
                        }
                        if (code) {
                            const v8i kk = (mx <= v8f{}) ? v8i{} + kNoGrad : k;
                            for (int l = 0; l < kLanes; l++) code[oc + l] = uint8_t(kk[l]);
                        }
                    }
                }
            }
        }
    }
}

// Gradients from g (laid out as forward's y) and, with kPool, code: gx (B, H, W, Ci) with
// UT (16, Co, Ci) = U's transpose, dUT (16, Co, Ci) = dU's transpose (the filter transform's
// own layout), db (Co, kPool only). gx and dUT may be null (not asked for).
template <bool kPool>
void backward(const float* x, const float* UT, const float* g, const uint8_t* code, float* gx,
              float* dU, float* db, bool nchw, const Shape& s, int threads) {
    const int64_t P = s.P(), Ci = s.Ci, Co = s.Co, nU = 16 * Ci * Co;
    // whole images to a thread (the patches overlap within one): one, in chunks, or as many as
    // fit in a chunk
    const Ranges work(P, s.B, kChunkB);
    const int64_t groups = (s.B + work.imgs - 1) / work.imgs;
    std::vector<float> dU_part(dU ? size_t(threads) * nU : 0, 0.0f);
    std::vector<double> db_part(size_t(threads) * Co, 0.0);
#pragma omp parallel num_threads(threads)
    {
        const int th = omp_get_thread_num();
        float* dUt = dU ? dU_part.data() + th * nU : nullptr;
        double* dbt = db_part.data() + th * Co;
        std::vector<float> V(16 * kChunkB * Ci), dV(16 * kChunkB * Ci), dM(16 * kChunkB * Co);
        std::vector<float> dbc(Co);
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups; gi++) {
            const int64_t q0 = gi * (work.imgs == 1 ? work.per_image : 1);
            const int64_t q1 = work.imgs == 1 ? q0 + work.per_image : q0 + 1;
            if (gx) {
                const int64_t b0 = gi * work.imgs, b1 = std::min(s.B, b0 + work.imgs);
                std::memset(gx + b0 * s.H * s.W * Ci, 0, (b1 - b0) * s.H * s.W * Ci * 4);
            }
            for (int64_t q = q0; q < q1; q++) {
                int64_t t0, nt;
                work.get(q, &t0, &nt);
                if (kPool) std::fill(dbc.begin(), dbc.end(), 0.0f);  // the bias gradient
                for (int64_t r = 0; r < nt; r++) {  // dM = A dY A^T
                    const int64_t t = t0 + r, b = t / P, p = t % P;
                    const int64_t oh = 2 * (p / s.Wo()), ow = 2 * (p % s.Wo());
                    const bool right = ow + 1 < s.W, down = oh + 1 < s.H;
                    for (int64_t c0 = 0; c0 < Co; c0 += kLanes) {
                        v8f y00, y01, y10, y11;
                        if (kPool) {  // dY one-hot by the code
                            const int64_t o = t * Co;
                            v8f gv;
                            if (nchw) {
                                const float* gc = g + (b * Co + c0) * P + p;
                                for (int l = 0; l < kLanes; l++) gv[l] = gc[l * P];
                            } else {
                                gv = load8(g + o + c0);
                            }
                            v8i k;
                            for (int l = 0; l < kLanes; l++) k[l] = code[o + c0 + l];
                            y00 = k == 0 ? gv : v8f{}, y01 = k == 1 ? gv : v8f{};
                            y10 = k == 2 ? gv : v8f{}, y11 = k == 3 ? gv : v8f{};
                            store8(dbc.data() + c0,
                                   load8(dbc.data() + c0) + y00 + y01 + y10 + y11);
                        } else {  // the 2x2 block's gradients, 0 outside the map
                            const float* gb = g + ((b * s.H + oh) * s.W + ow) * Co + c0;
                            y00 = load8(gb);
                            y01 = right ? load8(gb + Co) : v8f{};
                            y10 = down ? load8(gb + s.W * Co) : v8f{};
                            y11 = down && right ? load8(gb + (s.W + 1) * Co) : v8f{};
                        }
                        const v8f e0[4] = {y00, y00 + y10, y00 - y10, -y10};  // A along rows
                        const v8f e1[4] = {y01, y01 + y11, y01 - y11, -y11};
                        for (int i = 0; i < 4; i++) {  // and along the columns
                            float* m = dM.data() + (i * 4 * kChunkB + r) * Co + c0;
                            store8(m, e0[i]);
                            store8(m + kChunkB * Co, e0[i] + e1[i]);
                            store8(m + 2 * kChunkB * Co, e0[i] - e1[i]);
                            store8(m + 3 * kChunkB * Co, -e1[i]);
                        }
                    }
                }
                if (kPool)
                    for (int64_t c = 0; c < Co; c++) dbt[c] += dbc[c];
                if (gx) {  // dV = dM U^T, then B dV B^T added into each patch
                    for (int k = 0; k < 16; k++)
                        gemm(dM.data() + k * kChunkB * Co, Co, 1, UT + k * Co * Ci, Ci,
                             dV.data() + k * kChunkB * Ci, Ci, nt, Ci, Co, false);
                    for (int64_t r = 0; r < nt; r++) {
                        const int64_t t = t0 + r, b = t / P, p = t % P;
                        const int64_t oh = p / s.Wo(), ow = p % s.Wo();
                        float* gimg = gx + b * s.H * s.W * Ci;
                        for (int64_t c0 = 0; c0 < Ci; c0 += kLanes) {
                            v8f v[16];
                            for (int k = 0; k < 16; k++)
                                v[k] = load8(dV.data() + (k * kChunkB + r) * Ci + c0);
                            v8f e[16];
                            for (int j = 0; j < 4; j++) {  // B along the rows
                                e[0 + j] = v[0 + j];
                                e[4 + j] = v[4 + j] - v[8 + j] + v[12 + j];
                                e[8 + j] = v[4 + j] + v[8 + j] - v[0 + j];
                                e[12 + j] = -v[12 + j];
                            }
                            for (int i = 0; i < 4; i++) {
                                const int64_t ih = 2 * oh - 1 + i;
                                if (ih < 0 || ih >= s.H) continue;
                                const v8f* q = e + i * 4;
                                const v8f d[4] = {q[0], q[1] - q[2] + q[3], q[1] + q[2] - q[0],
                                                  -q[3]};  // and along the columns
                                for (int j = 0; j < 4; j++) {
                                    const int64_t iw = 2 * ow - 1 + j;
                                    if (iw < 0 || iw >= s.W) continue;
                                    float* dst = gimg + (ih * s.W + iw) * Ci + c0;
                                    store8(dst, load8(dst) + d[j]);
                                }
                            }
                        }
                    }
                }
                if (dUt) {  // dU^T += dM^T V, V recomputed from the input
                    input_transform(x, s, t0, nt, V.data(), kChunkB);
                    for (int k = 0; k < 16; k++)
                        gemm(dM.data() + k * kChunkB * Co, 1, Co, V.data() + k * kChunkB * Ci, Ci,
                             dUt + k * Co * Ci, Ci, Co, Ci, nt, true);
                }
            }
        }
    }
    if (dU) {
        for (int64_t i = 0; i < nU; i++) {
            float sum = 0.0f;
            for (int th = 0; th < threads; th++) sum += dU_part[th * nU + i];
            dU[i] = sum;
        }
    }
    if (kPool) {
        for (int64_t c = 0; c < Co; c++) {
            double sum = 0.0;
            for (int th = 0; th < threads; th++) sum += db_part[th * Co + c];
            db[c] = float(sum);
        }
    }
}

}  // namespace

extern "C" {

void winograd_pool_relu_forward_f32(const float* x, const float* U, const float* bias,
                                    float* y, uint8_t* code, int nchw, int64_t B, int64_t H,
                                    int64_t W, int64_t Ci, int64_t Co, int threads) {
    forward(x, U, bias, y, code, nchw != 0, Shape{B, H, W, Ci, Co}, threads);
}

void winograd_pool_relu_backward_f32(const float* x, const float* UT, const float* g,
                                     const uint8_t* code, float* gx, float* dUT, float* db,
                                     int nchw, int64_t B, int64_t H, int64_t W, int64_t Ci,
                                     int64_t Co, int threads) {
    backward<true>(x, UT, g, code, gx, dUT, db, nchw != 0, Shape{B, H, W, Ci, Co}, threads);
}

// The gradients of a 3x3 'same' convolution without bias (a BatchNorm follows; ATen runs its
// forward), NHWC: g (B, H, W, Co) -> gx (B, H, W, Ci), dUT (16, Co, Ci); either may be null.
void winograd_conv_backward_f32(const float* x, const float* UT, const float* g, float* gx,
                                float* dUT, int64_t B, int64_t H, int64_t W, int64_t Ci,
                                int64_t Co, int threads) {
    backward<false>(x, UT, g, nullptr, gx, dUT, nullptr, false, Shape{B, H, W, Ci, Co, false},
                    threads);
}

}  // extern "C"
