/*
 * Fused CPU selective scan (Mamba's S6 recurrence) for hmrmamba.ssm.fused: forward and backward,
 * float32 and float64. Plain C (no torch headers), loaded with ctypes; see hmrmamba/ssm/build.py.
 *
 * Per batch row b, channel d (a "row"), state n, time t:
 *     x_t   = delta_t + delta_bias            (delta_bias optional)
 *     dt_t  = softplus(x_t) or x_t
 *     e_t   = exp(dt_t * A[d, n])
 *     h_t   = e_t * h_{t-1} + dt_t * u_t * B[b, g(d), t, n]      (h_{-1} = h0 or 0)
 *     y_t   = sum_n C[b, gc(d), t, n] h_t[n] + D[d] u_t            (D optional)
 *     out_t = y_t * silu(z_t)                                       (z optional)
 *
 * Layouts (all C-contiguous): u, delta, z, out: (batch, dim, L), or (batch, L, dim) with channels_last
 * (their gradients too); A: (dim, N); B: (batch, G, L, N);
 * C: (batch, Gc, L, N); D, delta_bias: (dim,); h0, last: (batch, dim, N). Channel d reads group
 * d / (dim / G). Optional inputs and outputs are NULL pointers.
 *
 * Vectorisation: HM_W = 16 channels of one batch element that read the same B and C group form a
 * "tile" and run in SIMD lanes (time-major (L, HM_W) copies of their u, delta, z), so exp, softplus
 * and the gate are vector operations and B_t, C_t are broadcasts; the loop over time is inside and
 * the N x HM_W states stay in L1. Channels that do not fill a tile (dim % 16, or a group boundary
 * inside a tile) run one at a time ("row" kernels, vectorised over the N states).
 *
 * Threads (OpenMP): the forward pass splits (batch element, tile) units; the backward pass gives
 * each thread whole batch elements, so dB and dC (sums over channels) need no atomics, while dA, dD
 * and d(delta_bias) (sums over the batch) go through per-thread double accumulators. The backward
 * pass recomputes the states of one tile into a per-thread buffer (about 4 L N HM_W + 9 L HM_W
 * values): memory does not grow with batch or dim.
 *
 * The file includes itself twice to instantiate the float and double kernels.
 */
#ifndef HM_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define HM_CAT_(a, b) a##b
#define HM_CAT(a, b) HM_CAT_(a, b)
#define HM_FN(name) HM_CAT(name, HM_SUF)
#define HM_INLINE static inline __attribute__((always_inline))
/* largest state size (d_state) the kernels accept; the caller checks */
#define HM_MAXN 256

/* exp for float, written so that the compiler vectorises it (Cephes expf: range reduction to
 * |r| <= ln2/2, degree-6 polynomial, 2^k from the exponent bits; ~1 ulp). Arguments below -87.3
 * give exactly 0 (no denormals), above 88.7 are clamped. */
