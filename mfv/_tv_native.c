/* scikit-image's split-Bregman TV sweeps (Gauss-Seidel, raster order), vectorised across lanes and
 * pipelined two sweeps deep.
 *
 * Layout. Lanes are independent 2-D problems (one lane is one channel of one image). They come in
 * groups of L (a multiple of the vector width, at most 4 vectors); every work array of a group is
 * (H + 2, W + 2, L): a ghost ring around each H x W plane, the L lanes of a pixel contiguous, so
 * the innermost operation is one SIMD vector. Pixels are visited in scikit-image's order; the
 * lanes of a pixel are independent, which is where the parallelism comes from.
 *
 * Two sweeps per pass. A sweep's row r reads rows r - 1 .. r + 1 only, so the next sweep can run
 * two rows behind it in the same pass over memory: row r of sweep s and row r - 2 of sweep s + 1
 * are computed in one loop over columns. That halves the traffic to memory (the arrays of a
 * 227 x 227 batch do not fit in cache; one sweep at a time the kernel waited on memory) and gives
 * the out-of-order core twice as many independent dependency chains. u lives in two buffers
 * (sweep s writes U_s over U_(s-2)) because sweep s + 1 has overwritten most of U_s by the time
 * sweep s's stopping test can run: an image that stops after sweep s is copied out of U_s's
 * buffer then, and its lanes' later results are never read. So no lane is ever masked.
 *
 * Arithmetic, per lane. float64 follows scikit-image operand by operand (build with
 * -ffp-contract=off: nothing fused), so its results are scikit-image's to the last bit. float32,
 * MFV's default, keeps e = d - b in place of d (the u update only ever reads d - b), multiplies by
 * 1 / norm (the caller passes it) and adds the left neighbour last: fewer operations and a shorter
 * chain from one pixel to the next, each a change of rounding only (measured on denoised 0..255
 * photographs: ~3e-4 grey levels from scikit-image in float64, as an operation-by-operation float32
 * replay). Both precompute weight * image. The sums of squared changes are float64 whatever T is;
 * the product of two widened floats is exact, so the fused multiply-add used there where the ISA
 * has one rounds exactly as a multiply and an add: every build gives the same bytes.
 *
 * Vectors are GCC/Clang vector extensions of the widest size the build's instruction set has:
 * 64 bytes with AVX-512, 32 with AVX/AVX2, 16 otherwise.
 */
#include <math.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <stddef.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
/* Converged smooth regions drive d and b into subnormal numbers, which cost x86 ~100x per
 * operation. Flushing them to zero changes values below 1e-38 (float32) or 1e-308 (float64) only. */
#define FTZ_ON unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_OFF _mm_setcsr(csr_);
#else
#define FTZ_ON
#define FTZ_OFF
#endif

/* Threads are OpenMP's: loaded into a process that has torch, the kernel runs on torch's own
 * thread pool (the same libgomp), so its threads do not fight torch's for the cores while those
 * still spin after the network's last parallel region (measured: the TV of an MFV step took 35-37
 * ms with threads of its own, 28-31 ms on torch's). Built without OpenMP it runs on one thread. */
#if defined(_OPENMP)
#define HAVE_THREADS 1
#define THREAD_NUM omp_get_thread_num()
#else
#define HAVE_THREADS 0
#define THREAD_NUM 0
#endif

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef float vec_float __attribute__((vector_size(VBYTES)));
typedef double vec_double __attribute__((vector_size(VBYTES)));
/* Per-lane sums of squared changes are float64 whatever T is: twice as many bytes for float. */
typedef double acc_float __attribute__((vector_size(2 * VBYTES)));
typedef double acc_double __attribute__((vector_size(VBYTES)));
typedef int mask_float __attribute__((vector_size(VBYTES)));
typedef long long mask_double __attribute__((vector_size(VBYTES)));
#define VW_float ((long)(VBYTES / sizeof(float)))
#define VW_double ((long)(VBYTES / sizeof(double)))
#define MAX_NV 4 /* vectors per lane group */
#define PREFETCH_PIXELS 12 /* how far ahead along a row (a prefetch past the row is harmless) */

