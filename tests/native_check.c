/* A check of src/aigc/assets/native/kernels.c against float64 formulas written out here, in C,
 * so that it can be built with sanitizers or for another CPU and run without Python or torch
 * (tests/test_native_c.py builds and runs it). Exit status 0 when every kernel is within its
 * tolerance and gives the same bits on 1 and 2 threads; it prints the worst errors either way. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void aigc_gelu_tanh_fwd(const float *x, float *y, ptrdiff_t n, int threads);
void aigc_gelu_tanh_bwd(const float *gy, const float *x, float *gx, ptrdiff_t n, int threads);
void aigc_rms_norm(const float *x, const float *w, float *y, ptrdiff_t rows, ptrdiff_t dim,
                   float eps);
void aigc_silu_mul(const float *gu, float *out, ptrdiff_t rows, ptrdiff_t n);
int aigc_attn_fwd(const float *qkv, float *y, float *p, ptrdiff_t B, ptrdiff_t T, ptrdiff_t H,
                  ptrdiff_t d, float scale, int threads);
int aigc_attn_bwd(const float *gy, const float *qkv, const float *p, float *g, ptrdiff_t B,
                  ptrdiff_t T, ptrdiff_t H, ptrdiff_t d, float scale, int threads);

static int failures = 0;

static void expect(const char *what, double err, double tol) {
    const int ok = err <= tol; /* NaN fails */
    printf("%-44s worst error %.3g (tolerance %.1g)%s\n", what, err, tol, ok ? "" : "  FAILED");
    failures += !ok;
}

static void expect_same(const char *what, int same) {
    printf("%-44s %s\n", what, same ? "same bits" : "DIFFERENT BITS  FAILED");
    failures += !same;
}

