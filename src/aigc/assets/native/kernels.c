/* Float32 CPU kernels for aigc's GPT and Llama decoding (GELU, attention, the fused MLP, the
 * small operations of a decoding step) and its diffusion UNets (3x3 convolutions, GroupNorm +
 * SiLU), forward and backward.
 *
 * Part of aigc: aigc.models.native compiles this file on the machine it runs on, with
 * -O3 -march=native, and uses each kernel only where it is measured faster than ATen's.
 *
 * GPT-2's tanh-approximated GELU, for contiguous arrays:
 *
 *   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *           = x sigmoid(2u)                      (since 0.5 (1 + tanh(u)) = sigmoid(2u))
 *   gelu'(x) = s + x s (1 - s) dz/dx,  s = sigmoid(z), z = 2u, dz/dx = 2 sqrt(2/pi) (1 + 3 0.044715 x^2)
 *
 * exp is computed here, not by libm, so the loops vectorize without -ffast-math: 2^t for
 * t = -z log2(e), split as 2^n 2^f with n = round(t), |f| <= 1/2, 2^f = e^(f ln 2) by its Taylor
 * series to degree 7 (relative error below 1e-8 on that interval), and 2^n written into the
 * exponent bits. e^-z is taken at z clamped to [-80, 80]; sigmoid is 1 to float precision
 * above 80 and is set to 0 below -80 (so that a huge negative x gives 0, not x e^-80); a NaN
 * input stays NaN (the clamp passes it through). The GELU runs on VL-lane vectors (below): with
 * AVX-512 the rounding and the scaling by 2^n are one instruction each, the clamp two, and
 * 1 / (1 + e^-z) is a reciprocal estimate refined by one Newton step instead of a division
 * (24 vector operations per 16 values, loads, stores and register copies aside, instead of 26
 * with two divisions; forward 16%, backward 13% faster alone; inside a compiled GPT training
 * step the gain is about 1%, below what benchmarks/gpt_speed.py resolves; issue #17,
 * docs/performance.md). With AVX2 the clamp is one instruction too (vminps, vmaxps) and the
 * reciprocal stays a division (recip_v).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define TWO_C 1.5957691216057308f   /* 2 sqrt(2/pi) */
#define A 0.044715f
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* e^f for |f| <= ln2 / 2: the Taylor series to degree 7 (scalar or VL lanes alike) */
#define EXP_POLY(f) (1.0f + (f) * (1.0f + (f) * (0.5f + (f) * (1.0f / 6 + (f) * (1.0f / 24      \
                     + (f) * (1.0f / 120 + (f) * (1.0f / 720 + (f) * (1.0f / 5040))))))))

static inline float exp_neg(float z) {  /* e^(-z) for z in [-80, 80], NaN passes */
    float t = -z * LOG2E;
    float n = floorf(t + 0.5f);
    float f = (t - n) * LN2;  /* |f| <= ln2 / 2; NaN for a NaN z, which p carries */
    float p = EXP_POLY(f);
    n = n == n ? n : 0.0f;  /* converting NaN to an integer is undefined */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Vectors of VL float lanes (GCC/clang vector extensions) as wide as the machine's registers:
 * 16 with AVX-512 (32 registers of 64 bytes), 8 with AVX or AVX2 (16 registers of 32 bytes),
 * 4 otherwise (SSE, NEON). Wider vectors than the registers are no shortcut: GCC keeps a
 * vector type the target has no register for in memory and runs each operation as loads,
 * narrower operations and stores (on an AVX2 CPU the kernels ran 7-25x slower than ATen's that
 * way: benchmarks/results/kernels_probe-cpu-2026-12-01-amd-before.txt).
 * Sizes the callers see stay in multiples of 16 (head widths, channels, the probabilities'
 * padded rows, TPAD); each kernel walks them VL lanes at a time, and every lane's arithmetic
 * is the same whatever VL is (only the horizontal sums and maxima group lanes differently).
 * Register tiles are sized for the register file (GMR, WINO_NV below). */
#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
#if VL == 16 || defined(__aarch64__)
#define VREGS 32 /* vector registers: AVX-512's and NEON's 32, AVX2's and SSE's 16 */
#else
#define VREGS 16
#endif
#define TPAD 16 /* the probabilities' rows are padded to a multiple of this (aigc.models.native) */
typedef float vf __attribute__((vector_size(4 * VL), aligned(4 * VL)));
typedef float vfu __attribute__((vector_size(4 * VL), aligned(4)));
typedef int32_t vfi __attribute__((vector_size(4 * VL), aligned(4 * VL)));
typedef uint32_t vfui __attribute__((vector_size(4 * VL), aligned(4 * VL)));

/* b where the mask holds, a elsewhere */
static inline vf select_v(vfi mask, vf a, vf b) {
    return (vf)(((vfi)a & ~mask) | ((vfi)b & mask));
}

/* min(z, hi) and max(z, lo); NaN passes (vminps and vmaxps return their second operand when
 * either is NaN) */
static inline vf min_v(vf z, float hi) {
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps(_mm512_set1_ps(hi), (__m512)z);
#elif VL == 8
    return (vf)_mm256_min_ps(_mm256_set1_ps(hi), (__m256)z);
#else
    return select_v(z > hi, z, (vf){0} + hi);
#endif
}

static inline vf max_v(vf z, float lo) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps(_mm512_set1_ps(lo), (__m512)z);
#elif VL == 8
    return (vf)_mm256_max_ps(_mm256_set1_ps(lo), (__m256)z);
#else
    return select_v(z < lo, z, (vf){0} + lo);
#endif
}

/* e^(-z) for VL lanes, z in [-80, 80] (callers clamp); same method as exp_neg, NaN passes.
 * With AVX-512 the rounding of t and the scaling by 2^n are one instruction each
 * (vrndscaleps, vscalefps) and f comes from one fused multiply-add. */
static inline vf exp_neg_core_v(vf z) {
#if defined(__AVX512F__)
    vf t = -z * LOG2E;
    vf n = (vf)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf f = -z - n * LN2; /* = (t - n) ln2, |f| <= ln2 / 2 */
    return (vf)_mm512_scalef_ps((__m512)EXP_POLY(f), (__m512)n);
#else
    const vf magic = (vf){0} + 12582912.0f; /* 1.5 * 2^23 */
    vf t = -z * LOG2E;
    vf n = (t + magic) - magic; /* round to nearest */
    vf f = (t - n) * LN2; /* NaN for a NaN z, which p carries */
    vf p = EXP_POLY(f);
    n = select_v(n != n, n, (vf){0}); /* converting NaN to an integer is undefined */
    vfui bits = (vfui)(__builtin_convertvector(n, vfi) + 127) << 23;
    return p * (vf)bits;
#endif
}

/* e^(-z) for VL lanes, z in [0, 80] (a softmax's m - s; larger z is taken as 80) */
static inline vf exp_neg_v(vf z) {
    return exp_neg_core_v(min_v(z, 80.0f));
}

/* 1 / d for VL lanes with d >= 1: AVX-512's 14-bit reciprocal estimate and one Newton step
 * (relative error near 2^-23, an ulp or two from the quotient, at a fraction of a vector
 * division's time); a plain division elsewhere (AVX's 12-bit estimate needs two Newton steps
 * to give exactly 1 where 1 + e^-z rounds to 1, which the GELU's slope 1 - s magnifies, and
 * then saves nothing measurable on an AVX2 CPU). NaN passes. */
static inline vf recip_v(vf d) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* the GELU's z = 2u (see the top) */
static inline vf gelu_z(vf v) {
    return TWO_C * v * (1.0f + A * v * v);
}

/* sigmoid(z), e^-z taken at z clamped to [-80, 80] */
static inline vf sigmoid_v(vf z) {
    return recip_v(1.0f + exp_neg_core_v(min_v(max_v(z, -80.0f), 80.0f)));
}

/* x where z >= -80 (or z is NaN), 0 below: far below zero GELU and its slope are 0, not
 * x e^-80 (nor NaN where x^2 overflows) */
static inline vf zero_below_v(vf z, vf x) {
#if defined(__AVX512F__)  /* one compare into a mask register and a zeroing move */
    return (vf)_mm512_maskz_mov_ps(
        _mm512_cmp_ps_mask((__m512)z, _mm512_set1_ps(-80.0f), _CMP_NLT_UQ), (__m512)x);
#else
    return select_v(z < -80.0f, x, (vf){0});
#endif
}

static inline vf gelu_fwd_v(vf v, vf gy) {
    (void)gy;
    const vf z = gelu_z(v);
    return zero_below_v(z, v * sigmoid_v(z));
}

static inline vf gelu_bwd_v(vf v, vf gy) {
    const vf z = gelu_z(v), s = sigmoid_v(z);
    const vf dz = TWO_C * (1.0f + 3.0f * A * v * v);
    return gy * zero_below_v(z, s + v * s * (1.0f - s) * dz);
}

/* Elementwise kernels run in blocks over `threads` threads of the OpenMP runtime torch uses
 * (when built with -fopenmp, aigc.models.native, which passes torch's thread count), on one
 * thread for small arrays. Every element goes through the same vector code (the last partial
 * vector through a zero-padded copy) whichever thread takes its block, so results do not
 * depend on the thread count or on where an element sits. */
#define BLOCK 16384

typedef struct { const float *gy, *x; float *out; } gelu_args;  /* gy: backward only */

#define GELU_RANGE(name, body)                                                                \
    static void name(const gelu_args *a, ptrdiff_t lo, ptrdiff_t hi) {                      \
        const float *restrict x = a->x, *restrict gy = a->gy;                               \
        float *restrict out = a->out;                                                       \
        const vf zero = {0};                                                               \
        ptrdiff_t i = lo;                                                                   \
        for (; i + VL <= hi; i += VL)                                                       \
            *(vfu *)(out + i) = body(*(const vfu *)(x + i),                               \
                                      gy ? *(const vfu *)(gy + i) : zero);                 \
        if (i < hi) {                                                                       \
            float bx[VL] = {0}, bg[VL] = {0}, bo[VL];                                       \
            memcpy(bx, x + i, (size_t)(hi - i) * sizeof *x);                                \
            if (gy) memcpy(bg, gy + i, (size_t)(hi - i) * sizeof *gy);                      \
            *(vfu *)bo = body(*(const vfu *)bx, *(const vfu *)bg);                       \
            memcpy(out + i, bo, (size_t)(hi - i) * sizeof *out);                            \
        }                                                                                   \
    }