HM_INLINE float hm_expf(float x) {
    const float big = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float kf = (xc * 1.44269504088896341f + big) - big;
    float r = xc - kf * 0.693359375f;
    r = r + kf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

HM_INLINE double hm_exp(double x) { return exp(x); }

/* log for float > 0 (normal), vectorisable (Cephes logf, ~1 ulp). */
HM_INLINE float hm_logf(float x) {
    int32_t ix;
    memcpy(&ix, &x, sizeof ix);
    int32_t e = ((ix >> 23) & 0xff) - 126; /* x = m 2^e, m in [0.5, 1) */
    int32_t im = (ix & 0x007fffff) | 0x3f000000;
    float m;
    memcpy(&m, &im, sizeof m);
    int lt = m < 0.707106781186547524f;
    float fe = (float)(e - lt);
    m = lt ? (m + m - 1.0f) : (m - 1.0f);
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    return m + y + 0.693359375f * fe;
}

/* softplus (threshold 20, like torch) and sigmoid for float, vectorisable */
HM_INLINE float hm_softplusf(float x) {
    float y = hm_expf(x < 0.0f ? x : -x); /* exp(-|x|) in (0, 1] */
    float w = 1.0f + y, wm1 = w - 1.0f;
    float lp = hm_logf(w) * (y / (wm1 == 0.0f ? 1.0f : wm1)); /* log1p(y), no trapping division */
    lp = wm1 == 0.0f ? y : lp;
    return x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + lp;
}
HM_INLINE float hm_sigmoidf(float x) { return 1.0f / (1.0f + hm_expf(-x)); }
HM_INLINE double hm_softplus(double x) { return x > 20.0 ? x : log1p(exp(x)); }
HM_INLINE double hm_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* SIMD lanes (channels) per tile */
#define HM_W 16

/* 1 when the library was built with OpenMP, else 0. */
int hm_scan_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ABI version, checked by the loader. 3: the forward returns 2 when an input or output is not finite. */
int hm_scan_abi(void) { return 3; }

/* Offset of element (b, d, t = 0) of a (batch, dim, L) or, with channels_last, (batch, L, dim) tensor;
 * consecutive t are HM_TS apart (uses the caller's channels_last, L and dim). */
#define HM_OFF(b, d) (channels_last ? (b) * L * dim + (d) : ((b) * dim + (d)) * L)
#define HM_TS (channels_last ? dim : (int64_t)1)

/* Largest d_state accepted. */
int hm_scan_max_dstate(void) { return HM_MAXN; }

#define HM_REAL float
#define HM_SUF _f32
#define HM_EXP hm_expf
#define HM_SOFTPLUS hm_softplusf
#define HM_SIGMOID hm_sigmoidf
#include __FILE__
#undef HM_REAL
#undef HM_SUF
#undef HM_EXP
#undef HM_SOFTPLUS
#undef HM_SIGMOID

#define HM_REAL double
#define HM_SUF _f64
#define HM_EXP hm_exp
#define HM_SOFTPLUS hm_softplus
#define HM_SIGMOID hm_sigmoid
#include __FILE__

#else /* ------------------------------------------------------------ kernels for one HM_REAL */

typedef HM_REAL HM_CAT(real, HM_SUF);
#define real HM_CAT(real, HM_SUF)


/* 1 when some x[i * st] (i < n) is NaN or infinite, else 0: x - x is 0 for a finite x and NaN otherwise
 * (exact without -ffinite-math-only, which the build never sets). */
HM_INLINE int HM_FN(nonfinite)(const real *x, int64_t n, int64_t st) {
    real acc = 0;
    if (st == 1) {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; i++) acc += x[i] - x[i];
    } else {
        for (int64_t i = 0; i < n; i++) acc += x[i * st] - x[i * st];
    }
    return !(acc == 0);
}

/* One row forward. u, dl, z, out: (L,) with stride st; Arow: (N,); Bp, Cp: (L, N); h0, last: (N,) or NULL.
 * Hs, Es: (L, N) or NULL: when given, the states h_t and decays e_t are stored (backward pass),
 * as are dts (L,) and ypre (L,) = y_t + D u_t. */
HM_INLINE void HM_FN(fwd_row)(const real *u, const real *dl, const real *Arow, const real *Bp,
                               const real *Cp, const real *Dp, const real *z, const real *biasp,
                               int softplus, const real *h0, real *out, real *last, int64_t L,
                               int64_t N, real *Hs, real *Es, real *dts, real *ypre, int64_t st) {
    real h[HM_MAXN];
    real e[HM_MAXN];
    real Ar[HM_MAXN];
    for (int64_t n = 0; n < N; n++) {
        h[n] = h0 ? h0[n] : (real)0;
        Ar[n] = Arow[n];
    }
    const real Dd = Dp ? *Dp : (real)0;
    const real bias = biasp ? *biasp : (real)0;
    for (int64_t t = 0; t < L; t++) {
        real x = dl[t * st] + bias;
        real dt = softplus ? HM_SOFTPLUS(x) : x;
        real ut = u[t * st];
        real dtu = dt * ut;
        const real *Bt = Bp + t * N;
        const real *Ct = Cp + t * N;
#pragma omp simd
        for (int64_t n = 0; n < N; n++) e[n] = HM_EXP(dt * Ar[n]);
        real y = 0;
#pragma omp simd reduction(+ : y)
        for (int64_t n = 0; n < N; n++) {
            h[n] = e[n] * h[n] + dtu * Bt[n];
            y += h[n] * Ct[n];
        }
        y += Dd * ut;
        if (Hs) {
            memcpy(Hs + t * N, h, sizeof(real) * (size_t)N);
            memcpy(Es + t * N, e, sizeof(real) * (size_t)N);
            dts[t] = dt;
            ypre[t] = y;
        }
        if (out) out[t * st] = z ? y * z[t * st] * HM_SIGMOID(z[t * st]) : y;
    }
    if (last)
        for (int64_t n = 0; n < N; n++) last[n] = h[n];
}

