/* A check of src/aigc/assets/native/kernels.c (GELU, the decoding kernels, attention, the fused
 * GPT MLP, the 3x3 convolutions at both Winograd tile sizes, GroupNorm + SiLU) against float64
 * formulas written
 * out here, in C, so that it can be built with sanitizers or for another CPU and run without
 * Python or torch (tests/test_native_c.py builds and runs it). Exit status 0 when every kernel is within its
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
int aigc_attn_fwd(const float *qkv, const float *bias, float *y, float *p, ptrdiff_t B,
                  ptrdiff_t T, ptrdiff_t H, ptrdiff_t d, float scale, int threads);
int aigc_attn_bwd(const float *gy, const float *qkv, const float *bias, const float *p, float *g,
                  float *gbias, ptrdiff_t B, ptrdiff_t T, ptrdiff_t H, ptrdiff_t d, float scale,
                  int threads);
int aigc_mlp_fwd(const float *x, const float *w1, const float *b1, const float *w2,
                 const float *b2, float *u, float *h, float *y, ptrdiff_t M, ptrdiff_t N,
                 ptrdiff_t K, ptrdiff_t K2, int threads);
int aigc_mlp_bwd(const float *gy, const float *w2, const float *u, float *du, float *db,
                 ptrdiff_t M, ptrdiff_t N, ptrdiff_t K2, int threads);
void aigc_conv3x3_weights(const float *w, float *U, ptrdiff_t Co, ptrdiff_t Ci, int flipped, int m);
int aigc_conv3x3_fwd(const float *x, const float *U, const float *bias, float *y, ptrdiff_t B,
                     ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci, ptrdiff_t Co, int m, int threads);
int aigc_conv3x3_wgrad(const float *x, const float *gy, float *dw, float *db, ptrdiff_t B,
                       ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci, ptrdiff_t Co, int m, int threads);
void aigc_gn_silu_fwd(const float *x, const float *a, const float *s, float *y, float *mean,
                      float *rstd, ptrdiff_t B, ptrdiff_t HW, ptrdiff_t C, ptrdiff_t G, float eps,
                      int threads);
void aigc_gn_silu_bwd(const float *gy, const float *x, const float *a, const float *s,
                      const float *mean, const float *rstd, float *gx, float *ga, float *gs,
                      ptrdiff_t B, ptrdiff_t HW, ptrdiff_t C, ptrdiff_t G, int threads);

static int failures = 0;

static void expect(const char *what, double err, double tol) {
    const int ok = err <= tol; /* NaN fails */
    printf("%-48s worst error %.3g (tolerance %.1g)%s\n", what, err, tol, ok ? "" : "  FAILED");
    failures += !ok;
}