GELU_RANGE(gelu_fwd_range, gelu_fwd_v)
GELU_RANGE(gelu_bwd_range, gelu_bwd_v)

/* range(a, lo, hi) over the BLOCK-sized blocks of n values, across `threads` threads when there
 * are four blocks or more. */
static void over_blocks(void (*range)(const gelu_args *, ptrdiff_t, ptrdiff_t),
                        const gelu_args *a, ptrdiff_t n, int threads) {
    const ptrdiff_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks >= 4 && threads > 1)
    for (ptrdiff_t blk = 0; blk < blocks; blk++)
        range(a, blk * BLOCK, (blk + 1) * BLOCK < n ? (blk + 1) * BLOCK : n);
}

void aigc_gelu_tanh_fwd(const float *restrict x, float *restrict y, ptrdiff_t n, int threads) {
    const gelu_args a = {NULL, x, y};
    over_blocks(gelu_fwd_range, &a, n, threads);
}

void aigc_gelu_tanh_bwd(const float *restrict gy, const float *restrict x, float *restrict gx,
                        ptrdiff_t n, int threads) {
    const gelu_args a = {gy, x, gx};
    over_blocks(gelu_bwd_range, &a, n, threads);
}

/* Llama decoding (aigc.models.llama_decode), for rows of contiguous float32:
 *
 * RMSNorm, transformers' LlamaRMSNorm in float32: y = x / sqrt(mean(x^2) + eps) * w. */
void aigc_rms_norm(const float *restrict x, const float *restrict w, float *restrict y,
                   ptrdiff_t rows, ptrdiff_t dim, float eps) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (ptrdiff_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (ptrdiff_t i = 0; i < dim; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

/* SwiGLU's product: gu (rows, 2n) holds gate | up; out (rows, n) = silu(gate) * up, with
 * silu(g) = g / (1 + e^-g), 0 below g = -80 (where it is below 1e-33 in size). */
void aigc_silu_mul(const float *restrict gu, float *restrict out, ptrdiff_t rows, ptrdiff_t n) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * n, *u = g + n;
        float *o = out + r * n;
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++) {
            float z = g[i];
            z = z < -80.0f ? -80.0f : (z > 80.0f ? 80.0f : z);
            o[i] = (g[i] < -80.0f ? 0.0f : g[i] / (1.0f + exp_neg(z))) * u[i];
        }
    }
}

/* Rotary positions and the key/value cache for T new tokens: qkv (T, (H + 2 KV) d) is the fused
 * projection; cos, sin (T, d) the tables of their positions (halves repeated, as transformers
 * builds them). Writes q (H, T, d) rotated; the rotated keys and the values into
 * k_cache, v_cache (KV, cap, d) at positions pos .. pos + T - 1.
 * rotate(x)[e] = x[e] cos[e] - x[e + d/2] sin[e] for e < d/2, x[e] cos[e] + x[e - d/2] sin[e] after. */
void aigc_rope_cache(const float *restrict qkv, const float *restrict cos_t,
                     const float *restrict sin_t, float *restrict q, float *restrict k_cache,
                     float *restrict v_cache, ptrdiff_t T, ptrdiff_t H, ptrdiff_t KV,
                     ptrdiff_t d, ptrdiff_t cap, ptrdiff_t pos) {
    const ptrdiff_t half = d / 2, row = (H + 2 * KV) * d;
    for (ptrdiff_t t = 0; t < T; t++) {
        const float *src = qkv + t * row, *c = cos_t + t * d, *s = sin_t + t * d;
        for (ptrdiff_t h = 0; h < H + KV; h++) {
            const float *x = src + h * d;
            float *dst = h < H ? q + (h * T + t) * d : k_cache + ((h - H) * cap + pos + t) * d;
#pragma omp simd
            for (ptrdiff_t e = 0; e < half; e++) {
                dst[e] = x[e] * c[e] - x[e + half] * s[e];
                dst[e + half] = x[e + half] * c[e + half] + x[e] * s[e + half];
            }
        }
        const float *v = src + (H + KV) * d;
        for (ptrdiff_t h = 0; h < KV; h++) {
            float *dst = v_cache + (h * cap + pos + t) * d;
            for (ptrdiff_t e = 0; e < d; e++) dst[e] = v[h * d + e];
        }
    }
}


/* Causal self-attention of a small GPT (aigc.models.gpt, training and full-sequence forwards),
 * float32, for T <= 256 keys and head width d a multiple of 16 up to 128:
 *
 *   S = Q K^T, P = softmax(scale S + causal mask), Y = P V              per batch row and head
 *   dP = dY V^T, dS = P (dP - rowsum(P dP)) scale, dQ = dS K, dK = dS^T Q, dV = P^T dY
 *
 * Read from and written to the fused projection's layout, qkv (B, T, 3C) with C = H d, so no
 * head split, transpose or concatenation is copied; P is kept for the backward pass (the
 * eager formula keeps it too). The products are register-blocked outer products over VL-lane
 * vectors (GCC/clang vector extensions; -march=native picks the widest registers), skipping
 * what the causal mask zeroes. Measured against the head split, ATen's flash kernel and the
 * merge it replaces by `aigc kernels --measure` (figures in docs/performance.md). */
/* cm (M x N) = am (M x K) bm (K x N) for N a multiple of 16. am's element (r, k) is at
 * am[r * ars + k * aks]; bm's row k at bm + k * ldb (any alignment); cm's row stride ldc.
 * Row blocks of 4. kmode 1: only k <= the block's last row (am zero past its diagonal);
 * kmode 2: only k >= the block's first row (am zero before it). jcausal: only the 16-column
 * chunks that reach the block's last row. */
static inline __attribute__((always_inline)) void
mm_rows(const float *restrict am, ptrdiff_t ars, ptrdiff_t aks, const float *restrict bm,
        ptrdiff_t ldb, float *restrict cm, ptrdiff_t ldc, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N,
        int kmode, int jcausal) {
    for (ptrdiff_t i0 = 0; i0 < M; i0 += 4) {
        const ptrdiff_t rows = M - i0 < 4 ? M - i0 : 4, imax = i0 + rows - 1;
        const ptrdiff_t klo = kmode == 2 ? i0 : 0;
        const ptrdiff_t khi = kmode == 1 ? (imax + 1 < K ? imax + 1 : K) : K;
        ptrdiff_t jend = N;
        if (jcausal) { jend = (imax / VL + 1) * VL; jend = jend > N ? N : jend; }
        const float *a0 = am + i0 * ars, *a1 = a0 + (rows > 1) * ars,
                    *a2 = a0 + (rows > 2) * 2 * ars, *a3 = a0 + (rows > 3) * 3 * ars;
        for (ptrdiff_t j0 = 0; j0 < jend; j0 += 2 * VL) {
            vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
            const int two = j0 + VL < jend;
            if (two) {
                for (ptrdiff_t k = klo; k < khi; k++) {
                    const vf b0 = *(const vfu *)(bm + k * ldb + j0), b1 = *(const vfu *)(bm + k * ldb + j0 + VL);
                    const float x0 = a0[k * aks], x1 = a1[k * aks], x2 = a2[k * aks], x3 = a3[k * aks];
                    c00 += x0 * b0; c01 += x0 * b1; c10 += x1 * b0; c11 += x1 * b1;
                    c20 += x2 * b0; c21 += x2 * b1; c30 += x3 * b0; c31 += x3 * b1;
                }
            } else {
                for (ptrdiff_t k = klo; k < khi; k++) {
                    const vf b0 = *(const vfu *)(bm + k * ldb + j0);
                    c00 += a0[k * aks] * b0; c10 += a1[k * aks] * b0;
                    c20 += a2[k * aks] * b0; c30 += a3[k * aks] * b0;
                }
            }
            float *o = cm + i0 * ldc + j0;
            *(vfu *)o = c00;
            if (rows > 1) *(vfu *)(o + ldc) = c10;
            if (rows > 2) *(vfu *)(o + 2 * ldc) = c20;
            if (rows > 3) *(vfu *)(o + 3 * ldc) = c30;
            if (two) {
                *(vfu *)(o + VL) = c01;
                if (rows > 1) *(vfu *)(o + ldc + VL) = c11;
                if (rows > 2) *(vfu *)(o + 2 * ldc + VL) = c21;
                if (rows > 3) *(vfu *)(o + 3 * ldc + VL) = c31;
            }
        }
    }
}

/* Two-vector shuffles: lane l of the result is lane m_l of a | b (0 .. VL - 1 from a, VL ..
 * 2 VL - 1 from b). */
#if defined(__clang__)
#define SHUF2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF2(a, b, ...) __builtin_shuffle(a, b, (vfi){__VA_ARGS__})
#endif

/* One stage of a VL x VL transpose in registers: rows i and i + s (i's bit s clear) swap their
 * s-wide blocks across the diagonal (TR_LO_s: each 2s-lane block's first s lanes of a, then
 * of b; TR_HI_s: the last s of each); stages s = VL / 2, ..., 2, 1 transpose the whole block. */
#define TR_PAIR(r, i, s) do {                                                              \
        const vf a_ = r[i], b_ = r[(i) + (s)];                                             \
        r[i] = SHUF2(a_, b_, TR_LO_##s);                                                   \
        r[(i) + (s)] = SHUF2(a_, b_, TR_HI_##s);                                           \
    } while (0)
#define TR_STAGE(r, s) do {                                                                \
        _Pragma("GCC unroll 16")                                                           \
        for (int i_ = 0; i_ < VL; i_++)                                                    \
            if (!(i_ & (s))) TR_PAIR(r, i_, s);                                            \
    } while (0)
#if VL == 16
#define TR_LO_8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define TR_HI_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define TR_LO_4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define TR_HI_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define TR_LO_2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define TR_HI_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define TR_LO_1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define TR_HI_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
/* lane i of the result: lane i ^ s (the halves, quarters, ... swapped) */
#define SWAP_8 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7
#define SWAP_4 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11
#define SWAP_2 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13
#define SWAP_1 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14
#define LANES 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#elif VL == 8
#define TR_LO_4 0, 1, 2, 3, 8, 9, 10, 11
#define TR_HI_4 4, 5, 6, 7, 12, 13, 14, 15
#define TR_LO_2 0, 1, 8, 9, 4, 5, 12, 13
#define TR_HI_2 2, 3, 10, 11, 6, 7, 14, 15
#define TR_LO_1 0, 8, 2, 10, 4, 12, 6, 14
#define TR_HI_1 1, 9, 3, 11, 5, 13, 7, 15
#define SWAP_4 4, 5, 6, 7, 0, 1, 2, 3
#define SWAP_2 2, 3, 0, 1, 6, 7, 4, 5
#define SWAP_1 1, 0, 3, 2, 5, 4, 7, 6
#define LANES 0, 1, 2, 3, 4, 5, 6, 7
#else
#define TR_LO_2 0, 1, 4, 5
#define TR_HI_2 2, 3, 6, 7
#define TR_LO_1 0, 4, 2, 6
#define TR_HI_1 1, 5, 3, 7
#define SWAP_2 2, 3, 0, 1
#define SWAP_1 1, 0, 3, 2
#define LANES 0, 1, 2, 3
#endif