/* One row backward, after fwd_row filled Hs, Es, dts, ypre. go: (L,) or NULL; glast, dh0: (N,) or
 * NULL; u, dl, z, go, du, ddelta, dz: stride st; dB, dC: (L, N) accumulated (+=); dA_acc: (N,) accumulated in double; dD_acc, dbias_acc:
 * accumulated in double. du, ddelta, dz: (L,) written. */
HM_INLINE void HM_FN(bwd_row)(const real *u, const real *dl, const real *Arow, const real *Bp,
                               const real *Cp, const real *Dp, const real *z, const real *biasp,
                               int softplus, const real *h0, const real *go, const real *glast,
                               int64_t L, int64_t N, const real *Hs, const real *Es, const real *dts,
                               const real *ypre, real *du, real *ddelta, real *dz, real *dB, real *dC,
                               double *dA_acc, double *dD_acc, double *dbias_acc, real *dh0, int64_t st) {
    real g[HM_MAXN];
    real dAr[HM_MAXN];
    real Ar[HM_MAXN];
    for (int64_t n = 0; n < N; n++) {
        g[n] = glast ? glast[n] : (real)0;
        dAr[n] = 0;
        Ar[n] = Arow[n];
    }
    const real Dd = Dp ? *Dp : (real)0;
    const real bias = biasp ? *biasp : (real)0;
    double dD_row = 0, dbias_row = 0;
    for (int64_t t = L - 1; t >= 0; t--) {
        real gout = go ? go[t * st] : (real)0;
        real gy = gout;
        if (z) {
            real zt = z[t * st];
            real sg = HM_SIGMOID(zt);
            gy = gout * zt * sg;
            if (dz) dz[t * st] = gout * ypre[t] * sg * ((real)1 + zt * ((real)1 - sg));
        }
        real ut = u[t * st];
        real dt = dts[t];
        real dtu = dt * ut;
        dD_row += (double)(gy * ut);
        const real *Bt = Bp + t * N;
        const real *Ct = Cp + t * N;
        const real *Ht = Hs + t * N;
        const real *Et = Es + t * N;
        const real *Hp = t > 0 ? Hs + (t - 1) * N : h0; /* NULL: zero initial state */
        real *dBt = dB + t * N;
        real *dCt = dC + t * N;
        real ddtu = 0, ddt = 0;
        if (Hp) {
#pragma omp simd reduction(+ : ddtu, ddt)
            for (int64_t n = 0; n < N; n++) {
                real gn = g[n] + Ct[n] * gy; /* dL/dh_t */
                dCt[n] += gy * Ht[n];
                dBt[n] += gn * dtu;
                ddtu += gn * Bt[n];
                real q = gn * Et[n] * Hp[n]; /* dL/d(dt A) */
                ddt += q * Ar[n];
                dAr[n] += q * dt;
                g[n] = gn * Et[n]; /* dL/dh_{t-1} */
            }
        } else {
#pragma omp simd reduction(+ : ddtu)
            for (int64_t n = 0; n < N; n++) {
                real gn = g[n] + Ct[n] * gy;
                dCt[n] += gy * Ht[n];
                dBt[n] += gn * dtu;
                ddtu += gn * Bt[n];
                g[n] = gn * Et[n];
            }
        }
        du[t * st] = ddtu * dt + gy * Dd;
        ddt += ddtu * ut;
        if (softplus) {
            real x = dl[t * st] + bias;
            if (x <= (real)20) ddt *= HM_SIGMOID(x);
        }
        ddelta[t * st] = ddt;
        dbias_row += (double)ddt;
    }
    for (int64_t n = 0; n < N; n++) dA_acc[n] += (double)dAr[n];
    *dD_acc += dD_row;
    *dbias_acc += dbias_row;
    if (dh0)
        for (int64_t n = 0; n < N; n++) dh0[n] = g[n];
}


/* ---------------------------------------------------------------- tiles of HM_W channels */

/* HM_W channels of length L -> time-major (L, HM_W). st: the time stride; channels are L apart
 * when st == 1 (channels first), else adjacent (channels last: each time step is one HM_W block). */
HM_INLINE void HM_FN(gather)(real *dst, const real *src, int64_t L, int64_t st) {
    if (st == 1) {
        for (int64_t j = 0; j < HM_W; j++)
            for (int64_t t = 0; t < L; t++) dst[t * HM_W + j] = src[j * L + t];
    } else {
        for (int64_t t = 0; t < L; t++) memcpy(dst + t * HM_W, src + t * st, sizeof(real) * HM_W);
    }
}