static float uniform(uint32_t *s) { /* in [-1, 1) */
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *floats(size_t n) {
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void check_gelu(void) {
    const double c = 0.7978845608028654; /* sqrt(2 / pi) */
    double err_y = 0, err_g = 0;
    int same = 1;
    for (ptrdiff_t n = 1; n <= 70000; n = n < 80 ? n + 1 : n * 3 + 1) {
        float *x = floats(n), *gy = floats(n), *y1 = floats(n), *y2 = floats(n), *g1 = floats(n),
              *g2 = floats(n);
        uint32_t s = (uint32_t)n;
        for (ptrdiff_t i = 0; i < n; i++) {
            x[i] = 12.0f * uniform(&s);
            gy[i] = uniform(&s);
        }
        aigc_gelu_tanh_fwd(x, y1, n, 1);
        aigc_gelu_tanh_fwd(x, y2, n, 2);
        aigc_gelu_tanh_bwd(gy, x, g1, n, 1);
        aigc_gelu_tanh_bwd(gy, x, g2, n, 2);
        same &= !memcmp(y1, y2, n * sizeof *y1) && !memcmp(g1, g2, n * sizeof *g1);
        for (ptrdiff_t i = 0; i < n; i++) {
            const double v = x[i], u = c * (v + 0.044715 * v * v * v), t = tanh(u);
            const double du = c * (1 + 3 * 0.044715 * v * v);
            const double ref_y = 0.5 * v * (1 + t), ref_g = gy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du);
            err_y = fmax(err_y, fabs(y1[i] - ref_y));
            err_g = fmax(err_g, fabs(g1[i] - ref_g) / (1 + fabs(gy[i])));
        }
        free(x), free(gy), free(y1), free(y2), free(g1), free(g2);
    }
    expect("GELU forward against float64", err_y, 2e-6);
    expect("GELU backward against float64", err_g, 5e-6);
    expect_same("GELU on 1 and 2 threads", same);

    /* NaN stays NaN; far below zero GELU is 0 and so is its slope (not x e^-80) */
    float edge[] = {NAN, -1e30f, -1e19f, -1e4f, -200.0f, 0.0f, 1e4f, 1e30f}, ey[8], eg[8];
    const float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    aigc_gelu_tanh_fwd(edge, ey, 8, 1);
    aigc_gelu_tanh_bwd(ones, edge, eg, 8, 1);
    int edges_ok = isnan(ey[0]) && isnan(eg[0]);
    for (int i = 1; i <= 4; i++) edges_ok &= ey[i] == 0.0f && eg[i] == 0.0f;
    edges_ok &= ey[5] == 0.0f && fabsf(eg[5] - 0.5f) < 1e-6f;  /* gelu'(0) = 1/2 */
    edges_ok &= ey[6] == 1e4f && ey[7] == 1e30f && eg[6] == 1.0f;
    if (!edges_ok)
        for (int i = 0; i < 8; i++) printf("  x %g: gelu %g, slope %g\n", edge[i], ey[i], eg[i]);
    printf("%-44s %s\n", "GELU at NaN, 0, +-1e4 and far below zero", edges_ok ? "as expected" : "WRONG  FAILED");
    failures += !edges_ok;
}

static void check_decode(void) {
    const ptrdiff_t rows = 3, dim = 77, n = 45;
    float *x = floats(rows * dim), *w = floats(dim), *y = floats(rows * dim);
    float *gu = floats(rows * 2 * n), *o = floats(rows * n);
    uint32_t s = 7;
    for (ptrdiff_t i = 0; i < rows * dim; i++) x[i] = 4 * uniform(&s);
    for (ptrdiff_t i = 0; i < dim; i++) w[i] = uniform(&s);
    for (ptrdiff_t i = 0; i < rows * 2 * n; i++) gu[i] = 6 * uniform(&s);
    gu[0] = -1e30f, gu[1] = -100.0f, gu[2] = NAN; /* gates far below zero and a NaN */
    aigc_rms_norm(x, w, y, rows, dim, 1e-5f);
    aigc_silu_mul(gu, o, rows, n);
    double err_r = 0, err_s = 0;
    for (ptrdiff_t r = 0; r < rows; r++) {
        double ss = 0;
        for (ptrdiff_t i = 0; i < dim; i++) ss += (double)x[r * dim + i] * x[r * dim + i];
        const double inv = 1 / sqrt(ss / dim + 1e-5);
        for (ptrdiff_t i = 0; i < dim; i++)
            err_r = fmax(err_r, fabs(y[r * dim + i] - w[i] * x[r * dim + i] * inv));
        for (ptrdiff_t i = 0; i < n; i++) {
            const double g = gu[r * 2 * n + i], u = gu[r * 2 * n + n + i];
            if (isnan(g)) {
                err_s = isnan(o[r * n + i]) ? err_s : INFINITY;
                continue;
            }
            const double ref = g < -700 ? 0.0 : g / (1 + exp(-g)) * u;
            err_s = fmax(err_s, fabs(o[r * n + i] - ref) / (1 + fabs(u)));
        }
    }
    expect("RMSNorm against float64", err_r, 2e-6);
    expect("SiLU product against float64", err_s, 2e-6);
    free(x), free(w), free(y), free(gu), free(o);
}

/* one (batch, head) of causal attention in float64: y (T, d); the backward's dq, dk, dv (T, d) */
static void attention_reference(const float *qkv, const float *gy, ptrdiff_t T, ptrdiff_t C,
                                ptrdiff_t d, ptrdiff_t off, double scale, double *y, double *dq,
                                double *dk, double *dv, double *P, double *dS) {
#define AT(t, part, e) ((double)qkv[(t) * 3 * C + (part) * C + off + (e)])
#define GY(t, e) ((double)gy[(t) * C + off + (e)])
    for (ptrdiff_t i = 0; i < T; i++) {
        double m = -INFINITY, sum = 0, D = 0;
        for (ptrdiff_t j = 0; j <= i; j++) {
            double a = 0;
            for (ptrdiff_t e = 0; e < d; e++) a += AT(i, 0, e) * AT(j, 1, e);
            P[i * T + j] = a * scale;
            m = fmax(m, P[i * T + j]);
        }
        for (ptrdiff_t j = 0; j <= i; j++) sum += P[i * T + j] = exp(P[i * T + j] - m);
        for (ptrdiff_t j = 0; j <= i; j++) P[i * T + j] /= sum;
        for (ptrdiff_t e = 0; e < d; e++) {
            double a = 0;
            for (ptrdiff_t j = 0; j <= i; j++) a += P[i * T + j] * AT(j, 2, e);
            y[i * d + e] = a;
        }
        for (ptrdiff_t j = 0; j <= i; j++) { /* dP = dY V^T, dS = P (dP - rowsum(P dP)) scale */
            double a = 0;
            for (ptrdiff_t e = 0; e < d; e++) a += GY(i, e) * AT(j, 2, e);
            dS[i * T + j] = a;
            D += a * P[i * T + j];
        }
        for (ptrdiff_t j = 0; j <= i; j++) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - D) * scale;
    }
    for (ptrdiff_t i = 0; i < T; i++)
        for (ptrdiff_t e = 0; e < d; e++) {
            double q = 0, k = 0, v = 0;
            for (ptrdiff_t j = 0; j <= i; j++) q += dS[i * T + j] * AT(j, 1, e);
            for (ptrdiff_t j = i; j < T; j++) {
                k += dS[j * T + i] * AT(j, 0, e);
                v += P[j * T + i] * GY(j, e);
            }
            dq[i * d + e] = q, dk[i * d + e] = k, dv[i * d + e] = v;
        }
#undef AT
#undef GY
}

