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
// Work goes in equal chunks of up to kChunk tiles of one image, whose transformed data stay
// in the cache;
// the GEMMs run on a 6x16 register-blocked kernel (12 accumulators of 8 floats, AVX2 + FMA
// with -march=native). Sums are float32 in a fixed order: the same bits for the same thread
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
    int64_t Ho() const { return H / 2; }
    int64_t Wo() const { return W / 2; }
    int64_t P() const { return Ho() * Wo(); }  // tiles (pooled outputs) per image
    // An image's tiles in chunks of equal size (at most kChunk): seed-mnist's 49 tiles go as
    // 17 + 17 + 15, not 24 + 24 + 1 (a 1-row GEMM runs at a sixth of the 6-row one's speed).
    int64_t chunks(int64_t most = kChunk) const { return (P() + most - 1) / most; }
    int64_t chunk(int64_t most = kChunk) const { return (P() + chunks(most) - 1) / chunks(most); }
};

// V (16 x kChunk x Ci) for tiles p0 .. p0+nt of one image: B^T d B of each 4x4 input patch
// (rows 2*oh-1 .. 2*oh+2, columns alike, zero outside the image: the 'same' padding).
void input_transform(const float* img, const Shape& s, int64_t p0, int64_t nt, float* V,
                     int64_t stride) {
    const int64_t Ci = s.Ci;
    for (int64_t r = 0; r < nt; r++) {
        const int64_t oh = (p0 + r) / s.Wo(), ow = (p0 + r) % s.Wo();
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
    const int64_t P = s.P(), per_image = s.chunks(), size = s.chunk(), Ci = s.Ci, Co = s.Co;
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> V(16 * kChunk * Ci), M(16 * kChunk * 16);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < s.B * per_image; q++) {
            const int64_t b = q / per_image, p0 = (q % per_image) * size;
            const int64_t nt = std::min(size, P - p0);
            input_transform(x + b * s.H * s.W * Ci, s, p0, nt, V.data(), kChunk);
            for (int64_t co0 = 0; co0 < Co; co0 += 16) {
                for (int k = 0; k < 16; k++)
                    gemm(V.data() + k * kChunk * Ci, Ci, 1, U + k * Ci * Co + co0, Co,
                         M.data() + k * kChunk * 16, 16, nt, 16, Ci, false);
                for (int64_t r = 0; r < nt; r++) {
                    const int64_t o = (b * P + p0 + r) * Co + co0;
                    for (int h = 0; h < 2; h++) {
                        v8f m[16];
                        for (int k = 0; k < 16; k++)
                            m[k] = load8(M.data() + (k * kChunk + r) * 16 + h * kLanes);
                        v8f t0[4], t1[4];  // A^T along the rows
                        for (int j = 0; j < 4; j++) {
                            t0[j] = m[j] + m[4 + j] + m[8 + j];
                            t1[j] = m[4 + j] - m[8 + j] - m[12 + j];
                        }
                        const v8f bv = load8(bias + co0 + h * kLanes);
                        const v8f a0 = t0[0] + t0[1] + t0[2] + bv;  // the window, scan order
                        const v8f a1 = t0[1] - t0[2] - t0[3] + bv;
                        const v8f a2 = t1[0] + t1[1] + t1[2] + bv;
                        const v8f a3 = t1[1] - t1[2] - t1[3] + bv;
                        v8f mx = a0;  // a later value wins if greater or NaN (pool_relu.cpp)
                        v8i k = v8i{};
                        v8i u = (a1 > mx) | (a1 != a1);
                        mx = u ? a1 : mx, k = u ? v8i{} + 1 : k;
                        u = (a2 > mx) | (a2 != a2);
                        mx = u ? a2 : mx, k = u ? v8i{} + 2 : k;
                        u = (a3 > mx) | (a3 != a3);
                        mx = u ? a3 : mx, k = u ? v8i{} + 3 : k;
                        const int64_t oc = o + h * kLanes;
                        const v8f out = mx < v8f{} ? v8f{} : mx;
                        if (nchw) {
                            float* yc = y + (b * Co + co0 + h * kLanes) * P + p0 + r;
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

// Gradients from g (laid out as forward's y), code: gx (B, H, W, Ci) with UT (16, Co, Ci) = U's
// transpose, dUT (16, Co, Ci) = dU's transpose (the filter transform's own layout), db (Co).
// gx and dUT may be null (not asked for).
void backward(const float* x, const float* UT, const float* g, const uint8_t* code, float* gx,
              float* dU, float* db, bool nchw, const Shape& s, int threads) {
    const int64_t P = s.P(), Ci = s.Ci, Co = s.Co, nU = 16 * Ci * Co;
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
        for (int64_t b = 0; b < s.B; b++) {  // whole images: the patches overlap within one
            float* gimg = gx ? gx + b * s.H * s.W * Ci : nullptr;
            if (gimg) std::memset(gimg, 0, s.H * s.W * Ci * sizeof(float));
            for (int64_t p0 = 0; p0 < P; p0 += s.chunk(kChunkB)) {
                const int64_t nt = std::min(s.chunk(kChunkB), P - p0);
                std::fill(dbc.begin(), dbc.end(), 0.0f);
                for (int64_t r = 0; r < nt; r++) {  // dM = A dY A^T, dY one-hot by the code
                    const int64_t o = (b * P + p0 + r) * Co;
                    for (int64_t c0 = 0; c0 < Co; c0 += kLanes) {
                        v8f gv;
                        if (nchw) {
                            const float* gc = g + (b * Co + c0) * P + p0 + r;
                            for (int l = 0; l < kLanes; l++) gv[l] = gc[l * P];
                        } else {
                            gv = load8(g + o + c0);
                        }
                        v8i k;
                        for (int l = 0; l < kLanes; l++) k[l] = code[o + c0 + l];
                        const v8f y00 = k == 0 ? gv : v8f{}, y01 = k == 1 ? gv : v8f{};
                        const v8f y10 = k == 2 ? gv : v8f{}, y11 = k == 3 ? gv : v8f{};
                        store8(dbc.data() + c0, load8(dbc.data() + c0) + y00 + y01 + y10 + y11);
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
                for (int64_t c = 0; c < Co; c++) dbt[c] += dbc[c];
                if (gimg) {  // dV = dM U^T, then B dV B^T added into each patch
                    for (int k = 0; k < 16; k++)
                        gemm(dM.data() + k * kChunkB * Co, Co, 1, UT + k * Co * Ci, Ci,
                             dV.data() + k * kChunkB * Ci, Ci, nt, Ci, Co, false);
                    for (int64_t r = 0; r < nt; r++) {
                        const int64_t oh = (p0 + r) / s.Wo(), ow = (p0 + r) % s.Wo();
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
                    input_transform(x + b * s.H * s.W * Ci, s, p0, nt, V.data(), kChunkB);
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
    for (int64_t c = 0; c < Co; c++) {
        double sum = 0.0;
        for (int th = 0; th < threads; th++) sum += db_part[th * Co + c];
        db[c] = float(sum);
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
    backward(x, UT, g, code, gx, dUT, db, nchw != 0, Shape{B, H, W, Ci, Co}, threads);
}

}  // extern "C"