/* time-major (L, HM_W) -> HM_W channels of length L (layout as in gather) */
HM_INLINE void HM_FN(scatter)(real *dst, const real *src, int64_t L, int64_t st) {
    if (st == 1) {
        for (int64_t j = 0; j < HM_W; j++)
            for (int64_t t = 0; t < L; t++) dst[j * L + t] = src[t * HM_W + j];
    } else {
        for (int64_t t = 0; t < L; t++) memcpy(dst + t * st, src + t * HM_W, sizeof(real) * HM_W);
    }
}

/* Tile inputs: U = u, XR = delta + bias, X = dt (softplus of XR or XR), Z = z (if z), all (L, HM_W);
 * AT (N, HM_W) = A of the tile's channels, transposed. o0: offset of the tile's first element, st: the
 * time stride (see gather), d0: the tile's first channel. */
HM_INLINE void HM_FN(tile_inputs)(const real *u, const real *delta, const real *A, const real *z,
                                   const real *delta_bias, int softplus, int64_t o0, int64_t st, int64_t d0,
                                   int64_t L, int64_t N, real *U, real *XR, real *X, real *Z, real *AT) {
    HM_FN(gather)(U, u + o0, L, st);
    HM_FN(gather)(XR, delta + o0, L, st);
    if (z) HM_FN(gather)(Z, z + o0, L, st);
    real bias[HM_W];
    for (int64_t j = 0; j < HM_W; j++) bias[j] = delta_bias ? delta_bias[d0 + j] : (real)0;
    for (int64_t t = 0; t < L; t++) {
        real *xr = XR + t * HM_W, *x = X + t * HM_W;
        if (softplus) {
#pragma omp simd
            for (int64_t j = 0; j < HM_W; j++) {
                xr[j] += bias[j];
                x[j] = HM_SOFTPLUS(xr[j]);
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < HM_W; j++) {
                xr[j] += bias[j];
                x[j] = xr[j];
            }
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < HM_W; j++) AT[n * HM_W + j] = A[(d0 + j) * N + n];
}

/* Tile forward. h (N, HM_W): in, the initial state; out, the last. Y (L, HM_W): gated output.
 * store (a literal): also keep Hs, Es (L, N, HM_W) and Ypre (L, HM_W) = y + D u for the backward. */
HM_INLINE void HM_FN(fwd_tile)(const real *U, const real *X, const real *AT, const real *Bp, const real *Cp,
                                const real *Dv, const real *Z, real *h, real *Y, real *Hs, real *Es,
                                real *Ypre, int store, int64_t L, int64_t N) {
    for (int64_t t = 0; t < L; t++) {
        const real *ut = U + t * HM_W, *xt = X + t * HM_W;
        real dtu[HM_W], y[HM_W];
#pragma omp simd
        for (int64_t j = 0; j < HM_W; j++) {
            dtu[j] = xt[j] * ut[j];
            y[j] = 0;
        }
        for (int64_t n = 0; n < N; n++) {
            const real bn = Bp[t * N + n], cn = Cp[t * N + n];
            const real *an = AT + n * HM_W;
            real *hn = h + n * HM_W;
            if (store) {
                real *hs = Hs + (t * N + n) * HM_W, *es = Es + (t * N + n) * HM_W;
#pragma omp simd
                for (int64_t j = 0; j < HM_W; j++) {
                    real e = HM_EXP(xt[j] * an[j]);
                    real hv = e * hn[j] + dtu[j] * bn;
                    hn[j] = hv;
                    y[j] += hv * cn;
                    hs[j] = hv;
                    es[j] = e;
                }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < HM_W; j++) {
                    real hv = HM_EXP(xt[j] * an[j]) * hn[j] + dtu[j] * bn;
                    hn[j] = hv;
                    y[j] += hv * cn;
                }
            }
        }
#pragma omp simd
        for (int64_t j = 0; j < HM_W; j++) {
            real yp = y[j] + (Dv ? Dv[j] * ut[j] : (real)0);
            if (store) Ypre[t * HM_W + j] = yp;
            if (Z) {
                real zt = Z[t * HM_W + j];
                yp = yp * zt * HM_SIGMOID(zt);
            }
            Y[t * HM_W + j] = yp;
        }
    }
}