static void expect_same(const char *what, int same) {
    printf("%-48s %s\n", what, same ? "same bits" : "DIFFERENT BITS  FAILED");
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
    printf("%-48s %s\n", "GELU at NaN, 0, +-1e4 and far below zero", edges_ok ? "as expected" : "WRONG  FAILED");
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
    double err_y = 0, err_g = 0, err_gb = 0;
    int same = 1, biased_same = 1;
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
        /* with a bias: the kernels on (qkv computed without it, bias) give exactly what they
         * give on qkv + bias, and the bias's gradient is g summed over the rows */
        float *bias = floats(3 * C), *qkv0 = floats(B * T * 3 * C), *gb = floats(3 * C),
              *gb2 = floats(3 * C), *yb = floats(B * T * C), *pb = floats(B * H * T * Tp),
              *gbq = floats(B * T * 3 * C);
        for (ptrdiff_t j = 0; j < 3 * C; j++) bias[j] = uniform(&s);
        for (ptrdiff_t i = 0; i < B * T * 3 * C; i++) {
            qkv0[i] = qkv[i];
            qkv[i] = qkv0[i] + bias[i % (3 * C)];
        }
        if (!ry || aigc_attn_fwd(qkv, NULL, y, p, B, T, H, d, (float)scale, 1) ||
            aigc_attn_bwd(gy, qkv, NULL, p, g, gb, B, T, H, d, (float)scale, 1) ||
            aigc_attn_fwd(qkv, NULL, y2, p2, B, T, H, d, (float)scale, 2) ||
            aigc_attn_bwd(gy, qkv, NULL, p2, g2, gb2, B, T, H, d, (float)scale, 2)) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        same &= !memcmp(y, y2, B * T * C * sizeof *y) && !memcmp(g, g2, B * T * 3 * C * sizeof *g)
                && !memcmp(gb, gb2, 3 * C * sizeof *gb);
        for (int threads = 1; threads <= 2; threads++) {
            if (aigc_attn_fwd(qkv0, bias, yb, pb, B, T, H, d, (float)scale, threads) ||
                aigc_attn_bwd(gy, qkv0, bias, pb, gbq, gb2, B, T, H, d, (float)scale, threads)) {
                fprintf(stderr, "out of memory\n");
                exit(2);
            }
            biased_same &= !memcmp(y, yb, B * T * C * sizeof *y) && !memcmp(p, pb, B * H * T * Tp * sizeof *p)
                           && !memcmp(g, gbq, B * T * 3 * C * sizeof *g) && !memcmp(gb, gb2, 3 * C * sizeof *gb);
        }
        for (ptrdiff_t j = 0; j < 3 * C; j++) {
            double sum = 0;
            for (ptrdiff_t r = 0; r < B * T; r++) sum += g[r * 3 * C + j];
            err_gb = fmax(err_gb, fabs(gb[j] - sum) / (1 + fabs(sum)));
        }
        free(bias), free(qkv0), free(gb), free(gb2), free(yb), free(pb), free(gbq);
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
    expect("attention's bias gradient against the rows' float64 sum", err_gb, 1e-5);
    expect_same("attention on 1 and 2 threads", same);
    expect_same("attention with the bias added inside, as on qkv + bias (1 and 2 threads)",
                biased_same);
}

/* The 3x3 convolution (stride 1, padding 1, channels-last) written out in float64: y, the
 * input's gradient (the kernels flipped, channels swapped) and the kernels' and bias's. */
static double conv_at(const float *x, const float *w, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ci,
                      ptrdiff_t Co, ptrdiff_t b, ptrdiff_t yy, ptrdiff_t xx, ptrdiff_t co,
                      int flipped) {
    double sum = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            const ptrdiff_t r = yy + i - 1, c = xx + j - 1;
            if (r < 0 || r >= H || c < 0 || c >= W) continue;
            for (ptrdiff_t ci = 0; ci < Ci; ci++) {  /* flipped: x has Co channels, out Ci */
                const double wv = flipped ? w[(ci * Co + co) * 9 + (2 - i) * 3 + (2 - j)]
                                          : w[(co * Ci + ci) * 9 + i * 3 + j];
                sum += wv * x[((b * H + r) * W + c) * Ci + ci];
            }
        }
    return sum;
}