static inline __attribute__((always_inline)) void transpose_v(vf r[VL]) {
#if VL == 16
    TR_STAGE(r, 8);
#endif
#if VL >= 8
    TR_STAGE(r, 4);
#endif
    TR_STAGE(r, 2);
    TR_STAGE(r, 1);
}

/* xt (d x Tp) = x (T x d, row stride ld) transposed, columns T .. Tp zero; VL x VL blocks
 * through registers (d and Tp are multiples of 16). */
static void transpose_pad(const float *restrict x, ptrdiff_t ld, float *restrict xt, ptrdiff_t T,
                          ptrdiff_t Tp, ptrdiff_t d) {
    for (ptrdiff_t t0 = 0; t0 < Tp; t0 += VL)
        for (ptrdiff_t c0 = 0; c0 < d; c0 += VL) {
            const float *src = x + t0 * ld + c0;
            vf r[VL];
            if (t0 + VL <= T) {
                for (int i = 0; i < VL; i++) r[i] = *(const vfu *)(src + i * ld);
            } else {  /* the last block of a T that is not a multiple of 16 */
                for (int i = 0; i < VL; i++) r[i] = t0 + i < T ? *(const vfu *)(src + i * ld) : (vf){0};
            }
            transpose_v(r);
            for (int i = 0; i < VL; i++) *(vfu *)(xt + (c0 + i) * Tp + t0) = r[i];
        }
}

/* The sum and the maximum of the VL lanes, by halves (log2 VL shuffles, not VL - 1 dependent
 * adds). */
static inline float hsum_v(vf v) {
#if VL == 16
    v += SHUF2(v, v, SWAP_8);
#endif
#if VL >= 8
    v += SHUF2(v, v, SWAP_4);
#endif
    v += SHUF2(v, v, SWAP_2);
    v += SHUF2(v, v, SWAP_1);
    return v[0];
}

static inline vf vmax_v(vf a, vf b) {
    const vfi a_big = a > b;
    return (vf)(((vfi)a & a_big) | ((vfi)b & ~a_big));
}

static inline float hmax_v(vf v) {
#if VL == 16
    v = vmax_v(v, SHUF2(v, v, SWAP_8));
#endif
#if VL >= 8
    v = vmax_v(v, SHUF2(v, v, SWAP_4));
#endif
    v = vmax_v(v, SHUF2(v, v, SWAP_2));
    v = vmax_v(v, SHUF2(v, v, SWAP_1));
    return v[0];
}

static const vfi LANE = {LANES};

/* Threads only where there are several heads and enough work to pay for waking them. */
#define ATTN_THREADED(B, H, T, d, threads) \
    ((threads) > 1 && (B) * (H) >= 2 && (B) * (H) * (T) * (T) * (d) >= (1 << 18))

/* A thread's scratch, on the heap (too large for every thread's stack); NULL and *failed set
 * when out of memory (the thread then skips its share and the call reports -1). */
static float *scratch(size_t floats, int *failed) {
    float *buf = aligned_alloc(64, sizeof(float) * floats);
    if (buf == NULL) {
#pragma omp atomic write
        *failed = 1;
    }
    return buf;
}

/* dst (T x d, rows of d) = one head's T rows of src (row stride ld) + bias (d): the projection's
 * bias added to a head's queries, keys or values where the projection was computed without it
 * (ATen's addmm writes the bias into its whole output before the product; here it is added to
 * a head's rows in the thread's scratch, in cache, on their way into the products). */
static void add_bias_rows(const float *restrict src, ptrdiff_t ld, const float *restrict bias,
                          float *restrict dst, ptrdiff_t T, ptrdiff_t d) {
    for (ptrdiff_t t = 0; t < T; t++)
        for (ptrdiff_t c = 0; c < d; c += VL)
            *(vfu *)(dst + t * d + c) = *(const vfu *)(src + t * ld + c) + *(const vfu *)(bias + c);
}

/* Causal self-attention for T <= 256 over a fused projection, float32.
 * qkv (B, T, 3C) contiguous, C = H d, d a multiple of 16; bias (3C) or NULL: the projection's
 * bias, added here where qkv was computed without it; writes y (B, T, C) and p (B, H, T, Tp),
 * the probabilities (Tp = T rounded up to 16, zero past the diagonal). */
int aigc_attn_fwd(const float *restrict qkv, const float *restrict bias, float *restrict y,
                  float *restrict p, ptrdiff_t B, ptrdiff_t T, ptrdiff_t H, ptrdiff_t d,
                  float scale, int threads) {
    const ptrdiff_t C = H * d, Tp = (T + TPAD - 1) / TPAD * TPAD;
    int failed = 0;
    /* one (batch row, head) pair per iteration, over the threads (see BLOCK) */
#pragma omp parallel num_threads(threads) if (ATTN_THREADED(B, H, T, d, threads))
    {
    /* k transposed (d x Tp); with a bias also the head's q and v with it (T x d each) */
    float *kt = scratch((size_t)(d * Tp + (bias ? 2 * T * d : 0)), &failed);  /* <= 384 KiB */
#pragma omp for schedule(static)
    for (ptrdiff_t bh = 0; bh < B * H; bh++) {
        if (kt == NULL) continue;
        const ptrdiff_t b = bh / H, h = bh % H;
        const float *q = qkv + b * T * 3 * C + h * d, *k = q + C, *v = q + 2 * C;
        ptrdiff_t qs = 3 * C, vs = 3 * C;  /* row strides of q and v */
        float *P = p + (b * H + h) * T * Tp;
        if (bias) {
            float *qb = kt + d * Tp, *kb = qb + T * d;  /* kb: k with its bias, then v */
            add_bias_rows(q, 3 * C, bias + h * d, qb, T, d);
            add_bias_rows(k, 3 * C, bias + C + h * d, kb, T, d);
            transpose_pad(kb, d, kt, T, Tp, d);
            add_bias_rows(v, 3 * C, bias + 2 * C + h * d, kb, T, d);
            q = qb, v = kb, qs = vs = d;
        } else {
            transpose_pad(k, 3 * C, kt, T, Tp, d);
        }
        mm_rows(q, qs, 1, kt, Tp, P, Tp, T, d, Tp, 0, 1);  /* raw scores */
        for (ptrdiff_t i = 0; i < T; i++) {
            float *s = P + i * Tp;
            const ptrdiff_t n = i / VL * VL + VL;  /* chunks holding keys 0 .. i */
            vf mv = (vf){0} + s[0];  /* key 0 is always kept */
            for (ptrdiff_t j = 0; j < n; j += VL) {
                const vf x = *(const vfu *)(s + j);
                const vfi take = ((LANE + (int32_t)j) <= (int32_t)i) & (x > mv);
                mv = (vf)(((vfi)x & take) | ((vfi)mv & ~take));
            }
            const float m = hmax_v(mv);
            vf sum = {0};
            for (ptrdiff_t j = 0; j < n; j += VL) {
                vfi keep = (LANE + (int32_t)j) <= (int32_t)i;
                vf e = exp_neg_v((m - *(vfu *)(s + j)) * scale);
                e = (vf)((vfi)e & keep);
                *(vfu *)(s + j) = e;
                sum += e;
            }
            const float inv = 1.0f / hsum_v(sum);
            for (ptrdiff_t j = 0; j < n; j += VL) *(vfu *)(s + j) *= inv;
            for (ptrdiff_t j = n; j < Tp; j++) s[j] = 0.0f;
        }
        mm_rows(P, Tp, 1, v, vs, y + b * T * C + h * d, C, T, T, d, 1, 0);
    }
    free(kt);
    }
    return failed ? -1 : 0;  /* -1: out of memory, outputs incomplete */
}

/* Backward: gy (B, T, C) contiguous, qkv, bias (or NULL) and p as in the forward; writes
 * gqkv (B, T, 3C) and, where gbias is not NULL, gqkv summed over the B T rows (the bias's
 * gradient; each batch row's sum, then the rows' in order, the same for any thread count). */