/* Tile backward after fwd_tile(store=1). GO (L, HM_W) or NULL; g (N, HM_W): in, dL/d(last state);
 * out, dL/d(initial state). h0T (N, HM_W) or NULL (zero initial state). Writes dU, dX (gradient of
 * the raw delta), dZ (L, HM_W); accumulates dBL, dCL (L, N, HM_W), dAr (N, HM_W), dDr, dbr (HM_W). */
HM_INLINE void HM_FN(bwd_tile)(const real *U, const real *XR, const real *X, const real *AT, const real *Bp,
                                const real *Cp, const real *Dv, const real *Z, const real *h0T,
                                const real *GO, real *g, const real *Hs, const real *Es, const real *Ypre,
                                int softplus, real *dU, real *dX, real *dZ, real *dBL, real *dCL, real *dAr,
                                real *dDr, real *dbr, int64_t L, int64_t N) {
    for (int64_t t = L - 1; t >= 0; t--) {
        const real *ut = U + t * HM_W, *xt = X + t * HM_W;
        real gy[HM_W], dtu[HM_W], ddtu[HM_W], ddt[HM_W];
#pragma omp simd
        for (int64_t j = 0; j < HM_W; j++) {
            real go = GO ? GO[t * HM_W + j] : (real)0;
            if (Z) {
                real zt = Z[t * HM_W + j];
                real sg = HM_SIGMOID(zt);
                dZ[t * HM_W + j] = go * Ypre[t * HM_W + j] * sg * ((real)1 + zt * ((real)1 - sg));
                go = go * zt * sg;
            }
            gy[j] = go;
            dtu[j] = xt[j] * ut[j];
            dDr[j] += go * ut[j];
            ddtu[j] = 0;
            ddt[j] = 0;
        }
        for (int64_t n = 0; n < N; n++) {
            const real bn = Bp[t * N + n], cn = Cp[t * N + n];
            const real *an = AT + n * HM_W;
            const real *Ht = Hs + (t * N + n) * HM_W, *Et = Es + (t * N + n) * HM_W;
            const real *Hp = t > 0 ? Hs + ((t - 1) * N + n) * HM_W : (h0T ? h0T + n * HM_W : NULL);
            real *gn_ = g + n * HM_W, *db = dBL + (t * N + n) * HM_W, *dc = dCL + (t * N + n) * HM_W;
            real *da = dAr + n * HM_W;
            if (Hp) {
#pragma omp simd
                for (int64_t j = 0; j < HM_W; j++) {
                    real gn = gn_[j] + cn * gy[j]; /* dL/dh_t */
                    dc[j] += gy[j] * Ht[j];
                    db[j] += gn * dtu[j];
                    ddtu[j] += gn * bn;
                    real q = gn * Et[j] * Hp[j]; /* dL/d(dt A) */
                    ddt[j] += q * an[j];
                    da[j] += q * xt[j];
                    gn_[j] = gn * Et[j]; /* dL/dh_{t-1} */
                }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < HM_W; j++) {
                    real gn = gn_[j] + cn * gy[j];
                    dc[j] += gy[j] * Ht[j];
                    db[j] += gn * dtu[j];
                    ddtu[j] += gn * bn;
                    gn_[j] = gn * Et[j];
                }
            }
        }
#pragma omp simd
        for (int64_t j = 0; j < HM_W; j++) {
            dU[t * HM_W + j] = ddtu[j] * xt[j] + gy[j] * (Dv ? Dv[j] : (real)0);
            real dd = ddt[j] + ddtu[j] * ut[j];
            if (softplus) {
                real x = XR[t * HM_W + j];
                dd = x > (real)20 ? dd : dd * HM_SIGMOID(x);
            }
            dX[t * HM_W + j] = dd;
            dbr[j] += dd;
        }
    }
}

/* dst (L N) += sum over the HM_W lanes of src (L N, HM_W) */
HM_INLINE void HM_FN(reduce_lanes)(real *dst, const real *src, int64_t LN) {
    for (int64_t i = 0; i < LN; i++) {
        real s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < HM_W; j++) s += src[i * HM_W + j];
        dst[i] += s;
    }
}

/* The kernels with N a compile-time constant for common state sizes (states stay in registers). */
#define HM_DISPATCH_N(CALL)                              \
    switch (N) {                                         \
    case 4: { const int64_t NN = 4; CALL; break; }   \
    case 8: { const int64_t NN = 8; CALL; break; }   \
    case 16: { const int64_t NN = 16; CALL; break; } \
    default: { const int64_t NN = N; CALL; break; }  \
    }

