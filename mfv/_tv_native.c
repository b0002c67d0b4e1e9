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
#include <pthread.h>
#include <stddef.h>
#include <string.h>
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

/* The whole denoising of a batch. Lanes come in and go out as (n, H, W) planes (image i's channels
 * are lanes i*C .. i*C + C - 1; lane j lives in group j / L at position j % L of the workspace
 * arrays u, dx, dy, bx, by (groups, H + 2, W + 2, L) and fp (groups, H, W, L)). Each thread owns
 * the groups g = t, t + nthreads, ...: it loads them (zero d and b, the image, the fixed ghost
 * cells: top/left reflect, bottom/right replicate, or reflect with border013 as scikit-image 0.13
 * did), sweeps them, and writes their lanes out. Between sweeps thread 0 applies the stopping
 * tests (sum of an image's lanes' squared changes <= thresh; with per_image == 0 the batch's mean
 * over images; or max_iter reached): a stopped image's lanes are frozen through `live` and its
 * sweep count is final. */
#define DEFINE_DENOISE(T)                                                                         \
typedef struct {                                                                                  \
    T *u, *dx, *dy, *bx, *by, *fp, *live, *out;                                                   \
    const T *f, *weight, *lam, *norm;                                                             \
    int iso, nthreads, stop_all, border013;                                                       \
    long groups, H, W, L, n;                                                                      \
    double *ss;                                                                                   \
    unsigned char *active;                                                                        \
    pthread_barrier_t *bar;                                                                       \
} tv_job_##T;                                                                                     \
                                                                                                  \