int aigc_attn_bwd(const float *restrict gy, const float *restrict qkv, const float *restrict bias,
                  const float *restrict p, float *restrict gqkv, float *restrict gbias,
                  ptrdiff_t B, ptrdiff_t T, ptrdiff_t H, ptrdiff_t d, float scale, int threads) {
    const ptrdiff_t C = H * d, Tp = (T + TPAD - 1) / TPAD * TPAD;
    int failed = 0;
    float *rowsums = gbias ? malloc(sizeof(float) * (size_t)(B * 3 * C)) : NULL;  /* B x 3C */
    if (gbias && !rowsums) return -1;
#pragma omp parallel num_threads(threads) if (ATTN_THREADED(B, H, T, d, threads))
    {
    /* v transposed (d x Tp), dS (T x Tp); with a bias also the head's q and k with it
     * (<= 640 KiB) */
    float *vt = scratch((size_t)(d * Tp + T * Tp + (bias ? 2 * T * d : 0)), &failed);
#pragma omp for schedule(static)
    for (ptrdiff_t bh = 0; bh < B * H; bh++) {
        if (vt == NULL) continue;
        const ptrdiff_t b = bh / H, h = bh % H;
        float *ds = vt + d * Tp;  /* both in this thread's scratch: d x Tp, then T x Tp */
        const float *q = qkv + b * T * 3 * C + h * d, *k = q + C, *v = q + 2 * C;
        ptrdiff_t qks = 3 * C;  /* row stride of q and k */
        const float *dy = gy + b * T * C + h * d;
        const float *P = p + (b * H + h) * T * Tp;
        float *gq = gqkv + b * T * 3 * C + h * d, *gk = gq + C, *gv = gq + 2 * C;
        if (bias) {
            float *qb = ds + T * Tp, *kb = qb + T * d;  /* kb: v with its bias, then k */
            add_bias_rows(v, 3 * C, bias + 2 * C + h * d, kb, T, d);
            transpose_pad(kb, d, vt, T, Tp, d);
            add_bias_rows(q, 3 * C, bias + h * d, qb, T, d);
            add_bias_rows(k, 3 * C, bias + C + h * d, kb, T, d);
            q = qb, k = kb, qks = d;
        } else {
            transpose_pad(v, 3 * C, vt, T, Tp, d);
        }
        mm_rows(dy, C, 1, vt, Tp, ds, Tp, T, d, Tp, 0, 1);  /* dP = dY V^T */
        for (ptrdiff_t i = 0; i < T; i++) {  /* dS = P (dP - rowsum(P dP)) scale */
            const float *pr = P + i * Tp;
            float *r = ds + i * Tp;
            const ptrdiff_t n = i / VL * VL + VL;
            vf acc = {0};
            for (ptrdiff_t j = 0; j < n; j += VL) {
                vfi keep = (LANE + (int32_t)j) <= (int32_t)i;
                acc += (vf)((vfi)(*(const vfu *)(pr + j) * *(vfu *)(r + j)) & keep);
            }
            const float D = hsum_v(acc);
            for (ptrdiff_t j = 0; j < n; j += VL) {
                vfi keep = (LANE + (int32_t)j) <= (int32_t)i;
                vf val = *(const vfu *)(pr + j) * (*(vfu *)(r + j) - D) * scale;
                *(vfu *)(r + j) = (vf)((vfi)val & keep);
            }
            for (ptrdiff_t j = n; j < Tp; j++) r[j] = 0.0f;
        }
        mm_rows(ds, Tp, 1, k, qks, gq, 3 * C, T, T, d, 1, 0);   /* dQ = dS K */
        mm_rows(ds, 1, Tp, q, qks, gk, 3 * C, T, T, d, 2, 0);   /* dK = dS^T Q */
        mm_rows(P, 1, Tp, dy, C, gv, 3 * C, T, T, d, 2, 0);     /* dV = P^T dY */
        if (rowsums)  /* this head's columns of dQ, dK, dV summed over the batch row's T rows */
            for (int part = 0; part < 3; part++)
                for (ptrdiff_t c = 0; c < d; c += VL) {
                    const float *g = gq + part * C + c;
                    vf acc = {0};
                    for (ptrdiff_t t = 0; t < T; t++) acc += *(const vfu *)(g + t * 3 * C);
                    *(vfu *)(rowsums + b * 3 * C + part * C + h * d + c) = acc;
                }
    }
    free(vt);
    }
    if (rowsums) {
        for (ptrdiff_t j = 0; j < 3 * C; j++) gbias[j] = 0.0f;
        for (ptrdiff_t b = 0; b < B; b++)
#pragma omp simd
            for (ptrdiff_t j = 0; j < 3 * C; j++) gbias[j] += rowsums[b * 3 * C + j];
        free(rowsums);
    }
    return failed ? -1 : 0;
}

/* One decoding step of GPT's attention with a key/value cache (aigc.models.gpt, generation):
 * for each batch row b and head h, the new token's key and value, read from the fused
 * projection qkv (B, 3C) with its bias, are written into k_cache, v_cache (B, H, cap, d) at
 * position pos; then its query attends to positions 0 .. pos:
 *
 *   y (B, C) = softmax(scale q K^T) V                      per batch row and head
 *
 * d a multiple of 16, pos < cap, pos < DECODE_MAX_S. One call for what ATen runs as a dozen
 * operations at this size (the head split, two cache writes, the slices, SDPA, the merge),
 * each of which costs more to dispatch than its arithmetic. */
#define DECODE_MAX_S 4096
void aigc_gpt_decode_attn(const float *restrict qkv, float *restrict k_cache,
                          float *restrict v_cache, float *restrict y, ptrdiff_t B, ptrdiff_t H,
                          ptrdiff_t d, ptrdiff_t cap, ptrdiff_t pos, float scale) {
    const ptrdiff_t C = H * d, S = pos + 1, Sp = (S + VL - 1) / VL * VL;
    float s[DECODE_MAX_S + VL] __attribute__((aligned(64)));
    for (ptrdiff_t b = 0; b < B; b++)
        for (ptrdiff_t h = 0; h < H; h++) {
            const float *q = qkv + b * 3 * C + h * d;
            float *K = k_cache + (b * H + h) * cap * d, *V = v_cache + (b * H + h) * cap * d;
            memcpy(K + pos * d, q + C, sizeof(float) * (size_t)d);
            memcpy(V + pos * d, q + 2 * C, sizeof(float) * (size_t)d);
            float m = -INFINITY;
            for (ptrdiff_t j = 0; j < S; j++) {  /* raw scores q . k_j and their maximum */
                vf acc = {0};
                for (ptrdiff_t c = 0; c < d; c += VL)
                    acc += *(const vfu *)(q + c) * *(const vfu *)(K + j * d + c);
                s[j] = hsum_v(acc);
                m = s[j] > m || s[j] != s[j] ? s[j] : m;  /* a NaN score makes the row NaN */
            }
            for (ptrdiff_t j = S; j < Sp; j++) s[j] = m;  /* the last vector's unused lanes */
            vf sum = {0};
            for (ptrdiff_t j = 0; j < Sp; j += VL) {  /* e^(scale (s - m)), none past S */
                const vfi keep = (LANE + (int32_t)j) < (int32_t)S;
                vf e = exp_neg_v((m - *(vf *)(s + j)) * scale);
                e = (vf)((vfi)e & keep);
                *(vf *)(s + j) = e;
                sum += e;
            }
            const float inv = 1.0f / hsum_v(sum);
            for (ptrdiff_t c = 0; c < d; c += VL) {  /* y = p V, then the normalisation */
                vf acc = {0};
                for (ptrdiff_t j = 0; j < S; j++) acc += s[j] * *(const vfu *)(V + j * d + c);
                *(vfu *)(y + b * C + h * d + c) = acc * inv;
            }
        }
}

/* A GPT block's MLP, y = gelu(x W1^T + b1) W2^T + b2, forward, and the backward of its GELU with
 * the product before it, as register-blocked matrix products with the elementwise work done on
 * each output tile while it is in registers (the "epilogue"):
 *
 *   forward   u = x W1^T + b1,  h = gelu(u),  y = h W2^T + b2     x (M x K), W1 (N x K),
 *                                                                 W2 (K2 x N): nn.Linear's
 *   backward  du = (dy W2) * gelu'(u),  db1 = du summed over rows  dy (M x K2)
 *
 * with N and K2 multiples of 32. Apart from them, ATen writes the bias into each product's
 * output before the GEMM, the GELU reads u back, the second product reads h back, the backward
 * writes dy W2 and reads it back, and the bias gradient reads du again: whole extra passes over
 * M x N values that, in a training step, come from and go to memory rather than cache. Here
 * each GMR-row tile of the forward computes its rows of u and h, then its rows of y while those
 * rows of h are still in L1. The products: the right-hand matrix packed once per call into
 * k x GNR column panels; GMR rows x GNR columns of output (2 GMR vector accumulators) per
 * register tile, each left-hand element broadcast against the panel's two vectors per k, so every output
 * value is one dot product summed in k order (the same order for any thread count). Row tiles
 * go to threads; the bias gradient is summed per tile, then over the tiles in order. */
/* The register tile: GMR rows x GNR = 2 VL columns, GMR x 2 accumulators plus the panel's two
 * vectors and a broadcast: 12 rows where there are 32 vector registers (AVX-512, NEON), 6 where
 * there are 16 (AVX2, SSE), so that no accumulator is spilled. */
#define GMR (VREGS == 32 ? 12 : 6)
#define GNR (2 * VL)

/* c0, c1 (mr rows x GNR) = a (mr rows, row stride lda, k = 0 .. K - 1) x the panel bp (K x GNR) */
static inline __attribute__((always_inline)) void
tile_products(const float *restrict a, ptrdiff_t lda, const float *restrict bp, ptrdiff_t K,
              int mr, vf *c0, vf *c1) {
    for (int r = 0; r < GMR; r++) { c0[r] = (vf){0}; c1[r] = (vf){0}; }
    for (ptrdiff_t k = 0; k < K; k++) {
        const vf b0 = *(const vf *)(bp + k * GNR), b1 = *(const vf *)(bp + k * GNR + VL);
#pragma GCC unroll 12
        for (int r = 0; r < GMR; r++) {
            if (r < mr) {
                const float av = a[r * lda + k];
                c0[r] += av * b0;
                c1[r] += av * b1;
            }
        }
    }
}

typedef struct {
    const float *x, *bp1, *b1, *bp2, *b2;  /* bp2 NULL: no second product */
    float *u, *h, *y;
    ptrdiff_t M, N, K, K2;
} mlp_fwd_args;

static inline __attribute__((always_inline)) void mlp_fwd_tile(const mlp_fwd_args *g, ptrdiff_t i0,
                                                               int mr) {
    const ptrdiff_t N = g->N, K = g->K, K2 = g->K2;
    vf c0[GMR], c1[GMR];
    for (ptrdiff_t j0 = 0; j0 < N; j0 += GNR) {
        tile_products(g->x + i0 * K, K, g->bp1 + j0 * K, K, mr, c0, c1);
        const vf bb0 = *(const vfu *)(g->b1 + j0), bb1 = *(const vfu *)(g->b1 + j0 + VL);
        for (int r = 0; r < mr; r++) {
            const ptrdiff_t o = (i0 + r) * N + j0;
            const vf v0 = c0[r] + bb0, v1 = c1[r] + bb1;
            *(vfu *)(g->u + o) = v0;
            *(vfu *)(g->u + o + VL) = v1;
            *(vfu *)(g->h + o) = gelu_fwd_v(v0, v0);
            *(vfu *)(g->h + o + VL) = gelu_fwd_v(v1, v1);
        }
    }
    if (!g->bp2) return;
    for (ptrdiff_t j0 = 0; j0 < K2; j0 += GNR) {  /* y's rows from h's, just written */
        tile_products(g->h + i0 * N, N, g->bp2 + j0 * N, N, mr, c0, c1);
        const vf bb0 = g->b2 ? *(const vfu *)(g->b2 + j0) : (vf){0};
        const vf bb1 = g->b2 ? *(const vfu *)(g->b2 + j0 + VL) : (vf){0};
        for (int r = 0; r < mr; r++) {
            const ptrdiff_t o = (i0 + r) * K2 + j0;
            *(vfu *)(g->y + o) = c0[r] + bb0;
            *(vfu *)(g->y + o + VL) = c1[r] + bb1;
        }
    }
}