/* Whether channels d0 .. d0 + HM_W - 1 exist and read one B group and one C group. */
static int HM_FN(tile_ok)(int64_t d0, int64_t dim, int64_t dg, int64_t dgc) {
    int64_t d1 = d0 + HM_W - 1;
    return d1 < dim && d0 / dg == d1 / dg && d0 / dgc == d1 / dgc;
}

/* Forward. Returns 0; 1 when a work buffer could not be allocated; 2 when an input or output holds NaN or
 * Inf (the outputs are written all the same). A non-finite u, z, B, C, D or h0 always reaches out or last;
 * delta + delta_bias and A are checked themselves, since -Inf there can give finite outputs. The caller
 * names the input (hmrmamba.ssm.scan.validate_scan_inputs). See the top of the file for shapes; h0, D, z,
 * delta_bias and last may be NULL. */
int HM_FN(hm_scan_fwd)(const real *u, const real *delta, const real *A, const real *B, const real *C,
                       const real *D, const real *z, const real *delta_bias, const real *h0,
                       real *out, real *last, int64_t batch, int64_t dim, int64_t L, int64_t N,
                       int64_t G, int64_t Gc, int softplus, int channels_last, int nthreads) {
    const int64_t dg = dim / G, dgc = dim / Gc, st = HM_TS;
    const int64_t per_b = (dim + HM_W - 1) / HM_W, units = batch * per_b;
    int failed = 0;
    int nonfinite = HM_FN(nonfinite)(A, dim * N, 1) || (delta_bias && HM_FN(nonfinite)(delta_bias, dim, 1));
    (void)nthreads;
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1)
    {
        int bad = 0;
        real *work = (real *)malloc(sizeof(real) * (size_t)(4 * L * HM_W + 2 * N * HM_W));
        if (!work) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t k = 0; k < units; k++) {
            if (!work) continue;
            const int64_t b = k / per_b, d0 = (k % per_b) * HM_W;
            if (HM_FN(tile_ok)(d0, dim, dg, dgc)) {
                const int64_t r0 = b * dim + d0;
                real *U = work, *XR = U + L * HM_W, *X = XR + L * HM_W, *Z = X + L * HM_W;
                real *AT = Z + L * HM_W, *h = AT + N * HM_W, *Y = XR; /* XR is free after tile_inputs */
                const int64_t o0 = HM_OFF(b, d0);
                HM_FN(tile_inputs)(u, delta, A, z, delta_bias, softplus, o0, st, d0, L, N, U, XR, X, Z, AT);
                bad |= HM_FN(nonfinite)(XR, L * HM_W, 1);
                for (int64_t n = 0; n < N; n++)
                    for (int64_t j = 0; j < HM_W; j++) h[n * HM_W + j] = h0 ? h0[(r0 + j) * N + n] : (real)0;
                const real *Bp = B + ((b * G + d0 / dg) * L) * N, *Cp = C + ((b * Gc + d0 / dgc) * L) * N;
                HM_DISPATCH_N(HM_FN(fwd_tile)(U, X, AT, Bp, Cp, D ? D + d0 : NULL, z ? Z : NULL, h, Y, NULL,
                                              NULL, NULL, 0, L, NN))
                bad |= HM_FN(nonfinite)(Y, L * HM_W, 1) | HM_FN(nonfinite)(h, N * HM_W, 1);
                HM_FN(scatter)(out + o0, Y, L, st);
                if (last)
                    for (int64_t n = 0; n < N; n++)
                        for (int64_t j = 0; j < HM_W; j++) last[(r0 + j) * N + n] = h[n * HM_W + j];
            } else {
                const int64_t d1 = d0 + HM_W < dim ? d0 + HM_W : dim;
                for (int64_t d = d0; d < d1; d++) {
                    const int64_t r = b * dim + d, o = HM_OFF(b, d);
                    const real *Bp = B + ((b * G + d / dg) * L) * N, *Cp = C + ((b * Gc + d / dgc) * L) * N;
                    HM_DISPATCH_N(HM_FN(fwd_row)(u + o, delta + o, A + d * N, Bp, Cp, D ? D + d : NULL,
                                                 z ? z + o : NULL, delta_bias ? delta_bias + d : NULL,
                                                 softplus, h0 ? h0 + r * N : NULL, out + o,
                                                 last ? last + r * N : NULL, L, NN, NULL, NULL, NULL, NULL, st))
                    bad |= HM_FN(nonfinite)(delta + o, L, st) | HM_FN(nonfinite)(out + o, L, st)
                           | (last ? HM_FN(nonfinite)(last + r * N, N, 1) : 0);
                }
            }
        }
        free(work);
        if (bad) {
#pragma omp atomic write
            nonfinite = 1;
        }
    }
    return failed ? 1 : (nonfinite ? 2 : 0);
}