static void check_conv(void) {
    static const ptrdiff_t shapes[][5] = {{2, 16, 5, 7, 32}, {1, 32, 1, 1, 16}, {3, 48, 6, 3, 80},
                                          {2, 16, 9, 10, 16}, {1, 64, 13, 4, 48}};
    double err[2][3] = {{0}};
    int same = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const ptrdiff_t B = shapes[k][0], Ci = shapes[k][1], H = shapes[k][2], W = shapes[k][3],
                        Co = shapes[k][4], nx = B * H * W * Ci, ny = B * H * W * Co;
        float *x = floats(nx), *w = floats(Co * Ci * 9), *bias = floats(Co), *gy = floats(ny),
              *U = floats(36 * Ci * Co), *y = floats(ny), *y2 = floats(ny), *gx = floats(nx),
              *dw = floats(Co * Ci * 9), *dw2 = floats(Co * Ci * 9), *db = floats(Co);
        uint32_t s = (uint32_t)(k + 21);
        for (ptrdiff_t i = 0; i < nx; i++) x[i] = uniform(&s);
        for (ptrdiff_t i = 0; i < Co * Ci * 9; i++) w[i] = uniform(&s) / sqrt(9.0 * Ci);
        for (ptrdiff_t i = 0; i < Co; i++) bias[i] = uniform(&s);
        for (ptrdiff_t i = 0; i < ny; i++) gy[i] = uniform(&s);
        for (int m = 2; m <= 4; m += 2) {
            double ymax = 0, gmax = 0, wmax = 0, ey = 0, eg = 0, ew = 0;
            aigc_conv3x3_weights(w, U, Co, Ci, 0, m);
            int bad = aigc_conv3x3_fwd(x, U, bias, y, B, H, W, Ci, Co, m, 1) ||
                      aigc_conv3x3_fwd(x, U, bias, y2, B, H, W, Ci, Co, m, 2);
            same &= !memcmp(y, y2, ny * sizeof *y);
            aigc_conv3x3_weights(w, U, Co, Ci, 1, m);
            bad |= aigc_conv3x3_fwd(gy, U, NULL, gx, B, H, W, Co, Ci, m, 1) ||
                   aigc_conv3x3_wgrad(x, gy, dw, db, B, H, W, Ci, Co, m, 1) ||
                   aigc_conv3x3_wgrad(x, gy, dw2, NULL, B, H, W, Ci, Co, m, 2);
            if (bad) {
                fprintf(stderr, "out of memory\n");
                exit(2);
            }
            same &= !memcmp(dw, dw2, Co * Ci * 9 * sizeof *dw);
            for (ptrdiff_t b = 0; b < B; b++)
                for (ptrdiff_t r = 0; r < H; r++)
                    for (ptrdiff_t c = 0; c < W; c++) {
                        for (ptrdiff_t co = 0; co < Co; co++) {
                            const double ref = bias[co] + conv_at(x, w, H, W, Ci, Co, b, r, c, co, 0);
                            ymax = fmax(ymax, fabs(ref));
                            ey = fmax(ey, fabs(y[((b * H + r) * W + c) * Co + co] - ref));
                        }
                        for (ptrdiff_t ci = 0; ci < Ci; ci++) {
                            const double ref = conv_at(gy, w, H, W, Co, Ci, b, r, c, ci, 1);
                            gmax = fmax(gmax, fabs(ref));
                            eg = fmax(eg, fabs(gx[((b * H + r) * W + c) * Ci + ci] - ref));
                        }
                    }
            for (ptrdiff_t co = 0; co < Co; co++) {
                double rb = 0;
                for (ptrdiff_t i = 0; i < B * H * W; i++) rb += gy[i * Co + co];
                ew = fmax(ew, fabs(db[co] - rb));
                for (ptrdiff_t ci = 0; ci < Ci; ci++)
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            double ref = 0;
                            for (ptrdiff_t b = 0; b < B; b++)
                                for (ptrdiff_t r = 0; r < H; r++)
                                    for (ptrdiff_t c = 0; c < W; c++) {
                                        const ptrdiff_t rr = r + i - 1, cc = c + j - 1;
                                        if (rr < 0 || rr >= H || cc < 0 || cc >= W) continue;
                                        ref += (double)gy[((b * H + r) * W + c) * Co + co] *
                                               x[((b * H + rr) * W + cc) * Ci + ci];
                                    }
                            wmax = fmax(wmax, fabs(ref));
                            ew = fmax(ew, fabs(dw[(co * Ci + ci) * 9 + i * 3 + j] - ref));
                        }
            }
            err[m / 4][0] = fmax(err[m / 4][0], ey / ymax);  /* relative to the largest value */
            err[m / 4][1] = fmax(err[m / 4][1], eg / gmax);
            err[m / 4][2] = fmax(err[m / 4][2], ew / fmax(wmax, 1.0));
        }
        free(x), free(w), free(bias), free(gy), free(U), free(y), free(y2), free(gx), free(dw),
            free(dw2), free(db);
    }
    for (int k = 0; k < 4; k++) {  /* large enough to be split across threads */
        const int m = k % 2 ? 4 : 2;  /* many tiles (parts) and few (positions split) */
        const ptrdiff_t B = k < 2 ? 8 : 16, H = k < 2 ? 24 : 7, W = H, C = 64, n = B * H * W * C;
        float *x = floats(n), *w = floats(C * C * 9), *U = floats(36 * C * C), *y = floats(n),
              *y2 = floats(n), *dw = floats(C * C * 9), *dw2 = floats(C * C * 9),
              *db = floats(C), *db2 = floats(C);
        uint32_t s = 41;
        for (ptrdiff_t i = 0; i < n; i++) x[i] = uniform(&s);
        for (ptrdiff_t i = 0; i < C * C * 9; i++) w[i] = uniform(&s) / 24;
        aigc_conv3x3_weights(w, U, C, C, 0, m);
        if (aigc_conv3x3_fwd(x, U, NULL, y, B, H, W, C, C, m, 1) ||
            aigc_conv3x3_fwd(x, U, NULL, y2, B, H, W, C, C, m, 2) ||
            aigc_conv3x3_wgrad(x, y, dw, db, B, H, W, C, C, m, 1) ||
            aigc_conv3x3_wgrad(x, y, dw2, db2, B, H, W, C, C, m, 2)) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        same &= !memcmp(y, y2, n * sizeof *y) && !memcmp(dw, dw2, C * C * 9 * sizeof *dw) &&
                !memcmp(db, db2, C * sizeof *db);
        free(x), free(w), free(U), free(y), free(y2), free(dw), free(dw2), free(db), free(db2);
    }
    expect("conv3x3 F(2x2) forward against float64", err[0][0], 3e-6);
    expect("conv3x3 F(2x2) input gradient against float64", err[0][1], 3e-6);
    expect("conv3x3 F(2x2) kernel and bias gradients", err[0][2], 3e-6);
    expect("conv3x3 F(4x4) forward against float64", err[1][0], 3e-5);
    expect("conv3x3 F(4x4) input gradient against float64", err[1][1], 3e-5);
    expect("conv3x3 F(4x4) kernel and bias gradients", err[1][2], 3e-5);
    expect_same("conv3x3 on 1 and 2 threads", same);
}