typedef struct {
    const float *gy, *bp, *u;
    float *du, *colsum;  /* colsum (tiles x N): du summed over each row tile */
    ptrdiff_t M, N, K;
} mlp_bwd_args;

static inline __attribute__((always_inline)) void mlp_bwd_tile(const mlp_bwd_args *g, ptrdiff_t i0,
                                                               int mr) {
    const ptrdiff_t N = g->N, K = g->K;
    vf c0[GMR], c1[GMR];
    for (ptrdiff_t j0 = 0; j0 < N; j0 += GNR) {
        /* the epilogue's u, on its way while the products run (to L1: measured faster than
         * leaving it to the hardware, or prefetching the outputs too) */
        for (int r = 0; r < mr; r++) {
            __builtin_prefetch(g->u + (i0 + r) * N + j0, 0, 3);
            __builtin_prefetch(g->u + (i0 + r) * N + j0 + VL, 0, 3);
        }
        tile_products(g->gy + i0 * K, K, g->bp + j0 * K, K, mr, c0, c1);
        vf s0 = {0}, s1 = {0};
        for (int r = 0; r < mr; r++) {
            const ptrdiff_t o = (i0 + r) * N + j0;
            const vf d0 = gelu_bwd_v(*(const vfu *)(g->u + o), c0[r]);
            const vf d1 = gelu_bwd_v(*(const vfu *)(g->u + o + VL), c1[r]);
            *(vfu *)(g->du + o) = d0;
            *(vfu *)(g->du + o + VL) = d1;
            s0 += d0;
            s1 += d1;
        }
        float *cs = g->colsum + i0 / GMR * N + j0;
        *(vfu *)cs = s0;
        *(vfu *)(cs + VL) = s1;
    }
}

/* tile(g, i0, rows) over the GMR-row tiles of M rows, across threads where there are 8 or more */
#define OVER_ROW_TILES(tile, g, M, threads) do {                                               \
        const ptrdiff_t tiles_ = ((M) + GMR - 1) / GMR;                                        \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if (tiles_ >= 8 && threads > 1)") \
        for (ptrdiff_t t_ = 0; t_ < tiles_; t_++) {                                            \
            const ptrdiff_t i0_ = t_ * GMR;                                                    \
            if ((M) - i0_ >= GMR) tile(g, i0_, GMR);  /* the full tile, unrolled */            \
            else tile(g, i0_, (int)((M) - i0_));                                               \
        }                                                                                      \
    } while (0)

/* bp: the K x N right-hand matrix as N / GNR panels of K x GNR; element (k, n) of it is
 * b[k * bks + n * bns] (W^T of a weight W (N x K): bks 1, bns K; W2 (K x N): bks N, bns 1) */
static float *pack_panels(const float *restrict b, ptrdiff_t bks, ptrdiff_t bns, ptrdiff_t K,
                          ptrdiff_t N, int threads) {
    float *bp = aligned_alloc(64, (size_t)(K * N * (ptrdiff_t)sizeof(float) + 63) / 64 * 64);
    if (!bp) return NULL;
#pragma omp parallel for schedule(static) num_threads(threads) if (N >= 4 * GNR && threads > 1)
    for (ptrdiff_t j0 = 0; j0 < N; j0 += GNR) {
        float *restrict panel = bp + j0 * K;
        if (bks == 1 && K % VL == 0)  /* W^T: VL x VL blocks of W transposed in registers */
            for (ptrdiff_t jj = 0; jj < GNR; jj += VL)
                for (ptrdiff_t k0 = 0; k0 < K; k0 += VL) {
                    vf r[VL];
                    for (int i = 0; i < VL; i++) r[i] = *(const vfu *)(b + (j0 + jj + i) * bns + k0);
                    transpose_v(r);
                    for (int i = 0; i < VL; i++) *(vfu *)(panel + (k0 + i) * GNR + jj) = r[i];
                }
        else if (bks == 1)
            for (ptrdiff_t j = 0; j < GNR; j++)
                for (ptrdiff_t k = 0; k < K; k++) panel[k * GNR + j] = b[(j0 + j) * bns + k];
        else
            for (ptrdiff_t k = 0; k < K; k++)
                for (ptrdiff_t j = 0; j < GNR; j++) panel[k * GNR + j] = b[k * bks + (j0 + j) * bns];
    }
    return bp;
}

/* The forward: u, h (M x N) and, where w2 is not NULL, y (M x K2) with b2 (NULL: no bias);
 * 0, or -1: out of memory. */
int aigc_mlp_fwd(const float *restrict x, const float *restrict w1, const float *restrict b1,
                 const float *restrict w2, const float *restrict b2, float *restrict u,
                 float *restrict h, float *restrict y, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                 ptrdiff_t K2, int threads) {
    float *bp1 = pack_panels(w1, 1, K, K, N, threads);
    float *bp2 = w2 ? pack_panels(w2, 1, N, N, K2, threads) : NULL;
    if (!bp1 || (w2 && !bp2)) {
        free(bp1);
        free(bp2);
        return -1;
    }
    const mlp_fwd_args g = {x, bp1, b1, bp2, b2, u, h, y, M, N, K, K2};
    OVER_ROW_TILES(mlp_fwd_tile, &g, M, threads);
    free(bp1);
    free(bp2);
    return 0;
}

/* The backward: du (M x N) and db1 (N); 0, or -1: out of memory. */
int aigc_mlp_bwd(const float *restrict gy, const float *restrict w2, const float *restrict u,
                 float *restrict du, float *restrict db, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K2,
                 int threads) {
    const ptrdiff_t tiles = (M + GMR - 1) / GMR;
    float *bp = pack_panels(w2, N, 1, K2, N, threads);
    float *colsum = malloc((size_t)(tiles * N) * sizeof(float));
    if (!bp || !colsum) {
        free(bp);
        free(colsum);
        return -1;
    }
    const mlp_bwd_args g = {gy, bp, u, du, colsum, M, N, K2};
    OVER_ROW_TILES(mlp_bwd_tile, &g, M, threads);
    for (ptrdiff_t n = 0; n < N; n++) db[n] = 0.0f;
    for (ptrdiff_t t = 0; t < tiles; t++) {
        const float *cs = colsum + t * N;
#pragma omp simd
        for (ptrdiff_t n = 0; n < N; n++) db[n] += cs[n];
    }
    free(bp);
    free(colsum);
    return 0;
}


/* ------------------------------------------------------------- 3x3 convolution (Winograd)
 * A 3x3 convolution of stride 1 and padding 1 over channels-last float32 images, forward and
 * the kernels' gradient, by Winograd's minimal filtering F(m x m, 3 x 3), m = 2 or 4 (Lavin and
 * Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each m x m block of outputs
 * is
 *
 *     Y = A^T [ (G g G^T) . (B^T d B) ] A        summed over input channels,
 *
 * d the (m + 2) x (m + 2) input tile around it, g the 3x3 kernel, "." elementwise (the
 * matrices are written out as the 1-d transforms below: interpolation points 0, 1, -1 for
 * m = 2 and 0, 1, -1, 2, -2 for m = 4, plus the point at infinity). For each of the P = (m + 2)^2 tile positions p the sum over input
 * channels is a matrix product M_p (tiles x Co) = V_p (tiles x Ci) U_p (Ci x Co), so an m x m
 * block of outputs takes P Ci Co multiply-adds instead of 9 m^2 Ci Co: 2.25x fewer for m = 2,
 * 4x fewer for m = 4 (whose transforms are larger and whose rounding is about 10x coarser:
 * within about 1e-5 of float64 relative to the largest output at the UNets' sizes, where m = 2
 * and oneDNN's direct convolution are within about 1e-6). The input's gradient is this same
 * forward on the output's gradient with the kernels flipped and their channels swapped; the
 * kernels' gradient is the same sum over tiles the other way round (aigc_conv3x3_wgrad). Tiles
 * are taken a block at a time (wino_block): a block's V and M stay in the L2 cache between the
 * transforms and the products. Each tile's outputs are computed alone, in a fixed order, so
 * they do not depend on the batch, the thread count or where the tile falls in a block. */

/* tiles per block, a multiple of the products' 6 rows */
static inline ptrdiff_t wino_block(int m) { return m == 2 ? 48 : 24; }

/* The 1-d transforms on n = m + 2 (or m, or 3) vectors at in[0], in[is], ...: B^T (n -> n),
 * A^T (n -> m), A (m -> n), G (3 -> n), G^T (n -> 3). */
static inline __attribute__((always_inline)) void
wino_bt(int m, const vf *in, ptrdiff_t is, vf *out, ptrdiff_t os) {
    const vf d0 = in[0], d1 = in[is], d2 = in[2 * is], d3 = in[3 * is];
    if (m == 2) {
        out[0] = d0 - d2; out[os] = d1 + d2; out[2 * os] = d2 - d1; out[3 * os] = d1 - d3;
        return;
    }
    const vf d4 = in[4 * is], d5 = in[5 * is];
    out[0] = 4.0f * d0 - 5.0f * d2 + d4;
    out[os] = d3 + d4 - 4.0f * (d1 + d2);
    out[2 * os] = 4.0f * (d1 - d2) + d4 - d3;
    out[3 * os] = 2.0f * (d3 - d1) + d4 - d2;
    out[4 * os] = 2.0f * (d1 - d3) + d4 - d2;
    out[5 * os] = 4.0f * d1 - 5.0f * d3 + d5;
}

static inline __attribute__((always_inline)) void
wino_at(int m, const vf *in, ptrdiff_t is, vf *out, ptrdiff_t os) {
    const vf m0 = in[0], m1 = in[is], m2 = in[2 * is], m3 = in[3 * is];
    if (m == 2) {
        out[0] = m0 + m1 + m2; out[os] = m1 - m2 - m3;
        return;
    }
    const vf m4 = in[4 * is], m5 = in[5 * is];
    const vf p12 = m1 + m2, d12 = m1 - m2, p34 = m3 + m4, d34 = m3 - m4;
    out[0] = m0 + p12 + p34;
    out[os] = d12 + 2.0f * d34;
    out[2 * os] = p12 + 4.0f * p34;
    out[3 * os] = d12 + 8.0f * d34 + m5;
}