int tv_vector_lanes_float(void) { return (int)VW_float; }
int tv_vector_lanes_double(void) { return (int)VW_double; }
int tv_max_vectors(void) { return MAX_NV; }
int tv_threaded(void) { return HAVE_THREADS; }

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

/* acc += t * t in float64, t a float vector widened first. The product of two widened floats is
 * exact, so fusing it with the add rounds exactly as a multiply and an add do (every build gives
 * the same bytes); for float64 t it would not, so that type multiplies and adds. acc_float is two
 * native vectors of doubles. */
#if defined(__AVX512F__)
typedef __m512d native_pd;
#define FMADD_PD _mm512_fmadd_pd
#elif defined(__FMA__)
typedef __m256d native_pd;
#define FMADD_PD _mm256_fmadd_pd
#endif
static inline void acc_sq_float(acc_float *acc, vec_float t)
{
    const acc_float w = __builtin_convertvector(t, acc_float);
#if defined(FMADD_PD)
    native_pd a2[2], w2[2];
    memcpy(a2, acc, sizeof a2);
    memcpy(w2, &w, sizeof w2);
    for (int h = 0; h < 2; ++h) a2[h] = FMADD_PD(w2[h], w2[h], a2[h]);
    memcpy(acc, a2, sizeof a2);
#else
    *acc += w * w;
#endif
}
static inline void acc_sq_double(acc_double *acc, vec_double t) { *acc += t * t; }

/* What one row of one sweep needs: its u buffers (src holds the previous sweep, dst receives this
 * one; the upper neighbour is already in dst), the split arrays (p, q: e = d - b for float, d for
 * double; bx, by), weight * image, and the per-vector constants. Pointers are at column 0 of row r. */
#define DEFINE_ROW(T)                                                                             \
typedef struct {                                                                                  \
    const T *src;                                                                                 \
    T *dst, *p, *q, *bx, *by;                                                                     \
    const T *wf;                                                                                  \
} row_##T;                                                                                        \
                                                                                                  \
/* Carried along a row in registers: the new u, p (and bx for float64) of the left neighbour, and \
 * the old u of this pixel (read as the previous pixel's right neighbour). */                     \
typedef struct {                                                                                  \
    vec_##T ul, uc, pl, bl;                                                                       \
} carry_##T;
DEFINE_ROW(float)
DEFINE_ROW(double)

/* One vector of lanes at one pixel (offset o from the row's column 0; the image at fo). */
static inline __attribute__((always_inline)) void pixel_float(
    const int iso, const row_float *w, long o, long fo, long px, long row, vec_float la,
    vec_float ng, carry_float *k, acc_float *acc)
{
    const vec_float uprev = k->uc, ur = ld_float(w->src + o + px), ud = ld_float(w->src + o + row);
    const vec_float exo = ld_float(w->p + o), eyo = ld_float(w->q + o);
    const vec_float bxx = ld_float(w->bx + o), byy = ld_float(w->by + o);
    /* The left neighbour's new u comes last: the chain from pixel to pixel is 2 adds, 2 muls. */
    const vec_float unew = (la * ((ud + ld_float(w->dst + o - row) + ur + k->pl - exo
                                   + ld_float(w->q + o - row) - eyo) + k->ul)
                            + ld_float(w->wf + fo)) * ng;
    st_float(w->dst + o, unew);
    acc_sq_float(acc, unew - uprev);
    const vec_float tx = (ur - uprev) + bxx, ty = (ud - uprev) + byy;
    vec_float dxx, dyy;
    if (iso) {
        const vec_float sl = vsqrt_float(tx * tx + ty * ty) * la;
        const vec_float g = sl / (sl + 1);
        dxx = g * tx;
        dyy = g * ty;
    } else {
        const vec_float inv = 1 / la, zero = inv - inv;
        dxx = sel_float(tx > inv, tx - inv, sel_float(tx < -inv, tx + inv, zero));
        dyy = sel_float(ty > inv, ty - inv, sel_float(ty < -inv, ty + inv, zero));
    }
    const vec_float bxn = tx - dxx, byn = ty - dyy, exn = dxx - bxn;
    st_float(w->p + o, exn);
    st_float(w->q + o, dyy - byn);
    st_float(w->bx + o, bxn);
    st_float(w->by + o, byn);
    k->ul = unew;
    k->uc = ur;
    k->pl = exn;
}