static void check_attention(void) {
    static const ptrdiff_t shapes[][4] = {{2, 1, 2, 16}, {2, 17, 2, 32}, {1, 64, 4, 32},
                                          {3, 100, 2, 48}, {1, 140, 1, 128}, {1, 256, 1, 16}};
    double err_y = 0, err_g = 0;
    int same = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const ptrdiff_t B = shapes[k][0], T = shapes[k][1], H = shapes[k][2], d = shapes[k][3];
        const ptrdiff_t C = H * d, Tp = (T + 15) / 16 * 16;
        const double scale = 1 / sqrt((double)d);
        float *qkv = floats(B * T * 3 * C), *gy = floats(B * T * C), *y = floats(B * T * C),
              *y2 = floats(B * T * C), *p = floats(B * H * T * Tp), *p2 = floats(B * H * T * Tp),
              *g = floats(B * T * 3 * C), *g2 = floats(B * T * 3 * C);
        double *ry = malloc(sizeof(double) * (size_t)(4 * T * d + 2 * T * T));
        uint32_t s = (uint32_t)(k + 11);
        for (ptrdiff_t i = 0; i < B * T * 3 * C; i++) qkv[i] = 2 * uniform(&s);
        for (ptrdiff_t i = 0; i < B * T * C; i++) gy[i] = uniform(&s);
        if (!ry || aigc_attn_fwd(qkv, y, p, B, T, H, d, (float)scale, 1) ||
            aigc_attn_bwd(gy, qkv, p, g, B, T, H, d, (float)scale, 1) ||
            aigc_attn_fwd(qkv, y2, p2, B, T, H, d, (float)scale, 2) ||
            aigc_attn_bwd(gy, qkv, p2, g2, B, T, H, d, (float)scale, 2)) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        same &= !memcmp(y, y2, B * T * C * sizeof *y) && !memcmp(g, g2, B * T * 3 * C * sizeof *g);
        double *rdq = ry + T * d, *rdk = rdq + T * d, *rdv = rdk + T * d, *P = rdv + T * d,
               *dS = P + T * T;
        for (ptrdiff_t b = 0; b < B; b++)
            for (ptrdiff_t h = 0; h < H; h++) {
                attention_reference(qkv + b * T * 3 * C, gy + b * T * C, T, C, d, h * d, scale, ry,
                                    rdq, rdk, rdv, P, dS);
                for (ptrdiff_t t = 0; t < T; t++)
                    for (ptrdiff_t e = 0; e < d; e++) {
                        const float *gt = g + (b * T + t) * 3 * C + h * d + e;
                        err_y = fmax(err_y, fabs(y[(b * T + t) * C + h * d + e] - ry[t * d + e]));
                        err_g = fmax(err_g, fmax(fabs(gt[0] - rdq[t * d + e]),
                                                 fmax(fabs(gt[C] - rdk[t * d + e]),
                                                      fabs(gt[2 * C] - rdv[t * d + e]))));
                    }
            }
        free(qkv), free(gy), free(y), free(y2), free(p), free(p2), free(g), free(g2), free(ry);
    }
    expect("attention forward against float64", err_y, 1e-5);
    expect("attention backward against float64", err_g, 2e-5);
    expect_same("attention on 1 and 2 threads", same);
}

int main(void) {
    check_gelu();
    check_decode();
    check_attention();
    return failures ? 1 : 0;
}