static inline __attribute__((always_inline)) void
wino_a(int m, const vf *in, ptrdiff_t is, vf *out, ptrdiff_t os) {
    const vf g0 = in[0], g1 = in[is];
    if (m == 2) {
        out[0] = g0; out[os] = g0 + g1; out[2 * os] = g0 - g1; out[3 * os] = -g1;
        return;
    }
    const vf g2 = in[2 * is], g3 = in[3 * is];
    const vf e = g0 + g2, o = g1 + g3, e4 = g0 + 4.0f * g2, o8 = 2.0f * g1 + 8.0f * g3;
    out[0] = g0; out[os] = e + o; out[2 * os] = e - o;
    out[3 * os] = e4 + o8; out[4 * os] = e4 - o8; out[5 * os] = g3;
}

static inline __attribute__((always_inline)) void
wino_g(int m, const vf *in, ptrdiff_t is, vf *out, ptrdiff_t os) {
    const vf g0 = in[0], g1 = in[is], g2 = in[2 * is];
    if (m == 2) {
        out[0] = g0; out[os] = 0.5f * (g0 + g1 + g2); out[2 * os] = 0.5f * (g0 - g1 + g2);
        out[3 * os] = g2;
        return;
    }
    out[0] = 0.25f * g0;
    out[os] = (-1.0f / 6) * (g0 + g1 + g2);
    out[2 * os] = (-1.0f / 6) * (g0 - g1 + g2);
    out[3 * os] = (1.0f / 24) * g0 + (1.0f / 12) * g1 + (1.0f / 6) * g2;
    out[4 * os] = (1.0f / 24) * g0 - (1.0f / 12) * g1 + (1.0f / 6) * g2;
    out[5 * os] = g2;
}

static inline __attribute__((always_inline)) void
wino_gt(int m, const vf *in, ptrdiff_t is, vf *out, ptrdiff_t os) {
    const vf d0 = in[0], d1 = in[is], d2 = in[2 * is], d3 = in[3 * is];
    if (m == 2) {
        out[0] = d0 + 0.5f * (d1 + d2); out[os] = 0.5f * (d1 - d2);
        out[2 * os] = 0.5f * (d1 + d2) + d3;
        return;
    }
    const vf d4 = in[4 * is], d5 = in[5 * is];
    out[0] = 0.25f * d0 - (1.0f / 6) * (d1 + d2) + (1.0f / 24) * (d3 + d4);
    out[os] = (1.0f / 6) * (d2 - d1) + (1.0f / 12) * (d3 - d4);
    out[2 * os] = (1.0f / 6) * (d3 + d4 - d1 - d2) + d5;
}

/* V_p (p = n i + j) of the n x n input tile of tile (b, ty, tx) for channels c0 .. c0 + VL - 1,
 * zero outside the image; V_p written at vb + p * pstride. */
static inline __attribute__((always_inline)) void
wino_in_tile(int m, const float *restrict x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t b,
             ptrdiff_t ty, ptrdiff_t tx, ptrdiff_t c0, float *restrict vb, ptrdiff_t pstride) {
    const int n = m + 2;
    vf d[36], t[36], v[36];
    const ptrdiff_t y0 = m * ty - 1, x0 = m * tx - 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            const ptrdiff_t yy = y0 + i, xx = x0 + j;
            d[n * i + j] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                ? *(const vfu *)(x + ((b * H + yy) * W + xx) * C + c0) : (vf){0};
        }
    for (int j = 0; j < n; j++) wino_bt(m, d + j, n, t + j, n);      /* B^T d, column by column */
    for (int i = 0; i < n; i++) wino_bt(m, t + n * i, 1, v + n * i, 1);  /* (B^T d) B */
    for (int p = 0; p < n * n; p++) *(vfu *)(vb + p * pstride) = v[p];
}

/* c (R x VL NV, row stride ldc) = (ACC: +=) a b, a's element (r, k) at a[r * ars + k * aks]
 * (the forward: a tile's channels along k; the kernel gradient: R consecutive channels of one
 * tile down r, the tiles along k), b's row k at b + k * ldb. R x NV accumulators in registers,
 * one broadcast of a per row and k. */
#define WINO_MM(name, R, NV, ACC)                                                            \
    static inline __attribute__((always_inline)) void                                       \
    name(const float *restrict a, ptrdiff_t ars, ptrdiff_t aks, const float *restrict b,     \
         ptrdiff_t ldb, float *restrict c, ptrdiff_t ldc, ptrdiff_t K) {                     \
        vf acc[R][NV];                                                                      \
        for (int r = 0; r < R; r++) for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};      \
        for (ptrdiff_t k = 0; k < K; k++) {                                                  \
            vf bv[NV];                                                                      \
            for (int v = 0; v < NV; v++) bv[v] = *(const vfu *)(b + k * ldb + v * VL);      \
            for (int r = 0; r < R; r++) {                                                    \
                const float s = a[r * ars + k * aks];                                        \
                for (int v = 0; v < NV; v++) acc[r][v] += s * bv[v];                         \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < R; r++)                                                          \
            for (int v = 0; v < NV; v++) {                                                   \
                vfu *out = (vfu *)(c + r * ldc + v * VL);                                  \
                *out = ACC ? *out + acc[r][v] : acc[r][v];                                   \
            }                                                                                \
    }
/* the widest products, in vectors of columns: 6 x 4 (24 accumulators) where there are 32 vector
 * registers, 6 x 2 (12) where there are 16 */
#define WINO_NV (VREGS == 32 ? 4 : 2)
WINO_MM(wino_mm_6x4, 6, 4, 0)
WINO_MM(wino_mm_6x2, 6, 2, 0)
WINO_MM(wino_mm_6x1, 6, 1, 0)
WINO_MM(wino_mmt_6x4, 6, 4, 1)
WINO_MM(wino_mmt_4x4, 4, 4, 1)
WINO_MM(wino_mmt_2x4, 2, 4, 1)
WINO_MM(wino_mmt_6x2, 6, 2, 1)
WINO_MM(wino_mmt_4x2, 4, 2, 1)
WINO_MM(wino_mmt_2x2, 2, 2, 1)
WINO_MM(wino_mmt_6x1, 6, 1, 1)
WINO_MM(wino_mmt_4x1, 4, 1, 1)
WINO_MM(wino_mmt_2x1, 2, 1, 1)

/* du (Ci x VL nv, row stride Co) += a^T g for Ci rows (a multiple of 16: blocks of 6 rows,
 * then 4 or 2 left) and nv = 4, 2 or 1 vectors of columns. */