static inline __attribute__((always_inline)) void pixel_double(
    const int iso, const row_double *w, long o, long fo, long px, long row, vec_double la,
    vec_double ng, carry_double *k, acc_double *acc)
{
    const vec_double uprev = k->uc, ur = ld_double(w->src + o + px);
    const vec_double ud = ld_double(w->src + o + row);
    const vec_double ux = ur - uprev, uy = ud - uprev;
    const vec_double dxo = ld_double(w->p + o), dyo = ld_double(w->q + o);
    const vec_double bxx = ld_double(w->bx + o), byy = ld_double(w->by + o);
    /* scikit-image's sum, term by term in its order. */
    const vec_double unew =
        (la * (ud + ld_double(w->dst + o - row) + ur + k->ul + k->pl - dxo
               + ld_double(w->q + o - row) - dyo - k->bl + bxx - ld_double(w->by + o - row) + byy)
         + ld_double(w->wf + fo)) / ng;
    st_double(w->dst + o, unew);
    acc_sq_double(acc, unew - uprev);
    vec_double dxx, dyy;
    if (iso) {
        const vec_double tx = ux + bxx, ty = uy + byy;
        const vec_double s = vsqrt_double(tx * tx + ty * ty);
        dxx = s * la * tx / (s * la + 1);
        dyy = s * la * ty / (s * la + 1);
    } else {
        const vec_double inv = 1 / la, zero = inv - inv;
        const vec_double sx = ux + bxx, sy = uy + byy;
        dxx = sel_double(sx > inv, sx - inv, sel_double(sx < -inv, sx + inv, zero));
        dyy = sel_double(sy > inv, sy - inv, sel_double(sy < -inv, sy + inv, zero));
    }
    const vec_double bxn = bxx + (ux - dxx);
    st_double(w->p + o, dxx);
    st_double(w->q + o, dyy);
    st_double(w->bx + o, bxn);
    st_double(w->by + o, byy + (uy - dyy));
    k->ul = unew;
    k->uc = ur;
    k->pl = dxx;
    k->bl = bxn;
}