/* GroupNorm + scale-shift + SiLU in float64: the forward, and the backward by the chain rule
 * written out per group. */
static void check_groupnorm(void) {
    static const ptrdiff_t shapes[][4] = {{2, 15, 32, 8}, {1, 1, 16, 1}, {3, 28, 48, 3},
                                          {2, 49, 64, 8}, {4, 784, 32, 8}};  /* threaded */
    double ey = 0, eg = 0, ea = 0;
    int same = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const ptrdiff_t B = shapes[k][0], HW = shapes[k][1], C = shapes[k][2], G = shapes[k][3];
        const ptrdiff_t n = B * HW * C, cpg = C / G;
        float *x = floats(n), *gy = floats(n), *a = floats(B * C), *sh = floats(B * C),
              *y = floats(n), *y2 = floats(n), *gx = floats(n), *gx2 = floats(n),
              *mean = floats(B * G), *rstd = floats(B * G), *ga = floats(B * C), *gs = floats(B * C);
        uint32_t s = (uint32_t)(k + 31);
        for (ptrdiff_t i = 0; i < n; i++) { x[i] = 3 * uniform(&s) + 1; gy[i] = uniform(&s); }
        for (ptrdiff_t i = 0; i < B * C; i++) { a[i] = 1 + uniform(&s); sh[i] = uniform(&s); }
        aigc_gn_silu_fwd(x, a, sh, y, mean, rstd, B, HW, C, G, 1e-5f, 1);
        aigc_gn_silu_bwd(gy, x, a, sh, mean, rstd, gx, ga, gs, B, HW, C, G, 1);
        aigc_gn_silu_fwd(x, a, sh, y2, mean, rstd, B, HW, C, G, 1e-5f, 2);
        aigc_gn_silu_bwd(gy, x, a, sh, mean, rstd, gx2, ga, gs, B, HW, C, G, 2);
        same &= !memcmp(y, y2, n * sizeof *y) && !memcmp(gx, gx2, n * sizeof *gx);
        for (ptrdiff_t b = 0; b < B; b++)
            for (ptrdiff_t g = 0; g < G; g++) {
                double mu = 0, var = 0, s1 = 0, s2 = 0;
                const double N = (double)HW * cpg;
#define X(i, c) ((double)x[(b * HW + (i)) * C + (c)])
                for (ptrdiff_t i = 0; i < HW; i++)
                    for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++) mu += X(i, c) / N;
                for (ptrdiff_t i = 0; i < HW; i++)
                    for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++)
                        var += (X(i, c) - mu) * (X(i, c) - mu) / N;
                const double rs = 1 / sqrt(var + 1e-5);
                for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    double rga = 0, rgs = 0;
                    for (ptrdiff_t i = 0; i < HW; i++) {
                        const double xh = (X(i, c) - mu) * rs, z = xh * a[b * C + c] + sh[b * C + c];
                        const double sg = 1 / (1 + exp(-z)), gyv = gy[(b * HW + i) * C + c];
                        const double dz = gyv * sg * (1 + z * (1 - sg));
                        ey = fmax(ey, fabs(y[(b * HW + i) * C + c] - z * sg));
                        rga += dz * xh;
                        rgs += dz;
                        s1 += dz * a[b * C + c];
                        s2 += dz * a[b * C + c] * xh;
                    }
                    ea = fmax(ea, fmax(fabs(ga[b * C + c] - rga), fabs(gs[b * C + c] - rgs)));
                }
                for (ptrdiff_t c = g * cpg; c < (g + 1) * cpg; c++)
                    for (ptrdiff_t i = 0; i < HW; i++) {
                        const double xh = (X(i, c) - mu) * rs, z = xh * a[b * C + c] + sh[b * C + c];
                        const double sg = 1 / (1 + exp(-z)), gyv = gy[(b * HW + i) * C + c];
                        const double dz = gyv * sg * (1 + z * (1 - sg));
                        const double ref = rs * (dz * a[b * C + c] - s1 / N - xh * s2 / N);
                        eg = fmax(eg, fabs(gx[(b * HW + i) * C + c] - ref));
                    }