static inline __attribute__((always_inline)) void
wino_mmt_cols(int nv, const float *restrict a, ptrdiff_t Ci, const float *restrict g,
              ptrdiff_t Co, float *restrict du, ptrdiff_t K) {
    ptrdiff_t r = 0;
#define WINO_ROWS(R)                                                                          \
    (nv == 4 ? wino_mmt_##R##x4(a + r, 1, Ci, g, Co, du + r * Co, Co, K)                     \
     : nv == 2 ? wino_mmt_##R##x2(a + r, 1, Ci, g, Co, du + r * Co, Co, K)                   \
     : wino_mmt_##R##x1(a + r, 1, Ci, g, Co, du + r * Co, Co, K))
    for (; r + 6 <= Ci; r += 6) WINO_ROWS(6);
    if (Ci - r == 4) WINO_ROWS(4);
    else if (Ci - r == 2) WINO_ROWS(2);
#undef WINO_ROWS
}

/* Threads only where there is work enough to pay for waking them. */
#define WINO_THREADED(nblocks, wt, Ci, Co, threads) \
    ((threads) > 1 && (nblocks) >= 2 && (nblocks) * (wt) * (Ci) * (Co) >= (1 << 18))

/* U = G g G^T for every kernel g of w (Co, Ci, 3, 3), contiguous: U (P, Ci, Co); flipped: U
 * (P, Co, Ci) of the kernels turned by 180 degrees with in and out channels swapped, which
 * the input's gradient takes. P = (m + 2)^2. */
void aigc_conv3x3_weights(const float *restrict w, float *restrict U, ptrdiff_t Co, ptrdiff_t Ci,
                          int flipped, int m) {
    const int n = m + 2;
    const ptrdiff_t outer = flipped ? Co : Ci, inner = flipped ? Ci : Co, ps = Ci * Co;
    for (ptrdiff_t o = 0; o < outer; o++)
        for (ptrdiff_t i0 = 0; i0 < inner; i0 += VL) {
            /* VL kernels at a time, one per lane, so that each of U's planes gets whole cache
             * lines (a value per plane at a time, planes 4 Ci Co bytes apart, thrash one L1
             * set) */
            const ptrdiff_t cnt = inner - i0 < VL ? inner - i0 : VL;
            float kb[9][VL] = {{0}};
            for (ptrdiff_t i = 0; i < cnt; i++) {
                const ptrdiff_t co = flipped ? o : i0 + i, ci = flipped ? i0 + i : o;
                const float *g = w + (co * Ci + ci) * 9;
                for (int j = 0; j < 9; j++) kb[j][i] = flipped ? g[8 - j] : g[j];
            }
            vf k[9], t[18], u[36];
            for (int j = 0; j < 9; j++) k[j] = *(const vfu *)kb[j];
            for (int l = 0; l < 3; l++) wino_g(m, k + l, 3, t + l, 3);          /* G g: n x 3 */
            for (int a = 0; a < n; a++) wino_g(m, t + 3 * a, 1, u + n * a, 1);  /* (G g) G^T */
            for (int p = 0; p < n * n; p++)
                memcpy(U + p * ps + o * inner + i0, &u[p], sizeof(float) * (size_t)cnt);
        }
}

static inline __attribute__((always_inline)) int
conv3x3_fwd(int m, const float *restrict x, const float *restrict U, const float *restrict bias,
            float *restrict y, ptrdiff_t B, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci, ptrdiff_t Co,
            int threads) {
    const int n = m + 2, P = n * n;
    const ptrdiff_t wt = wino_block(m);
    const ptrdiff_t th = (H + m - 1) / m, tw = (W + m - 1) / m, ntiles = B * th * tw;
    const ptrdiff_t nblocks = (ntiles + wt - 1) / wt;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (WINO_THREADED(nblocks, wt, Ci, Co, threads))
    {
    float *vb = scratch((size_t)(P * wt * Ci), &failed);
    float *mb = scratch((size_t)(P * wt * Co), &failed);
#pragma omp for schedule(static)
    for (ptrdiff_t blk = 0; blk < nblocks; blk++) {
        if (vb == NULL || mb == NULL) continue;
        const ptrdiff_t n0 = blk * wt, nt = ntiles - n0 < wt ? ntiles - n0 : wt;
        const ptrdiff_t rows = (nt + 5) / 6 * 6;  /* the products' rows; past nt: zeros */
        for (ptrdiff_t t = 0; t < rows; t++) {
            if (t >= nt) {
                for (int p = 0; p < P; p++) memset(vb + (p * wt + t) * Ci, 0, sizeof(float) * Ci);
                continue;
            }
            const ptrdiff_t nn = n0 + t, b = nn / (th * tw), r = nn % (th * tw);
            for (ptrdiff_t c0 = 0; c0 < Ci; c0 += VL)
                wino_in_tile(m, x, H, W, Ci, b, r / tw, r % tw, c0, vb + t * Ci + c0, wt * Ci);
        }
        for (int p = 0; p < P; p++) {  /* M_p = V_p U_p */
            const float *a = vb + p * wt * Ci, *u = U + p * Ci * Co;
            float *mm = mb + p * wt * Co;
            ptrdiff_t j = 0;
            for (; WINO_NV == 4 && j + 4 * VL <= Co; j += 4 * VL)
                for (ptrdiff_t r = 0; r < rows; r += 6)
                    wino_mm_6x4(a + r * Ci, Ci, 1, u + j, Co, mm + r * Co + j, Co, Ci);
            for (; j + 2 * VL <= Co; j += 2 * VL)
                for (ptrdiff_t r = 0; r < rows; r += 6)
                    wino_mm_6x2(a + r * Ci, Ci, 1, u + j, Co, mm + r * Co + j, Co, Ci);
            for (; j < Co; j += VL)
                for (ptrdiff_t r = 0; r < rows; r += 6)
                    wino_mm_6x1(a + r * Ci, Ci, 1, u + j, Co, mm + r * Co + j, Co, Ci);
        }
        for (ptrdiff_t t = 0; t < nt; t++) {  /* Y = A^T M A + bias, into y */
            const ptrdiff_t nn = n0 + t, b = nn / (th * tw), r = nn % (th * tw);
            const ptrdiff_t ty = r / tw, tx = r % tw;
            for (ptrdiff_t c0 = 0; c0 < Co; c0 += VL) {
                vf mv[36], s[24], o[16];
                for (int p = 0; p < P; p++) mv[p] = *(const vf *)(mb + (p * wt + t) * Co + c0);
                for (int j = 0; j < n; j++) wino_at(m, mv + j, n, s + j, n);    /* A^T M: m x n */
                for (int i = 0; i < m; i++) wino_at(m, s + n * i, 1, o + m * i, 1);  /* (A^T M) A */
                const vf bv = bias ? *(const vfu *)(bias + c0) : (vf){0};
                for (int i = 0; i < m && m * ty + i < H; i++)
                    for (int j = 0; j < m && m * tx + j < W; j++)
                        *(vfu *)(y + ((b * H + m * ty + i) * W + m * tx + j) * Co + c0) =
                            o[m * i + j] + bv;
            }
        }
    }
    free(vb); free(mb);
    }
    return failed ? -1 : 0;
}

/* y (B, H, W, Co) = the 3x3 convolution (stride 1, padding 1) of x (B, H, W, Ci) by F(m x m,
 * 3 x 3) with the transformed kernels U (P, Ci, Co), plus bias (Co; NULL: none). Ci and Co
 * multiples of 16. Returns 0, or -1 when out of memory (y then incomplete). */
int aigc_conv3x3_fwd(const float *restrict x, const float *restrict U, const float *restrict bias,
                     float *restrict y, ptrdiff_t B, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci,
                     ptrdiff_t Co, int m, int threads) {
    return m == 4 ? conv3x3_fwd(4, x, U, bias, y, B, H, W, Ci, Co, threads)
                  : conv3x3_fwd(2, x, U, bias, y, B, H, W, Ci, Co, threads);
}

/* One tile of the kernels' gradient: the input tile's transform into vb (row t, row stride
 * ldv = wt Ci), the output gradient's (A gy A^T) into gb (row t, ldg = wt Co), and the sum of
 * the tile's output gradients (the bias's gradient) into sb (Co). */
static inline __attribute__((always_inline)) void
wino_wgrad_tile(int m, const float *restrict x, const float *restrict gy, ptrdiff_t H,
                ptrdiff_t W, ptrdiff_t Ci, ptrdiff_t Co, ptrdiff_t th, ptrdiff_t tw, ptrdiff_t nn,
                float *restrict vb, ptrdiff_t ldv, float *restrict gb, ptrdiff_t ldg,
                float *restrict sb) {
    const int n = m + 2, P = n * n;
    const ptrdiff_t b = nn / (th * tw), r = nn % (th * tw), ty = r / tw, tx = r % tw;
    for (ptrdiff_t c0 = 0; c0 < Ci; c0 += VL)
        wino_in_tile(m, x, H, W, Ci, b, ty, tx, c0, vb + c0, ldv);
    for (ptrdiff_t c0 = 0; c0 < Co; c0 += VL) {
        vf g[16], s[24], o[36], sum = {0};
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                const ptrdiff_t yy = m * ty + i, xx = m * tx + j;
                g[m * i + j] = yy < H && xx < W
                    ? *(const vfu *)(gy + ((b * H + yy) * W + xx) * Co + c0) : (vf){0};
                sum += g[m * i + j];
            }
        *(vfu *)(sb + c0) = sum;
        for (int j = 0; j < m; j++) wino_a(m, g + j, m, s + j, m);    /* A g: n x m */
        for (int i = 0; i < n; i++) wino_a(m, s + m * i, 1, o + n * i, 1);  /* (A g) A^T */
        for (int p = 0; p < P; p++) *(vfu *)(gb + p * ldg + c0) = o[p];
    }
}

/* dU_p += V_p^T G_p for the positions p in [plo, phi) over nt tiles, and db += the tiles'
 * sums in tile order where plo is 0. */
static inline __attribute__((always_inline)) void
wino_wgrad_block(const float *restrict vb, const float *restrict gb, const float *restrict sb,
                 ptrdiff_t wt, ptrdiff_t nt, ptrdiff_t Ci, ptrdiff_t Co, int plo, int phi,
                 float *restrict du, float *restrict dbp) {
    if (plo == 0)
        for (ptrdiff_t t = 0; t < nt; t++)
            for (ptrdiff_t c0 = 0; c0 < Co; c0 += VL)
                *(vfu *)(dbp + c0) += *(const vfu *)(sb + t * Co + c0);
    for (int p = plo; p < phi; p++) {
        const float *a = vb + p * wt * Ci, *g = gb + p * wt * Co;
        float *u = du + p * Ci * Co;
        for (ptrdiff_t j = 0; j < Co;) {
            const int nv = WINO_NV == 4 && Co - j >= 4 * VL ? 4 : Co - j >= 2 * VL ? 2 : 1;
            wino_mmt_cols(nv, a, Ci, g + j, Co, u + j, nt);
            j += nv * VL;
        }
    }
}

static inline __attribute__((always_inline)) int
conv3x3_wgrad(int m, const float *restrict x, const float *restrict gy, float *restrict dw,
              float *restrict db, ptrdiff_t B, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci,
              ptrdiff_t Co, int threads) {
    const int n = m + 2, P = n * n;
    const ptrdiff_t wt = wino_block(m);
    const ptrdiff_t th = (H + m - 1) / m, tw = (W + m - 1) / m, ntiles = B * th * tw;
    const ptrdiff_t nblocks = (ntiles + wt - 1) / wt, usz = P * Ci * Co + Co;  /* dU, then db */
    ptrdiff_t nparts = 1;  /* a power of two up to 16, about a part per 4 blocks: even work */
    while (nparts < 16 && nparts * 2 * 4 <= nblocks) nparts *= 2;  /* for 2, 4, 8, 16 threads */
    const int split = nparts == 1;
    float *parts = aligned_alloc(64, sizeof(float) * (size_t)(usz * nparts));
    /* one part: one set of block buffers that the threads fill together */
    float *svb = split ? aligned_alloc(64, sizeof(float) * (size_t)(P * wt * Ci)) : NULL;
    float *sgb = split ? aligned_alloc(64, sizeof(float) * (size_t)(P * wt * Co)) : NULL;
    float *ssb = split ? aligned_alloc(64, sizeof(float) * (size_t)(wt * Co)) : NULL;
    if (parts == NULL || (split && (svb == NULL || sgb == NULL || ssb == NULL))) {
        free(parts); free(svb); free(sgb); free(ssb);
        return -1;
    }
    int failed = 0;
    /* Many tiles: the threads take whole parts, each with its own block buffers. Few (one
     * part): for each block the threads transform its tiles together, then split the P
     * positions' products, so small images still use every thread. Either way each dU_p and
     * db is summed in the same order whatever the thread count. */
#pragma omp parallel num_threads(threads) if (WINO_THREADED(nblocks, wt, Ci, Co, threads))
    {
    int tid = 0, nth = 1;
#if defined(_OPENMP)
    tid = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    if (split) {
        const int plo = P * tid / nth, phi = P * (tid + 1) / nth;
        memset(parts + plo * Ci * Co, 0, sizeof(float) * (size_t)((phi - plo) * Ci * Co));
        if (plo == 0) memset(parts + P * Ci * Co, 0, sizeof(float) * (size_t)Co);
        for (ptrdiff_t blk = 0; blk < nblocks; blk++) {
            const ptrdiff_t n0 = blk * wt, nt = ntiles - n0 < wt ? ntiles - n0 : wt;
#pragma omp for schedule(static)
            for (ptrdiff_t t = 0; t < nt; t++)
                wino_wgrad_tile(m, x, gy, H, W, Ci, Co, th, tw, n0 + t, svb + t * Ci, wt * Ci,
                                sgb + t * Co, wt * Co, ssb + t * Co);
            /* (the loop's barrier: the block's buffers are full) */
            wino_wgrad_block(svb, sgb, ssb, wt, nt, Ci, Co, plo, phi, parts,
                             parts + P * Ci * Co);
#pragma omp barrier
        }
    } else {
        float *vb = scratch((size_t)(P * wt * Ci), &failed);
        float *gb = scratch((size_t)(P * wt * Co), &failed);
        float *sb = scratch((size_t)(wt * Co), &failed);
        for (ptrdiff_t part = tid; part < nparts; part += nth) {
            if (vb == NULL || gb == NULL || sb == NULL) continue;
            float *du = parts + part * usz, *dbp = du + P * Ci * Co;
            memset(du, 0, sizeof(float) * (size_t)usz);
            for (ptrdiff_t blk = nblocks * part / nparts; blk < nblocks * (part + 1) / nparts;
                 blk++) {
                const ptrdiff_t n0 = blk * wt, nt = ntiles - n0 < wt ? ntiles - n0 : wt;
                for (ptrdiff_t t = 0; t < nt; t++)
                    wino_wgrad_tile(m, x, gy, H, W, Ci, Co, th, tw, n0 + t, vb + t * Ci,
                                    wt * Ci, gb + t * Co, wt * Co, sb + t * Co);
                wino_wgrad_block(vb, gb, sb, wt, nt, Ci, Co, 0, P, du, dbp);
            }
        }
        free(vb); free(gb); free(sb);
    }
    }
    free(svb); free(sgb); free(ssb);
    if (!failed) {  /* the parts summed in order, then dw = G^T dU G, VL kernels at a time */
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && usz * nparts >= (1 << 18))
        for (ptrdiff_t ci = 0; ci < Ci; ci++)
            for (ptrdiff_t c0 = 0; c0 < Co; c0 += VL) {
                vf d[36], t[18] = {0}, k[9];
                for (int p = 0; p < P; p++) {
                    vf sum = {0};
                    for (ptrdiff_t q = 0; q < nparts; q++)
                        sum += *(const vfu *)(parts + q * usz + (p * Ci + ci) * Co + c0);
                    d[p] = sum;
                }
                for (int a = 0; a < n; a++) wino_gt(m, d + n * a, 1, t + 3 * a, 1);  /* dU G */
                for (int l = 0; l < 3; l++) wino_gt(m, t + l, 3, k + l, 3);  /* G^T (dU G) */
                float kb[9][VL];
                for (int j = 0; j < 9; j++) *(vfu *)kb[j] = k[j];
                for (ptrdiff_t i = 0; i < VL && c0 + i < Co; i++)
                    for (int j = 0; j < 9; j++) dw[((c0 + i) * Ci + ci) * 9 + j] = kb[j][i];
            }
        if (db != NULL)
            for (ptrdiff_t co = 0; co < Co; co++) {
                float sum = 0.0f;
                for (ptrdiff_t q = 0; q < nparts; q++) sum += parts[q * usz + P * Ci * Co + co];
                db[co] = sum;
            }
    }
    free(parts);
    return failed ? -1 : 0;
}

