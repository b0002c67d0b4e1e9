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
 * g0..g1-1 (L <= 64 lanes each, a multiple of tv_vector_lanes_<T>()) and adds each lane's sum of
 * squared changes to ss (float64, G * L). Lanes whose `live` is 0 keep their values: images that
 * have converged wait for the others.
 *
 * The lanes are processed as explicit vectors (GCC/Clang vector extensions) of the widest size the
 * build's instruction set has: 64 bytes with AVX-512, 32 with AVX/AVX2, 16 otherwise. Written as a
 * plain loop over lanes, GCC 12 vectorised it with a remainder loop, the per-lane sums in memory
 * and pointers spilled to the stack, about 2x slower on AMD Zen 4 (both with AVX-512 and AVX2).
 * Vector arithmetic is IEEE per lane, so each lane's results are those of the scalar expression.
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

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
typedef float vec_float __attribute__((vector_size(VBYTES)));
typedef double vec_double __attribute__((vector_size(VBYTES)));
typedef int mask_float __attribute__((vector_size(VBYTES)));
typedef long long mask_double __attribute__((vector_size(VBYTES)));
/* Per-lane sums of squared changes are float64 whatever T is: twice as many bytes for float. */
typedef double acc_float __attribute__((vector_size(2 * VBYTES)));
typedef double acc_double __attribute__((vector_size(VBYTES)));
#define VW_float ((long)(VBYTES / sizeof(float)))
#define VW_double ((long)(VBYTES / sizeof(double)))

int tv_vector_lanes_float(void) { return (int)VW_float; }
int tv_vector_lanes_double(void) { return (int)VW_double; }

