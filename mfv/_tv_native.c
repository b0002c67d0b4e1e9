/* One split-Bregman TV sweep in scikit-image's Gauss-Seidel order, vectorised across lanes.
 *
 * Every array is laid out (G, H + 2, W + 2, L): G groups of L independent lanes (one lane is one
 * channel of one image), a ghost ring around each H x W plane. The image itself is (G, H, W, L).
 * Pixels are visited in raster order as scikit-image does; the L lanes of a pixel are independent,
 * so the innermost loop is plain SIMD. Each lane's arithmetic is scikit-image's expression,
 * operand by operand: build with -ffp-contract=off so that no multiply-add is fused, and the
 * float64 result is scikit-image's to the last bit.
 *
 * tv_sweep_<T>(u, dx, dy, bx, by, f, weight, lam, norm, live, iso, g0, g1, H, W, L, ss) runs groups
 * g0..g1-1 (L <= 64 lanes each) and adds each lane's sum of squared changes to ss (float64, G * L).
 * Lanes whose `live` is 0 keep their values: images that have converged wait for the others.
 */
#include <math.h>
#include <stddef.h>
#if defined(__SSE__)
#include <xmmintrin.h>
/* Converged smooth regions drive d and b into subnormal numbers, which cost x86 ~100x per
 * operation. Flushing them to zero changes values below 1e-38 (float32) or 1e-308 (float64) only. */
#define FTZ_ON unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_OFF _mm_setcsr(csr_);
#else
#define FTZ_ON
#define FTZ_OFF
#endif

/* float64 follows scikit-image operation by operation (bit-identical results). float32, MFV's
 * default, trades that for speed: fewer divisions and a shorter dependency chain (below), each a
 * change of rounding only (measured on denoised 0..255 photographs: ~3e-4 grey levels from
 * scikit-image in float64, the same as an operation-by-operation float32 replay). */
#define SHRINK_double                                                                             \
    const double dxx = s * la * tx / (s * la + 1);                                                \
    const double dyy = s * la * ty / (s * la + 1);
#define SHRINK_float                                                                              \
    const float q_ = s * la / (s * la + 1);                                                       \
    const float dxx = q_ * tx;                                                                    \
    const float dyy = q_ * ty;
/* The u update. Along a row each pixel waits for its left neighbour's new u, so the latency of
 * that chain sets the pace. float64 adds in scikit-image's order (the neighbour is 4th of 12
 * terms); float32 adds the neighbour last and multiplies by 1 / norm (the caller passes it), which
 * shortens the chain about threefold. */
#define UNEW_double                                                                               \
    (la * (up[k + row] + up[k - row] + up[k + px] + up[k - px]                                    \
           + dxp[k - px] - dxp[k] + dyp[k - row] - dyp[k]                                         \
           - bxp[k - px] + bxp[k] - byp[k - row] + byp[k])                                        \
     + wg[k] * fp[k]) / ng[k]
#define UNEW_float                                                                                \
    (la * ((up[k + row] + up[k - row] + up[k + px]                                                \
            + dxp[k - px] - dxp[k] + dyp[k - row] - dyp[k]                                        \
            - bxp[k - px] + bxp[k] - byp[k - row] + byp[k]) + up[k - px])                         \
     + wg[k] * fp[k]) * ng[k]

/* libm sqrt of a float, rounded back, is sqrtf: both are correctly rounded. */
#define SQRT_float sqrtf
#define SQRT_double sqrt

#define DEFINE_SWEEP(T)                                                                           \
void tv_sweep_##T(T *restrict u, T *restrict dx, T *restrict dy, T *restrict bx, T *restrict by,  \
                  const T *restrict f, const T *restrict weight, const T *restrict lam,           \
                  const T *restrict norm, const T *restrict live, int iso, long g0, long g1, long H, long W, long L,      \
                  double *restrict ss)                                                            \
{                                                                                                 \
    const long px = L, row = (W + 2) * L, plane = (H + 2) * row, fplane = H * W * L;              \
    double acc[64];                                                                               \
    FTZ_ON                                                                                        \
    for (long g = g0; g < g1; ++g) {                                                              \
        T *ug = u + g * plane, *dxg = dx + g * plane, *dyg = dy + g * plane;                      \
        T *bxg = bx + g * plane, *byg = by + g * plane;                                           \
        const T *fg = f + g * fplane, *wg = weight + g * L, *lg = lam + g * L, *ng = norm + g * L;  \
        const T *lv = live + g * L;                                                               \
        for (long k = 0; k < L; ++k) acc[k] = 0.0;                                                \
        for (long r = 1; r <= H; ++r) {                                                           \
            for (long c = 1; c <= W; ++c) {                                                       \
                const long o = r * row + c * px;                                                  \
                T *up = ug + o, *dxp = dxg + o, *dyp = dyg + o, *bxp = bxg + o, *byp = byg + o;  \
                const T *fp = fg + ((r - 1) * W + (c - 1)) * L;                                   \
                if (iso) {                                                                        \
                    _Pragma("omp simd")                                                           \
                    for (long k = 0; k < L; ++k) {                                                \
                        UPDATE_U(T)                                                               \
                        const T tx = ux + bxx, ty = uy + byy;                                     \
                        const T s = SQRT_##T(tx * tx + ty * ty);                                  \
                        SHRINK_##T                                                                \
                        STORE_DB                                                                  \
                    }                                                                             \
                } else {                                                                          \
                    _Pragma("omp simd")                                                           \
                    for (long k = 0; k < L; ++k) {                                                \
                        UPDATE_U(T)                                                               \
                        const T inv = 1 / la;                                                     \
                        const T sx = ux + bxx, sy = uy + byy;                                     \
                        const T dxx = sx > inv ? sx - inv : (sx < -inv ? sx + inv : 0);           \
                        const T dyy = sy > inv ? sy - inv : (sy < -inv ? sy + inv : 0);           \
                        STORE_DB                                                                  \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (long k = 0; k < L; ++k) ss[g * L + k] += acc[k];                                     \
    }                                                                                             \
    FTZ_OFF                                                                                       \
}

/* scikit-image's u update, operand by operand; also the forward differences from the old u. */
#define UPDATE_U(T)                                                                               \
    const T la = lg[k];                                                                           \
    const T uprev = up[k];                                                                        \
    const T ux = up[k + px] - uprev;                                                              \
    const T uy = up[k + row] - uprev;                                                             \
    const T unew = UNEW_##T;                                                                      \
    const T on = lv[k];                                                                           \
    up[k] = on != 0 ? unew : uprev;                                                               \
    const T t = unew - uprev; /* stale on lanes that are not live; callers ignore those */          \
    acc[k] += (double)t * (double)t;                                                              \
    const T bxx = bxp[k], byy = byp[k], dxo = dxp[k], dyo = dyp[k];

#define STORE_DB                                                                                  \
    dxp[k] = on != 0 ? dxx : dxo;                                                                 \
    dyp[k] = on != 0 ? dyy : dyo;                                                                 \
    bxp[k] = on != 0 ? bxx + (ux - dxx) : bxx;                                                    \
    byp[k] = on != 0 ? byy + (uy - dyy) : byy;

DEFINE_SWEEP(float)
DEFINE_SWEEP(double)