/* NR rows (1, or 2 of consecutive sweeps) of NV vectors each, column by column. */
#define DEFINE_ROWS(T)                                                                            \
static inline __attribute__((always_inline)) void rows_##T(                                      \
    const int NR, const int NV, const int iso, const row_##T *rw, const vec_##T *la,             \
    const vec_##T *ng, acc_##T *acc0, acc_##T *acc1, long W, long L)                             \
{                                                                                                 \
    const long px = L, row = (W + 2) * L;                                                         \
    carry_##T k[2][MAX_NV];                                                                       \
    acc_##T a[2][MAX_NV];                                                                         \
    for (int j = 0; j < NR; ++j)                                                                  \
        for (int v = 0; v < NV; ++v) {                                                            \
            const long o = v * VW_##T;                                                            \
            k[j][v].ul = ld_##T(rw[j].dst + o); /* ghost column: the same in both buffers */    \
            k[j][v].uc = ld_##T(rw[j].src + o + px);                                              \
            k[j][v].pl = ld_##T(rw[j].p + o);                                                     \
            k[j][v].bl = ld_##T(rw[j].bx + o);                                                    \
            a[j][v] = (j == 0 ? acc0 : acc1)[v];                                                  \
        }                                                                                         \
    for (long c = 1; c <= W; ++c) {                                                               \
        /* The leading sweep is the first to touch its row in this pass: fetch its lines ahead \
         * (measured 5-20% off a 227 x 227 pass with AVX-512 and with AVX2). */                  \
        const long ahead = (c + PREFETCH_PIXELS) * px;                                            \
        __builtin_prefetch(rw[0].src + ahead + row, 0, 3);                                        \
        __builtin_prefetch(rw[0].dst + ahead, 1, 3);                                              \
        __builtin_prefetch(rw[0].p + ahead, 1, 3);                                                \
        __builtin_prefetch(rw[0].q + ahead, 1, 3);                                                \
        __builtin_prefetch(rw[0].bx + ahead, 1, 3);                                               \
        __builtin_prefetch(rw[0].by + ahead, 1, 3);                                               \
        __builtin_prefetch(rw[0].wf + (c - 1 + PREFETCH_PIXELS) * L, 0, 3);                       \
        _Pragma("GCC unroll 2") for (int j = 0; j < NR; ++j)                                      \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v)                                  \
                pixel_##T(iso, &rw[j], c * px + v * VW_##T, (c - 1) * L + v * VW_##T, px, row,   \
                          la[v], ng[v], &k[j][v], &a[j][v]);                                      \
    }                                                                                             \
    for (int j = 0; j < NR; ++j)                                                                  \
        for (int v = 0; v < NV; ++v) (j == 0 ? acc0 : acc1)[v] = a[j][v];                         \
}
DEFINE_ROWS(float)
DEFINE_ROWS(double)

/* One pass over a group: sweep s alone (pair == 0: src -> dst), or sweeps s and s + 1 (src -> dst
 * -> src), the second two rows behind. Adds each lane's sums of squared changes to ss0 (sweep s)
 * and ss1 (sweep s + 1). */
