/* Float32 CPU kernels for aigc's GPT, forward and backward.
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
 * exponent bits. z is clamped to [-80, 80] (sigmoid is 0 or 1 to float precision beyond);
 * a NaN input stays NaN (comparisons with NaN are false, so the clamp passes it through).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define TWO_C 1.5957691216057308f   /* 2 sqrt(2/pi) */
#define A 0.044715f
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

static inline float exp_neg(float z) {  /* e^(-z) for z in [-80, 80], NaN passes */
    float t = -z * LOG2E;
    float n = floorf(t + 0.5f);
    float f = (t - n) * LN2;  /* |f| <= ln2 / 2 */
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120
              + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float clamp_z(float v) {
    float z = TWO_C * v * (1.0f + A * v * v);
    z = z < -80.0f ? -80.0f : z;
    return z > 80.0f ? 80.0f : z;
}

void aigc_gelu_tanh_fwd(const float *restrict x, float *restrict y, ptrdiff_t n) {
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v / (1.0f + exp_neg(clamp_z(v)));
    }
}

void aigc_gelu_tanh_bwd(const float *restrict gy, const float *restrict x, float *restrict gx,
                        ptrdiff_t n) {
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        float s = 1.0f / (1.0f + exp_neg(clamp_z(v)));
        float dz = TWO_C * (1.0f + 3.0f * A * v * v);
        gx[i] = gy[i] * (s + v * s * (1.0f - s) * dz);
    }
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
 * silu(g) = g / (1 + e^-g). */
void aigc_silu_mul(const float *restrict gu, float *restrict out, ptrdiff_t rows, ptrdiff_t n) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * n, *u = g + n;
        float *o = out + r * n;
#pragma omp simd
        for (ptrdiff_t i = 0; i < n; i++) {
            float z = g[i];
            z = z < -80.0f ? -80.0f : (z > 80.0f ? 80.0f : z);
            o[i] = g[i] / (1.0f + exp_neg(z)) * u[i];
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