#undef X
            }
        free(x), free(gy), free(a), free(sh), free(y), free(y2), free(gx), free(gx2), free(mean),
            free(rstd), free(ga), free(gs);
    }
    expect("GroupNorm + SiLU forward against float64", ey, 5e-6);
    expect("GroupNorm + SiLU input gradient against float64", eg, 1e-5);
    expect("GroupNorm + SiLU scale and shift gradients", ea, 1e-4);
    expect_same("GroupNorm + SiLU on 1 and 2 threads", same);
}

static double gelu64(double v, double *slope) {
    const double c = 0.7978845608028654, t = tanh(c * (v + 0.044715 * v * v * v));
    *slope = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v);
    return 0.5 * v * (1 + t);
}

/* The fused MLP: u = x W1^T + b1, h = gelu(u), y = h W2^T + b2, and du = (gy W2) gelu'(u) with
 * db1 = du summed over rows, against float64 sums; rows that leave a partial 12-row tile, widths
 * that are and are not multiples of 16, one and several 32-column panels, with and without the
 * second product and its bias. */
static void check_mlp(void) {
    const ptrdiff_t shapes[][4] = {{37, 16, 32, 32}, {1, 20, 64, 32}, {25, 128, 512, 128},
                                   {13, 48, 96, 0}};
    double eu = 0, ey = 0, ed = 0, eb = 0;
    int same = 1;
    for (int c = 0; c < 4; c++) {
        const ptrdiff_t M = shapes[c][0], K = shapes[c][1], N = shapes[c][2], K2 = shapes[c][3];
        const ptrdiff_t K2g = K2 ? K2 : 8;  /* the backward's width when there is no y */
        float *x = floats(M * K), *w1 = floats(N * K), *b1 = floats(N), *w2 = floats(K2g * N),
              *b2 = floats(K2g), *gy = floats(M * K2g), *u = floats(M * N), *h = floats(M * N),
              *y = floats(M * K2g), *u2 = floats(M * N), *h2 = floats(M * N),
              *y2 = floats(M * K2g), *du = floats(M * N), *du2 = floats(M * N), *db = floats(N),
              *db2 = floats(N);
        uint32_t s = 77u + (uint32_t)c;
        for (ptrdiff_t i = 0; i < M * K; i++) x[i] = 2 * uniform(&s);
        for (ptrdiff_t i = 0; i < N * K; i++) w1[i] = uniform(&s) / sqrtf((float)K);
        for (ptrdiff_t i = 0; i < N; i++) b1[i] = uniform(&s);
        for (ptrdiff_t i = 0; i < K2g * N; i++) w2[i] = uniform(&s) / sqrtf((float)N);
        for (ptrdiff_t i = 0; i < K2g; i++) b2[i] = uniform(&s);
        for (ptrdiff_t i = 0; i < M * K2g; i++) gy[i] = uniform(&s);
        const float *pw2 = K2 ? w2 : NULL, *pb2 = (K2 && c != 1) ? b2 : NULL;  /* case 1: no b2 */
        if (aigc_mlp_fwd(x, w1, b1, pw2, pb2, u, h, K2 ? y : NULL, M, N, K, K2, 1) ||
            aigc_mlp_fwd(x, w1, b1, pw2, pb2, u2, h2, K2 ? y2 : NULL, M, N, K, K2, 2) ||
            aigc_mlp_bwd(gy, w2, u, du, db, M, N, K2g, 1) ||
            aigc_mlp_bwd(gy, w2, u, du2, db2, M, N, K2g, 2)) {
            printf("MLP: out of memory  FAILED\n");
            failures++;
            return;
        }
        same &= !memcmp(u, u2, M * N * sizeof *u) && !memcmp(h, h2, M * N * sizeof *h) &&
                !memcmp(du, du2, M * N * sizeof *du) && !memcmp(db, db2, N * sizeof *db) &&
                (!K2 || !memcmp(y, y2, M * K2 * sizeof *y));
        double *h64 = malloc((size_t)(M * N) * sizeof *h64), *dsum = calloc((size_t)N, sizeof *dsum);
        if (!h64 || !dsum) exit(2);
        for (ptrdiff_t m = 0; m < M; m++)
            for (ptrdiff_t n = 0; n < N; n++) {
                double acc = b1[n];
                for (ptrdiff_t k = 0; k < K; k++) acc += (double)x[m * K + k] * w1[n * K + k];
                eu = fmax(eu, fabs(u[m * N + n] - acc) / (1 + fabs(acc)));
                double unused_slope;
                h64[m * N + n] = gelu64(acc, &unused_slope);
                eu = fmax(eu, fabs(h[m * N + n] - h64[m * N + n]) / (1 + fabs(acc)));
            }
        for (ptrdiff_t m = 0; m < M && K2; m++)
            for (ptrdiff_t j = 0; j < K2; j++) {
                double acc = pb2 ? pb2[j] : 0;
                for (ptrdiff_t n = 0; n < N; n++) acc += h64[m * N + n] * w2[j * N + n];
                ey = fmax(ey, fabs(y[m * K2 + j] - acc) / (1 + fabs(acc)));
            }
        for (ptrdiff_t m = 0; m < M; m++)
            for (ptrdiff_t n = 0; n < N; n++) {
                double dh = 0;
                for (ptrdiff_t j = 0; j < K2g; j++) dh += (double)gy[m * K2g + j] * w2[j * N + n];
                double slope_u;  /* the derivative at the kernel's own u, as the backward takes it */
                gelu64(u[m * N + n], &slope_u);
                const double ref = dh * slope_u;
                ed = fmax(ed, fabs(du[m * N + n] - ref) / (1 + fabs(dh)));
                dsum[n] += du[m * N + n];
            }
        for (ptrdiff_t n = 0; n < N; n++) eb = fmax(eb, fabs(db[n] - dsum[n]) / (1 + fabs(dsum[n])));
        free(h64), free(dsum);
        free(x), free(w1), free(b1), free(w2), free(b2), free(gy), free(u), free(h), free(y),
            free(u2), free(h2), free(y2), free(du), free(du2), free(db), free(db2);
    }
    expect("MLP first product + GELU against float64", eu, 2e-6);
    expect("MLP second product against float64", ey, 5e-6);
    expect("MLP backward product x GELU' against float64", ed, 5e-6);
    expect("MLP first bias gradient (du's row sums)", eb, 1e-5);
    expect_same("MLP on 1 and 2 threads", same);
}

int main(void) {
    check_gelu();
    check_decode();
    check_attention();
    check_mlp();
    check_conv();
    check_groupnorm();
    return failures ? 1 : 0;
}