/* Backward. gout (batch, dim, L) (or (batch, L, dim), like u) and glast (batch, dim, N) may be NULL (zero). Writes du, ddelta
 * (gradient of the raw delta), dA, dB, dC and, where not NULL, dD, dz, ddelta_bias, dh0.
 * Returns 0, or 1 when a work buffer could not be allocated. */
int HM_FN(hm_scan_bwd)(const real *u, const real *delta, const real *A, const real *B, const real *C,
                       const real *D, const real *z, const real *delta_bias, const real *h0,
                       const real *gout, const real *glast, real *du, real *ddelta, real *dA, real *dB,
                       real *dC, real *dD, real *dz, real *ddelta_bias, real *dh0, int64_t batch,
                       int64_t dim, int64_t L, int64_t N, int64_t G, int64_t Gc, int softplus,
                       int channels_last, int nthreads) {
    const int64_t st = HM_TS;
    const int64_t dg = dim / G, dgc = dim / Gc, LW = L * HM_W, LNW = L * N * HM_W, NW = N * HM_W;
    double *acc = (double *)calloc((size_t)(dim * (N + 2)), sizeof(double)); /* dA | dD | dbias */
    if (!acc) return 1;
    int failed = 0;
    (void)nthreads;
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1)
    {
        real *work = (real *)malloc(sizeof(real) * (size_t)(9 * LW + 4 * LNW + 4 * NW + 2 * HM_W));
        double *tacc = (double *)calloc((size_t)(dim * (N + 2)), sizeof(double));
        int ok = work && tacc;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        real *U = work, *XR = U + LW, *X = XR + LW, *Z = X + LW, *GO = Z + LW, *Ypre = GO + LW;
        real *dU = Ypre + LW, *dX = dU + LW, *dZ = dX + LW;
        real *Hs = dZ + LW, *Es = Hs + LNW, *dBL = Es + LNW, *dCL = dBL + LNW;
        real *AT = dCL + LNW, *g = AT + NW, *h0T = g + NW, *dAr = h0T + NW, *dDr = dAr + NW, *dbr = dDr + HM_W;
        /* the row kernels' buffers (2 L N + 2 L values) reuse Hs */
        real *rHs = Hs, *rEs = Hs + L * N, *rdts = Hs + 2 * L * N, *rypre = rdts + L;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < batch; b++) {
            if (!ok) continue;
            real *dBb = dB + b * G * L * N, *dCb = dC + b * Gc * L * N;
            memset(dBb, 0, sizeof(real) * (size_t)(G * L * N));
            memset(dCb, 0, sizeof(real) * (size_t)(Gc * L * N));
            int64_t curB = -1, curC = -1; /* groups whose lane sums dBL, dCL hold */
            for (int64_t d0 = 0; d0 < dim; d0 += HM_W) {
                const int64_t r0 = b * dim + d0;
                if (HM_FN(tile_ok)(d0, dim, dg, dgc)) {
                    const int64_t gb = d0 / dg, gc = d0 / dgc;
                    if (gb != curB) {
                        if (curB >= 0) HM_FN(reduce_lanes)(dBb + curB * L * N, dBL, L * N);
                        memset(dBL, 0, sizeof(real) * (size_t)LNW);
                        curB = gb;
                    }
                    if (gc != curC) {
                        if (curC >= 0) HM_FN(reduce_lanes)(dCb + curC * L * N, dCL, L * N);
                        memset(dCL, 0, sizeof(real) * (size_t)LNW);
                        curC = gc;
                    }
                    const int64_t o0 = HM_OFF(b, d0);
                    HM_FN(tile_inputs)(u, delta, A, z, delta_bias, softplus, o0, st, d0, L, N, U, XR, X, Z, AT);
                    if (gout) HM_FN(gather)(GO, gout + o0, L, st);
                    for (int64_t n = 0; n < N; n++)
                        for (int64_t j = 0; j < HM_W; j++) {
                            g[n * HM_W + j] = h0 ? h0[(r0 + j) * N + n] : (real)0; /* initial state */
                            dAr[n * HM_W + j] = 0;
                        }
                    memcpy(h0T, g, sizeof(real) * (size_t)NW);
                    for (int64_t j = 0; j < HM_W; j++) dDr[j] = dbr[j] = 0;
                    const real *Bp = B + ((b * G + gb) * L) * N, *Cp = C + ((b * Gc + gc) * L) * N;
                    const real *Dv = D ? D + d0 : NULL, *Zt = z ? Z : NULL;
                    HM_DISPATCH_N(
                        HM_FN(fwd_tile)(U, X, AT, Bp, Cp, Dv, Zt, g, dU, Hs, Es, Ypre, 1, L, NN);
                        for (int64_t n = 0; n < NN; n++)
                            for (int64_t j = 0; j < HM_W; j++)
                                g[n * HM_W + j] = glast ? glast[(r0 + j) * N + n] : (real)0;
                        HM_FN(bwd_tile)(U, XR, X, AT, Bp, Cp, Dv, Zt, h0 ? h0T : NULL, gout ? GO : NULL, g, Hs,
                                        Es, Ypre, softplus, dU, dX, dZ, dBL, dCL, dAr, dDr, dbr, L, NN))
                    HM_FN(scatter)(du + o0, dU, L, st);
                    HM_FN(scatter)(ddelta + o0, dX, L, st);
                    if (dz) HM_FN(scatter)(dz + o0, dZ, L, st);
                    for (int64_t j = 0; j < HM_W; j++) {
                        const int64_t d = d0 + j;
                        for (int64_t n = 0; n < N; n++) {
                            tacc[d * N + n] += (double)dAr[n * HM_W + j];
                            if (dh0) dh0[(r0 + j) * N + n] = g[n * HM_W + j];
                        }
                        tacc[dim * N + d] += (double)dDr[j];
                        tacc[dim * (N + 1) + d] += (double)dbr[j];
                    }
                } else {
                    const int64_t d1 = d0 + HM_W < dim ? d0 + HM_W : dim;
                    for (int64_t d = d0; d < d1; d++) {
                        const int64_t r = b * dim + d, o = HM_OFF(b, d);
                        const real *Bp = B + ((b * G + d / dg) * L) * N;
                        const real *Cp = C + ((b * Gc + d / dgc) * L) * N;
                        const real *Dp = D ? D + d : NULL, *zr = z ? z + o : NULL;
                        const real *bp = delta_bias ? delta_bias + d : NULL, *h0r = h0 ? h0 + r * N : NULL;
                        HM_DISPATCH_N(
                            HM_FN(fwd_row)(u + o, delta + o, A + d * N, Bp, Cp, Dp, zr, bp, softplus, h0r,
                                           NULL, NULL, L, NN, rHs, rEs, rdts, rypre, st);
                            HM_FN(bwd_row)(u + o, delta + o, A + d * N, Bp, Cp, Dp, zr, bp, softplus, h0r,
                                           gout ? gout + o : NULL, glast ? glast + r * N : NULL, L, NN, rHs,
                                           rEs, rdts, rypre, du + o, ddelta + o, dz ? dz + o : NULL,
                                           dBb + (d / dg) * L * N, dCb + (d / dgc) * L * N, tacc + d * N,
                                           tacc + dim * N + d, tacc + dim * (N + 1) + d, dh0 ? dh0 + r * N : NULL, st))
                    }
                }
            }
            if (curB >= 0) HM_FN(reduce_lanes)(dBb + curB * L * N, dBL, L * N);
            if (curC >= 0) HM_FN(reduce_lanes)(dCb + curC * L * N, dCL, L * N);
        }
        if (tacc) {
#pragma omp critical
            for (int64_t i = 0; i < dim * (N + 2); i++) acc[i] += tacc[i];
        }
        free(work);
        free(tacc);
    }
    if (!failed) {
        for (int64_t i = 0; i < dim * N; i++) dA[i] = (real)acc[i];
        if (dD)
            for (int64_t d = 0; d < dim; d++) dD[d] = (real)acc[dim * N + d];
        if (ddelta_bias)
            for (int64_t d = 0; d < dim; d++) ddelta_bias[d] = (real)acc[dim * (N + 1) + d];
    }
    free(acc);
    return failed;
}

#undef real
#endif