/* The kernels' gradient dw (Co, Ci, 3, 3) and, where db is not NULL, the bias's db (Co), from
 * x (B, H, W, Ci) and the output's gradient gy (B, H, W, Co), by F(m x m, 3 x 3): dU_p is the
 * sum over tiles of V_p^T (A gy A^T)_p (V_p as in the forward, gy m x m per tile), and
 * dw = G^T dU G. The tiles are summed in a fixed number of parts that depends on the shape
 * only, then the parts in order, so the result does not depend on the thread count. Returns
 * 0, or -1 when out of memory. */
int aigc_conv3x3_wgrad(const float *restrict x, const float *restrict gy, float *restrict dw,
                       float *restrict db, ptrdiff_t B, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci,
                       ptrdiff_t Co, int m, int threads) {
    return m == 4 ? conv3x3_wgrad(4, x, gy, dw, db, B, H, W, Ci, Co, threads)
                  : conv3x3_wgrad(2, x, gy, dw, db, B, H, W, Ci, Co, threads);
}

/* ------------------------------------------------ GroupNorm + SiLU (diffusion UNets)
 * y = silu(xhat a + s), xhat = (x - mean_g) rstd_g the group-normalised input, for a
 * channels-last float32 x (B, HW, C) with G groups of C / G channels; a and s (B, C) fold the
 * GroupNorm's affine weight and bias and a UNet block's scale and shift from its timestep
 * embedding (a = gamma (1 + scale), s = beta (1 + scale) + shift: aigc.models.native). One
 * pass for the mean, one for the variance (around the mean, not E[x^2] - mean^2), one for the
 * output; the backward recomputes silu's input and writes the input's gradient in two passes.
 * ATen runs the same as three to five operations, each reading and writing the whole
 * activation; here a sample's activation (at most a few hundred KB in the UNets) is read from
 * the L2 cache by the later passes. One sample per thread, so the thread count changes no
 * result. C a multiple of 16, at most GN_MAX_C. */
#define GN_MAX_C 1024

/* the channel sums of (x - centre)^p over the HW positions, p = 1 or 2: position by position
 * (the activation read in memory order), the C sums kept in out */
static void gn_channel_sums(const float *restrict x, ptrdiff_t HW, ptrdiff_t C,
                            const float *restrict centre, int squares, float *restrict out) {
    memset(out, 0, sizeof(float) * (size_t)C);
    for (ptrdiff_t i = 0; i < HW; i++)
        for (ptrdiff_t c0 = 0; c0 < C; c0 += VL) {
            const vf d = *(const vfu *)(x + i * C + c0) - (centre ? *(const vfu *)(centre + c0) : (vf){0});
            *(vfu *)(out + c0) += squares ? d * d : d;
        }
}

/* per-channel values of the group statistic: out[c] = sum over c's group of in / n */
static void gn_group_mean(const float *in, ptrdiff_t C, ptrdiff_t G, double n,
                          float *out) {  /* in and out may be one array */
    const ptrdiff_t cpg = C / G;
    for (ptrdiff_t g = 0; g < G; g++) {
        double sum = 0.0;
        for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++) sum += in[c];
        for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++) out[c] = (float)(sum / n);
    }
}

/* Forward: y (B, HW, C); mean and rstd (B, G) kept for the backward. */
void aigc_gn_silu_fwd(const float *restrict x, const float *restrict a, const float *restrict s,
                      float *restrict y, float *restrict mean, float *restrict rstd, ptrdiff_t B,
                      ptrdiff_t HW, ptrdiff_t C, ptrdiff_t G, float eps, int threads) {
    const ptrdiff_t cpg = C / G;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && B > 1 && B * HW * C >= (1 << 16))
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *xb = x + b * HW * C, *ab = a + b * C, *sb = s + b * C;
        float *yb = y + b * HW * C;
        float sums[GN_MAX_C], mu[GN_MAX_C], k[GN_MAX_C], m[GN_MAX_C];
        gn_channel_sums(xb, HW, C, NULL, 0, sums);
        gn_group_mean(sums, C, G, (double)HW * cpg, mu);
        gn_channel_sums(xb, HW, C, mu, 1, sums);
        gn_group_mean(sums, C, G, (double)HW * cpg, k);  /* the variance, per channel */
        for (ptrdiff_t g = 0; g < G; g++) {
            mean[b * G + g] = mu[g * cpg];
            rstd[b * G + g] = 1.0f / sqrtf(k[g * cpg] + eps);
        }
        for (ptrdiff_t c = 0; c < C; c++) {  /* silu's input z = x k + m */
            k[c] = rstd[b * G + c / cpg] * ab[c];
            m[c] = sb[c] - mu[c] * k[c];
        }
        for (ptrdiff_t i = 0; i < HW; i++)
            for (ptrdiff_t c0 = 0; c0 < C; c0 += VL) {
                const vf z = *(const vfu *)(xb + i * C + c0) * *(const vfu *)(k + c0)
                              + *(const vfu *)(m + c0);
                *(vfu *)(yb + i * C + c0) = z * sigmoid_v(z);
            }
    }
}

/* Backward: from gy (B, HW, C) and the forward's x, a, s, mean, rstd: gx (B, HW, C) and the
 * gradients of a and s, ga and gs (B, C). */
void aigc_gn_silu_bwd(const float *restrict gy, const float *restrict x, const float *restrict a,
                      const float *restrict s, const float *restrict mean,
                      const float *restrict rstd, float *restrict gx, float *restrict ga,
                      float *restrict gs, ptrdiff_t B, ptrdiff_t HW, ptrdiff_t C, ptrdiff_t G,
                      int threads) {
    const ptrdiff_t cpg = C / G;
    const double n = (double)HW * cpg;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && B > 1 && B * HW * C >= (1 << 16))
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *xb = x + b * HW * C, *gyb = gy + b * HW * C, *ab = a + b * C, *sb = s + b * C;
        float *gxb = gx + b * HW * C, *gab = ga + b * C, *gsb = gs + b * C;
        float k[GN_MAX_C], m[GN_MAX_C], mu[GN_MAX_C], rs[GN_MAX_C], t[GN_MAX_C], u[GN_MAX_C];
        for (ptrdiff_t c = 0; c < C; c++) {
            mu[c] = mean[b * G + c / cpg];
            rs[c] = rstd[b * G + c / cpg];
            k[c] = rs[c] * ab[c];
            m[c] = sb[c] - mu[c] * k[c];
        }
        /* pass 1, in memory order: dz = gy silu'(z) into gx; ga = sum dz xhat, gs = sum dz */
        memset(gab, 0, sizeof(float) * (size_t)C);
        memset(gsb, 0, sizeof(float) * (size_t)C);
        for (ptrdiff_t i = 0; i < HW; i++)
            for (ptrdiff_t c0 = 0; c0 < C; c0 += VL) {
                const vf xv = *(const vfu *)(xb + i * C + c0);
                const vf z = xv * *(const vfu *)(k + c0) + *(const vfu *)(m + c0);
                const vf sg = sigmoid_v(z);
                const vf dz = *(const vfu *)(gyb + i * C + c0) * sg * (1.0f + z * (1.0f - sg));
                *(vfu *)(gxb + i * C + c0) = dz;
                *(vfu *)(gab + c0) += dz * ((xv - *(const vfu *)(mu + c0)) * *(const vfu *)(rs + c0));
                *(vfu *)(gsb + c0) += dz;
            }
        /* gx = rstd (a dz - mean_g(a gs) - xhat mean_g(a ga)) = p dz - q x + o per channel */
        for (ptrdiff_t c = 0; c < C; c++) { t[c] = ab[c] * gsb[c]; u[c] = ab[c] * gab[c]; }
        gn_group_mean(t, C, G, n, t);
        gn_group_mean(u, C, G, n, u);
        for (ptrdiff_t c = 0; c < C; c++) {
            const float p = rs[c] * ab[c], q = rs[c] * rs[c] * u[c];
            k[c] = p;
            m[c] = q;
            t[c] = q * mu[c] - rs[c] * t[c];
        }
        for (ptrdiff_t i = 0; i < HW; i++)
            for (ptrdiff_t c0 = 0; c0 < C; c0 += VL) {
                float *g = gxb + i * C + c0;
                *(vfu *)g = *(const vfu *)(k + c0) * *(vfu *)g
                             - *(const vfu *)(m + c0) * *(const vfu *)(xb + i * C + c0)
                             + *(const vfu *)(t + c0);
            }
    }
}