#define DEFINE_PASS(T)                                                                            \
static inline __attribute__((always_inline)) void pass_nv_##T(                                   \
    const int NV, const int iso, int pair, T *src, T *dst, T *p, T *q, T *bx, T *by,             \
    const T *wf, const T *lg, const T *ngp, long H, long W, long L, double *ss0, double *ss1)    \
{                                                                                                 \
    const long row = (W + 2) * L;                                                                 \
    vec_##T la[MAX_NV], ng[MAX_NV];                                                               \
    acc_##T acc0[MAX_NV], acc1[MAX_NV];                                                           \
    for (int v = 0; v < NV; ++v) {                                                                \
        la[v] = ld_##T(lg + v * VW_##T);                                                          \
        ng[v] = ld_##T(ngp + v * VW_##T);                                                         \
        acc0[v] = acc1[v] = (acc_##T){0};                                                         \
    }                                                                                             \
    /* Row r of sweep s with row r - 2 of sweep s + 1 (which writes src again). */              \
    for (long r = 1; r <= H + (pair ? 2 : 0); ++r) {                                              \
        const long r1 = r - 2;                                                                    \
        const long ra = r <= H ? r : r1, rb = r1 >= 1 ? r1 : r; /* rows in range only */        \
        const row_##T a = {src + ra * row, dst + ra * row, p + ra * row, q + ra * row,            \
                           bx + ra * row, by + ra * row, wf + (ra - 1) * W * L};                  \
        const row_##T b = {dst + rb * row, src + rb * row, p + rb * row, q + rb * row,            \
                           bx + rb * row, by + rb * row, wf + (rb - 1) * W * L};                  \
        if (r > H) {                                                                              \
            if (r1 >= 1) /* always, for H >= 2 */                                                 \
                rows_##T(1, NV, iso, &b, la, ng, acc1, acc1, W, L);                               \
        } else if (pair && r1 >= 1) {                                                             \
            const row_##T ab[2] = {a, b};                                                         \
            rows_##T(2, NV, iso, ab, la, ng, acc0, acc1, W, L);                                   \
        } else {                                                                                  \
            rows_##T(1, NV, iso, &a, la, ng, acc0, acc0, W, L);                                   \
        }                                                                                         \
    }                                                                                             \
    for (int v = 0; v < NV; ++v)                                                                  \
        for (long i = 0; i < VW_##T; ++i) {                                                       \
            ss0[v * VW_##T + i] += acc0[v][i];                                                    \
            ss1[v * VW_##T + i] += acc1[v][i];                                                    \
        }                                                                                         \
}                                                                                                 \
                                                                                                  \
static void pass_##T(int iso, int pair, T *src, T *dst, T *p, T *q, T *bx, T *by, const T *wf,   \
                     const T *lg, const T *ngp, long H, long W, long L, double *ss0, double *ss1) \
{                                                                                                 \
    FTZ_ON                                                                                        \
    switch ((L / VW_##T) * 2 + (iso != 0)) {                                                      \
    case 2: pass_nv_##T(1, 0, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 3: pass_nv_##T(1, 1, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 4: pass_nv_##T(2, 0, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 5: pass_nv_##T(2, 1, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 6: pass_nv_##T(3, 0, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 7: pass_nv_##T(3, 1, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    case 8: pass_nv_##T(4, 0, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    default: pass_nv_##T(4, 1, pair, src, dst, p, q, bx, by, wf, lg, ngp, H, W, L, ss0, ss1); break; \
    }                                                                                             \
    FTZ_OFF                                                                                       \
}
DEFINE_PASS(float)
DEFINE_PASS(double)

/* The whole denoising of a batch. Lanes come in and go out as (n, H, W) planes (image i's channels
 * are lanes i*C .. i*C + C - 1; lane j is position j % L of group j / L). The workspace ws holds,
 * per group, six (H + 2, W + 2, L) arrays: the two u buffers, p, q, bx, by; wf is (groups, H, W, L).
 * Each thread owns the groups g = t, t + nthreads, ...: it loads them (zero d and b, weight * image,
 * the image into both u buffers with the fixed ghost cells: top/left reflect, bottom/right
 * replicate, or reflect with border013 as scikit-image 0.13 did), runs their passes, and copies
 * each image's lanes out from the buffer of the sweep it stopped at. Between passes thread 0
 * applies the stopping tests sweep by sweep (sum of an image's lanes' squared changes <= thresh;
 * with per_image == 0 the batch's mean over images; or max_iter reached). */
#define DEFINE_DENOISE(T)                                                                         \
typedef struct {                                                                                  \
    T *u[2], *p, *q, *bx, *by, *wf, *out;                                                         \
    const T *f, *weight, *lam, *norm;                                                             \
    int iso, nthreads, stop_all, border013, pair, cur;                                            \
    long groups, H, W, L, n;                                                                      \
    double *ss0, *ss1;                                                                            \
    unsigned char *active, *pending; /* pending[lane]: 1 + the buffer to copy it out of */       \
} tv_job_##T;                                                                                     \
                                                                                                  \
static void tv_load_##T(tv_job_##T *j, int t)                                                     \
{                                                                                                 \
    const long H = j->H, W = j->W, L = j->L, W2 = W + 2, plane = (H + 2) * W2 * L;                \
    const long lr = j->border013 ? H - 1 : H, lc = j->border013 ? W - 1 : W;                      \
    for (long g = t; g < j->groups; g += j->nthreads) {                                           \
        T *ug = j->u[0] + g * plane, *fg = j->wf + g * H * W * L;                                 \
        T *const zero[4] = {j->p, j->q, j->bx, j->by};                                            \
        for (int a = 0; a < 4; ++a) memset(zero[a] + g * plane, 0, sizeof(T) * plane);            \
        const T *src[64];                                                                         \
        T wl[64];                                                                                 \
        for (long k = 0; k < L; ++k) {                                                            \
            src[k] = g * L + k < j->n ? j->f + (g * L + k) * H * W : NULL;                        \
            wl[k] = j->weight[g * L + k];                                                         \
        }                                                                                         \
        /* Pixel-major: the writes are whole pixels of L lanes, the reads L sequential streams. */ \
        for (long y = 0; y < H; ++y)                                                              \
            for (long x = 0; x < W; ++x) {                                                        \
                T *fq = fg + (y * W + x) * L, *uq = ug + ((y + 1) * W2 + x + 1) * L;              \
                for (long k = 0; k < L; ++k) {                                                    \
                    const T v = src[k] ? src[k][y * W + x] : 0;                                   \
                    fq[k] = wl[k] * v;                                                            \
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
        /* The second buffer needs only the ghost ring: every sweep writes all of its interior  \
         * before reading it. */                                                                  \
        T *u1 = j->u[1] + g * plane;                                                              \
        memcpy(u1, ug, sizeof(T) * W2 * L);                                                       \
        memcpy(u1 + (H + 1) * W2 * L, ug + (H + 1) * W2 * L, sizeof(T) * W2 * L);                 \
        for (long y = 1; y <= H; ++y) {                                                           \
            memcpy(u1 + y * W2 * L, ug + y * W2 * L, sizeof(T) * L);                              \
            memcpy(u1 + (y * W2 + W + 1) * L, ug + (y * W2 + W + 1) * L, sizeof(T) * L);          \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* Copy out the lanes of group g that stopped since the last pass, from their sweep's buffer. */  \
static void tv_copy_out_##T(tv_job_##T *j, long g)                                                \
{                                                                                                 \
    const long H = j->H, W = j->W, L = j->L, W2 = W + 2, plane = (H + 2) * W2 * L;                \
    for (int b = 0; b < 2; ++b) {                                                                 \
        long lanes[64], cnt = 0;                                                                  \
        for (long k = 0; k < L && g * L + k < j->n; ++k)                                          \
            if (j->pending[g * L + k] == b + 1) lanes[cnt++] = k;                                 \
        if (!cnt) continue;                                                                       \
        const T *ug = j->u[b] + g * plane;                                                        \
        for (long y = 0; y < H; ++y)                                                              \
            for (long x = 0; x < W; ++x) {                                                        \
                const T *uq = ug + ((y + 1) * W2 + x + 1) * L;                                    \
                for (long i = 0; i < cnt; ++i)                                                    \
                    j->out[(g * L + lanes[i]) * H * W + y * W + x] = uq[lanes[i]];                \
            }                                                                                     \
        for (long i = 0; i < cnt; ++i) j->pending[g * L + lanes[i]] = 0;                          \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void tv_share_##T(tv_job_##T *j, int t)                                                    \
{                                                                                                 \
    const long L = j->L, plane = (j->H + 2) * (j->W + 2) * L;                                     \
    for (long g = t; g < j->groups; g += j->nthreads) {                                           \
        tv_copy_out_##T(j, g);                                                                    \
        for (long k = 0; k < L; ++k) j->ss0[g * L + k] = j->ss1[g * L + k] = 0.0;                 \
        if (j->active[g])                                                                         \
            pass_##T(j->iso, j->pair, j->u[j->cur] + g * plane, j->u[!j->cur] + g * plane,        \
                     j->p + g * plane, j->q + g * plane, j->bx + g * plane, j->by + g * plane,    \
                     j->wf + g * j->H * j->W * L, j->lam + g * L, j->norm + g * L, j->H, j->W, L, \
                     j->ss0 + g * L, j->ss1 + g * L);                                             \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void tv_finish_##T(tv_job_##T *j, int t)                                                   \
{                                                                                                 \
    for (long g = t; g < j->groups; g += j->nthreads) tv_copy_out_##T(j, g);                      \
}                                                                                                 \
                                                                                                  \
/* The stopping tests of one sweep (number it) whose sums are ss and whose u is in buffer buf. */ \
static long tv_stop_tests_##T(tv_job_##T *j, const double *ss, int buf, long it, long max_iter,  \
                              double thresh, int per_image, long C, unsigned char *running,       \
                              long *count)                                                        \
{                                                                                                 \
    const long nimg = j->n / C;                                                                   \
    long stopped = 0;                                                                             \
    double total = 0.0;                                                                           \
    if (!per_image) {                                                                             \
        for (long q = 0; q < j->n; ++q) total += ss[q];                                           \
        total /= (double)nimg;                                                                    \
    }                                                                                             \
    for (long i = 0; i < nimg; ++i) {                                                             \
        if (!running[i]) continue;                                                                \
        ++count[i];                                                                               \
        double sum = total;                                                                       \
        if (per_image) {                                                                          \
            sum = 0.0;                                                                            \
            for (long c = 0; c < C; ++c) sum += ss[i * C + c];                                    \
        }                                                                                         \
        if (!(sum <= thresh) && it < max_iter) continue;                                          \
        running[i] = 0;                                                                           \
        ++stopped;                                                                                \
        for (long c = 0; c < C; ++c) j->pending[i * C + c] = (unsigned char)(buf + 1);            \
    }                                                                                             \
    return stopped;                                                                               \
}                                                                                                 \
                                                                                                  \
void tv_denoise_##T(const T *f, T *out, T *ws, T *wf, const T *weight, const T *lam,              \
                    const T *norm, int iso, int border013, long n, long groups, long H, long W,   \
                    long L, long C, long max_iter, double thresh, int per_image, int nthreads,    \
                    long *count)                                                                  \
{                                                                                                 \
    const long nimg = n / C, plane = (H + 2) * (W + 2) * L, all = groups * plane;                 \
    double ss0[groups * L], ss1[groups * L];                                                      \
    unsigned char active[groups], running[nimg], pending[groups * L];                             \
    tv_job_##T job = {{ws, ws + all}, ws + 2 * all, ws + 3 * all, ws + 4 * all, ws + 5 * all,     \
                      wf, out, f, weight, lam, norm, iso, nthreads, 0, border013, 0, 0,           \
                      groups, H, W, L, n, ss0, ss1, active, pending};                             \
    long left = nimg, it = 0;                                                                     \
    memset(pending, 0, sizeof pending);                                                           \
    for (long g = 0; g < groups; ++g) active[g] = 1;                                              \
    for (long i = 0; i < nimg; ++i) { running[i] = 1; count[i] = 0; }                            \
    if (!HAVE_THREADS) job.nthreads = nthreads = 1;                                               \
    job.pair = max_iter >= 2;                                                                     \
    /* A thread loads, sweeps and copies out only its own groups, so the threads meet twice per  \
     * pass: before thread 0 reads every group's sums, and before the others read its decisions. */ \
    _Pragma("omp parallel num_threads(nthreads)")                                                 \
    {                                                                                             \
        const int t = THREAD_NUM;                                                                 \
        tv_load_##T(&job, t);                                                                     \
        while (it < max_iter && left > 0) {                                                       \
            tv_share_##T(&job, t);                                                                \
            _Pragma("omp barrier")                                                                \
            if (t == 0) {                                                                         \
                left -= tv_stop_tests_##T(&job, ss0, !job.cur, ++it, max_iter, thresh, per_image, \
                                          C, running, count);                                     \
                if (job.pair && left > 0)                                                         \
                    left -= tv_stop_tests_##T(&job, ss1, job.cur, ++it, max_iter, thresh,         \
                                              per_image, C, running, count);                      \
                if (!job.pair) job.cur = !job.cur;                                                \
                for (long g = 0; g < groups; ++g) {                                               \
                    active[g] = 0;                                                                \
                    for (long k = 0; k < L && g * L + k < n; ++k)                                 \
                        active[g] |= running[(g * L + k) / C];                                    \
                }                                                                                 \
                job.pair = it + 2 <= max_iter;                                                    \
            }                                                                                     \
            _Pragma("omp barrier")                                                                \
        }                                                                                         \
        tv_finish_##T(&job, t);                                                                   \
    }                                                                                             \
}

DEFINE_DENOISE(float)
DEFINE_DENOISE(double)