/* Unaligned loads and stores (memcpy compiles to one vector move). */
#define DEFINE_VEC_HELPERS(T)                                                                     \
static inline vec_##T ld_##T(const T *p) { vec_##T v; memcpy(&v, p, sizeof v); return v; }        \
static inline void st_##T(T *p, vec_##T v) { memcpy(p, &v, sizeof v); }                          \
static inline vec_##T sel_##T(mask_##T m, vec_##T a, vec_##T b)                                   \
{                                                                                                 \
    return (vec_##T)(((mask_##T)a & m) | ((mask_##T)b & ~m));                                     \
}
DEFINE_VEC_HELPERS(float)
DEFINE_VEC_HELPERS(double)

/* Correctly rounded square roots, one instruction where the ISA has it. */
static inline vec_float vsqrt_float(vec_float x)
{
#if defined(__AVX512F__)
    return (vec_float)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
    return (vec_float)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
    return (vec_float)_mm_sqrt_ps((__m128)x);
#else
    for (long i = 0; i < VW_float; ++i) x[i] = sqrtf(x[i]);
    return x;
#endif
}
static inline vec_double vsqrt_double(vec_double x)
{
#if defined(__AVX512F__)
    return (vec_double)_mm512_sqrt_pd((__m512d)x);
#elif defined(__AVX__)
    return (vec_double)_mm256_sqrt_pd((__m256d)x);
#elif defined(__SSE2__)
    return (vec_double)_mm_sqrt_pd((__m128d)x);
#else
    for (long i = 0; i < VW_double; ++i) x[i] = sqrt(x[i]);
    return x;
#endif
}

#define SQUARES_float(t) ({ acc_float t64_ = __builtin_convertvector(t, acc_float); t64_ * t64_; })
#define SQUARES_double(t) ((t) * (t))

/* One vector of lanes at one pixel: scikit-image's u update operand by operand (float64), the
 * forward differences from the old u, the shrinkage, and the new d and b. */
#define PIXEL(T, ISO)                                                                             \
    {                                                                                             \
        const vec_##T la = lv_la[v], ng = lv_ng[v], wf = lv_w[v] * ld_##T(fp + v * VW_##T);       \
        const mask_##T on = lv_on[v];                                                             \
        T *const up = ug + o + v * VW_##T, *const dxp = dxg + o + v * VW_##T;                     \
        T *const dyp = dyg + o + v * VW_##T, *const bxp = bxg + o + v * VW_##T;                   \
        T *const byp = byg + o + v * VW_##T;                                                      \
        const vec_##T uprev = ld_##T(up), ur = ld_##T(up + px), ud = ld_##T(up + row);            \
        const vec_##T ux = ur - uprev, uy = ud - uprev;                                           \
        const vec_##T dxo = ld_##T(dxp), dyo = ld_##T(dyp), bxx = ld_##T(bxp), byy = ld_##T(byp); \
        const vec_##T unew = UNEW_##T;                                                            \
        st_##T(up, sel_##T(on, unew, uprev));                                                     \
        const vec_##T t = unew - uprev; /* stale on lanes that are not live; callers ignore those */ \
        acc[v] += SQUARES_##T(t);                                                                 \
        vec_##T dxx, dyy;                                                                         \
        if (ISO) {                                                                                \
            const vec_##T tx = ux + bxx, ty = uy + byy;                                           \
            const vec_##T s = vsqrt_##T(tx * tx + ty * ty);                                       \
            SHRINK_##T                                                                            \
        } else {                                                                                  \
            const vec_##T inv = 1 / la, zero = inv - inv;                                         \
            const vec_##T sx = ux + bxx, sy = uy + byy;                                           \
            dxx = sel_##T(sx > inv, sx - inv, sel_##T(sx < -inv, sx + inv, zero));                \
            dyy = sel_##T(sy > inv, sy - inv, sel_##T(sy < -inv, sy + inv, zero));                \
        }                                                                                         \
        st_##T(dxp, sel_##T(on, dxx, dxo));                                                       \
        st_##T(dyp, sel_##T(on, dyy, dyo));                                                       \
        st_##T(bxp, sel_##T(on, bxx + (ux - dxx), bxx));                                          \
        st_##T(byp, sel_##T(on, byy + (uy - dyy), byy));                                          \
    }

/* The u update. Along a row each pixel waits for its left neighbour's new u, so the latency of
 * that chain sets the pace. float64 adds in scikit-image's order (the neighbour is 4th of 12
 * terms); float32 adds the neighbour last and multiplies by 1 / norm (the caller passes it), which
 * shortens the chain about threefold. */
#define UNEW_double                                                                               \
    (la * (ud + ld_double(up - row) + ur + ld_double(up - px)                                     \
           + ld_double(dxp - px) - dxo + ld_double(dyp - row) - dyo                               \
           - ld_double(bxp - px) + bxx - ld_double(byp - row) + byy)                              \
     + wf) / ng
#define UNEW_float                                                                                \
    (la * ((ud + ld_float(up - row) + ur                                                          \
            + ld_float(dxp - px) - dxo + ld_float(dyp - row) - dyo                                \
            - ld_float(bxp - px) + bxx - ld_float(byp - row) + byy) + ld_float(up - px))          \
     + wf) * ng

/* float64 follows scikit-image operation by operation (bit-identical results). float32, MFV's
 * default, trades that for speed: fewer divisions and a shorter dependency chain (above), each a
 * change of rounding only (measured on denoised 0..255 photographs: ~3e-4 grey levels from
 * scikit-image in float64, the same as an operation-by-operation float32 replay). */
#define SHRINK_double                                                                             \
    dxx = s * la * tx / (s * la + 1);                                                             \
    dyy = s * la * ty / (s * la + 1);
#define SHRINK_float                                                                              \
    const vec_float q_ = s * la / (s * la + 1);                                                   \
    dxx = q_ * tx;                                                                                \
    dyy = q_ * ty;

#define MAXV_float (64 / VW_float)
#define MAXV_double (64 / VW_double)

#define DEFINE_SWEEP(T)                                                                           \
static void tv_group_##T(T *restrict ug, T *restrict dxg, T *restrict dyg, T *restrict bxg,       \
                         T *restrict byg, const T *restrict fg, const T *restrict wg,             \
                         const T *restrict lg, const T *restrict ngp, const T *restrict lvp,      \
                         int iso, long H, long W, long L, double *restrict ss)                    \
{                                                                                                 \
    const long nv = L / VW_##T, px = L, row = (W + 2) * L;                                        \
    vec_##T lv_la[MAXV_##T], lv_ng[MAXV_##T], lv_w[MAXV_##T];                                     \
    mask_##T lv_on[MAXV_##T];                                                                     \
    acc_##T acc[MAXV_##T];                                                                        \
    for (long v = 0; v < nv; ++v) {                                                               \
        lv_la[v] = ld_##T(lg + v * VW_##T);                                                       \
        lv_ng[v] = ld_##T(ngp + v * VW_##T);                                                      \
        lv_w[v] = ld_##T(wg + v * VW_##T);                                                        \
        lv_on[v] = ld_##T(lvp + v * VW_##T) != 0;                                                 \
        acc[v] = (acc_##T){0};                                                                    \
    }                                                                                             \
    for (long r = 1; r <= H; ++r)                                                                 \
        for (long c = 1; c <= W; ++c) {                                                           \
            const long o = r * row + c * px;                                                      \
            const T *fp = fg + ((r - 1) * W + (c - 1)) * L;                                       \
            if (iso)                                                                              \
                for (long v = 0; v < nv; ++v) PIXEL(T, 1)                                         \
            else                                                                                  \
                for (long v = 0; v < nv; ++v) PIXEL(T, 0)                                         \
        }                                                                                         \
    for (long v = 0; v < nv; ++v)                                                                 \
        for (long i = 0; i < VW_##T; ++i) ss[v * VW_##T + i] += acc[v][i];                        \
}                                                                                                 \
                                                                                                  \
void tv_sweep_##T(T *restrict u, T *restrict dx, T *restrict dy, T *restrict bx, T *restrict by,  \
                  const T *restrict f, const T *restrict weight, const T *restrict lam,           \
                  const T *restrict norm, const T *restrict live, int iso, long g0, long g1,      \
                  long H, long W, long L, double *restrict ss)                                    \
{                                                                                                 \
    const long plane = (H + 2) * (W + 2) * L, fplane = H * W * L;                                 \
    FTZ_ON                                                                                        \
    for (long g = g0; g < g1; ++g)                                                                \
        tv_group_##T(u + g * plane, dx + g * plane, dy + g * plane, bx + g * plane,               \
                     by + g * plane, f + g * fplane, weight + g * L, lam + g * L, norm + g * L,   \
                     live + g * L, iso, H, W, L, ss + g * L);                                     \
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

DEFINE_SWEEP(float)
DEFINE_SWEEP(double)
DEFINE_DENOISE(float)
DEFINE_DENOISE(double)