static void tv_load_##T(tv_job_##T *j, int t)                                                     \
{                                                                                                 \
    const long H = j->H, W = j->W, L = j->L, W2 = W + 2, plane = (H + 2) * W2 * L;                \
    const long lr = j->border013 ? H - 1 : H, lc = j->border013 ? W - 1 : W;                      \
    for (long g = t; g < j->groups; g += j->nthreads) {                                           \
        T *ug = j->u + g * plane, *fg = j->fp + g * H * W * L;                                    \
        memset(j->dx + g * plane, 0, sizeof(T) * plane);                                          \
        memset(j->dy + g * plane, 0, sizeof(T) * plane);                                          \
        memset(j->bx + g * plane, 0, sizeof(T) * plane);                                          \
        memset(j->by + g * plane, 0, sizeof(T) * plane);                                          \
        const T *src[64];                                                                         \
        for (long k = 0; k < L; ++k) src[k] = g * L + k < j->n ? j->f + (g * L + k) * H * W : NULL; \
        /* Pixel-major: the writes are whole pixels of L lanes, the reads L sequential streams. */ \
        for (long y = 0; y < H; ++y)                                                              \
            for (long x = 0; x < W; ++x) {                                                        \
                T *fq = fg + (y * W + x) * L, *uq = ug + ((y + 1) * W2 + x + 1) * L;              \
                for (long k = 0; k < L; ++k) {                                                    \
                    const T v = src[k] ? src[k][y * W + x] : 0;                                   \
                    fq[k] = v;                                                                    \
                    uq[k] = v;                                                                    \
                }                                                                                 \
            }                                                                                     \
        for (long k = 0; k < L; ++k) {                                                            \
            ug[k] = ug[(W + 1) * L + k] = 0; /* corners: never read */                            \
            ug[((H + 1) * W2) * L + k] = ug[((H + 1) * W2 + W + 1) * L + k] = 0;                  \
            for (long x = 1; x <= W; ++x) {                                                       \
                ug[x * L + k] = ug[(2 * W2 + x) * L + k];                                         \
                ug[((H + 1) * W2 + x) * L + k] = ug[(lr * W2 + x) * L + k];                       \
            }                                                                                     \
            for (long y = 1; y <= H; ++y) {                                                       \
                ug[(y * W2) * L + k] = ug[(y * W2 + 2) * L + k];                                  \
                ug[(y * W2 + W + 1) * L + k] = ug[(y * W2 + lc) * L + k];                         \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void tv_store_##T(tv_job_##T *j, int t)                                                    \
{                                                                                                 \
    const long H = j->H, W = j->W, L = j->L, W2 = W + 2, plane = (H + 2) * W2 * L;                \
    for (long g = t; g < j->groups; g += j->nthreads) {                                           \
        const T *ug = j->u + g * plane;                                                           \
        const long cnt = j->n - g * L < L ? j->n - g * L : L;                                     \
        T *dst[64];                                                                               \
        for (long k = 0; k < cnt; ++k) dst[k] = j->out + (g * L + k) * H * W;                     \
        for (long y = 0; y < H; ++y)                                                              \
            for (long x = 0; x < W; ++x) {                                                        \
                const T *uq = ug + ((y + 1) * W2 + x + 1) * L;                                    \
                for (long k = 0; k < cnt; ++k) dst[k][y * W + x] = uq[k];                         \
            }                                                                                     \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void tv_share_##T(tv_job_##T *j, int t)                                                    \
{                                                                                                 \
    for (long g = t; g < j->groups; g += j->nthreads) {                                           \
        for (long k = 0; k < j->L; ++k) j->ss[g * j->L + k] = 0.0;                                \
        if (j->active[g])                                                                         \
            tv_sweep_##T(j->u, j->dx, j->dy, j->bx, j->by, j->fp, j->weight, j->lam, j->norm,     \
                         j->live, j->iso, g, g + 1, j->H, j->W, j->L, j->ss);                     \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void *tv_worker_##T(void *arg)                                                             \
{                                                                                                 \
    tv_job_##T *j = ((tv_job_##T **)arg)[0];                                                      \
    const int t = (int)(long)((void **)arg)[1];                                                   \
    tv_load_##T(j, t);                                                                            \
    for (;;) {                                                                                    \
        pthread_barrier_wait(j->bar);                                                             \
        if (j->stop_all) break;                                                                   \
        tv_share_##T(j, t);                                                                       \
        pthread_barrier_wait(j->bar);                                                             \
    }                                                                                             \
    tv_store_##T(j, t);                                                                           \
    return NULL;                                                                                  \
}                                                                                                 \
                                                                                                  \
void tv_denoise_##T(const T *f, T *out, T *u, T *dx, T *dy, T *bx, T *by, T *fp, const T *weight, \
                    const T *lam, const T *norm, T *live, int iso, int border013, long n,         \
                    long groups, long H, long W, long L, long C, long max_iter, double thresh,    \
                    int per_image, int nthreads, long *count)                                     \
{                                                                                                 \
    const long nimg = n / C;                                                                      \
    double ss[groups * L];                                                                        \
    unsigned char active[groups], running[nimg];                                                  \
    pthread_barrier_t bar;                                                                        \
    pthread_t tid[nthreads > 1 ? nthreads - 1 : 1];                                               \
    void *args[nthreads > 1 ? nthreads - 1 : 1][2];                                               \
    tv_job_##T job = {u, dx, dy, bx, by, fp, live, out, f, weight, lam, norm, iso, nthreads, 0,   \
                      border013, groups, H, W, L, n, ss, active, &bar};                           \
    tv_job_##T *jp = &job;                                                                        \
    long left = nimg;                                                                             \
    for (long g = 0; g < groups; ++g) active[g] = 1;                                              \
    for (long i = 0; i < nimg; ++i) { running[i] = 1; count[i] = 0; }                            \
    if (nthreads > 1) {                                                                           \
        pthread_barrier_init(&bar, NULL, (unsigned)nthreads);                                     \
        for (int t = 1; t < nthreads; ++t) {                                                      \
            args[t - 1][0] = jp;                                                                  \
            args[t - 1][1] = (void *)(long)t;                                                     \
            pthread_create(&tid[t - 1], NULL, tv_worker_##T, args[t - 1]);                        \
        }                                                                                         \
    }                                                                                             \
    tv_load_##T(&job, 0);                                                                         \
    for (long it = 1; it <= max_iter && left > 0; ++it) {                                         \
        if (nthreads > 1) pthread_barrier_wait(&bar);                                             \
        tv_share_##T(&job, 0);                                                                    \
        if (nthreads > 1) pthread_barrier_wait(&bar);                                             \
        double total = 0.0;                                                                       \
        if (!per_image) {                                                                         \
            for (long q = 0; q < n; ++q) total += ss[q];                                          \
            total /= (double)nimg;                                                                \
        }                                                                                         \
        for (long i = 0; i < nimg; ++i) {                                                         \
            if (!running[i]) continue;                                                            \
            ++count[i];                                                                           \
            double sum = total;                                                                   \
            if (per_image) {                                                                      \
                sum = 0.0;                                                                        \
                for (long c = 0; c < C; ++c) sum += ss[i * C + c];                                \
            }                                                                                     \
            if (!(sum <= thresh) && it < max_iter) continue;                                      \
            running[i] = 0;                                                                       \
            --left;                                                                               \
            for (long c = 0; c < C; ++c) live[i * C + c] = 0;                                     \
        }                                                                                         \
        for (long g = 0; g < groups; ++g) {                                                       \
            active[g] = 0;                                                                        \
            for (long k = 0; k < L; ++k) active[g] |= live[g * L + k] != 0;                       \
        }                                                                                         \
    }                                                                                             \
    if (nthreads > 1) {                                                                           \
        job.stop_all = 1;                                                                         \
        pthread_barrier_wait(&bar);                                                               \
    }                                                                                             \
    tv_store_##T(&job, 0);                                                                        \
    if (nthreads > 1) {                                                                           \
        for (int t = 1; t < nthreads; ++t) pthread_join(tid[t - 1], NULL);                        \
        pthread_barrier_destroy(&bar);                                                            \
    }                                                                                             \
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
DEFINE_DENOISE(float)
DEFINE_DENOISE(double)
