/* y = x w^T for a short x: the fully connected product of a small batch, at memory speed.
 *
 * x is (M, K), w is (N, K), y is (M, N), all row-major and contiguous. With M of a few rows the
 * product does ~2M flops per weight read, so it is bound by streaming w from memory once. BLAS
 * libraries run such shapes at a fraction of the memory bandwidth (a batch-10 CaffeNet fc6 reads
 * its 151 MB of weights at 6-9 GB/s against ~30 GB/s for a plain sum, measured on AMD Zen 4).
 *
 * Schedule. Threads split the rows of w. A tile is NR rows of w against MT rows of x, walked
 * along K one vector at a time: NR weight vectors and one x vector feed NR * MT fused
 * multiply-adds into NR * MT vector accumulators that stay in registers. The NR weight rows are
 * streamed once per x tile (from memory for the first tile, from cache for the others); x (M rows)
 * stays in cache. While a group's tiles run, the next group's rows are prefetched into L2.
 *
 * Rounding. Each lane accumulates at most KB / VL products; every KB terms the register
 * accumulators are added into a second vector accumulator, and the lanes are summed pairwise at
 * the end. So no float32 sum grows longer than KB / VL + K / KB terms in sequence (32 + 18 for
 * CaffeNet's fc6 with AVX-512), the same kind of bound as the port's blocked product: measured
 * 6e-8 to 9e-8 (relative to range) from float64 on CaffeNet-sized layers, against 6e-7 to 1.3e-6
 * for torch's GEMV/GEMM paths and Caffe's own 2.4e-7 to 4e-7. Each output's operations and their
 * order depend on K and the build only, never on the tile it falls in: a row gives the same bits
 * alone or in any batch.
 */
#include <stddef.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

/* Lanes per vector, and the tallest tile that fits the register file (32 vector registers with
 * AVX-512, 16 otherwise): NR * MT accumulators + NR weights + one x vector. */
#if defined(__AVX512F__)
#define VL 16
#define MTMAX 6
#elif defined(__AVX__)
#define VL 8
#define MTMAX 2
#else
#define VL 4
#define MTMAX 2
#endif
#define NR 4
/* With 16 registers a short batch (up to SHORT_M rows) runs 2 weight rows against up to 5 rows of
 * x instead: each weight row is reread from cache once per tile, and fewer, taller tiles reread
 * it less. Measured on Zen 4, 2 threads, AVX2, batch 10: fc6 forward 6.9-7.4 -> 6.0-6.3 ms, its
 * input gradient 6.7-7.5 -> 5.6-6.0 ms; at batch 64, where the arithmetic dominates, 4 x 2 stays
 * ~6% ahead. The tile shape does not change a single sum (see Rounding). */
#if VL == 8
#define SHORT_M 12
#define NR_SHORT 2
#define MTMAX_SHORT 5
#else
#define SHORT_M 0
#define NR_SHORT NR
#define MTMAX_SHORT MTMAX
#endif
#define KB 512
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vf_unaligned __attribute__((vector_size(VL * 4), aligned(4)));
#define LOAD(p) (*(const vf_unaligned *)(p))

/* c + a * b, fused where the ISA has FMA. The build contracts nothing (-ffp-contract=off: GCC had
 * fused in some tile shapes and not in others, on AVX2 not in a one-row tile, and a row's sums must
 * not depend on the tile it falls in), so the fused vector step is written out, and the scalar
 * K % VL tail is a plain multiply, then add, in every tile. */
static inline vf vmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) /* implies AVX: VL == 8 */
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return c + a * b;
#endif
}

static inline float lane_sum(vf v) {
    float l[VL];
    memcpy(l, &v, sizeof v);
    for (int w = VL / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) l[i] += l[i + w];
    return l[0];
}

/* y[m, r] = sum_k x[m, k] w[r, k] for R rows of w and MT rows of x (y's rows ldy apart). */
#define TILE(R, MT)                                                                                \
    static void tile_##R##_##MT(const float *restrict x, const float *restrict w,                 \
                                float *restrict y, long K, long ldy, const float *pf, long pstep) { \
        vf outer[R][MT];                                                                           \
        float tail[R][MT];                                                                         \
        for (int r = 0; r < R; r++)                                                                \
            for (int m = 0; m < MT; m++) {                                                         \
                outer[r][m] = (vf){0};                                                             \
                tail[r][m] = 0.f;                                                                  \
            }                                                                                      \
        for (long k0 = 0; k0 < K; k0 += KB) {                                                      \
            long k1 = k0 + KB < K ? k0 + KB : K, k = k0;                                           \
            vf acc[R][MT];                                                                         \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            _Pragma("GCC unroll 8") for (int m = 0; m < MT; m++) acc[r][m] = (vf){0};              \
            for (; k + VL <= k1; k += VL) {                                                        \
                vf wv[R];                                                                          \
                if (pf) { /* this step's share of the next group's weights */                    \
                    for (long b = 0; b < pstep; b += 16) __builtin_prefetch(pf + b, 0, 2);         \
                    pf += pstep;                                                                   \
                }                                                                                  \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) wv[r] = LOAD(w + r * K + k);   \
                _Pragma("GCC unroll 8") for (int m = 0; m < MT; m++) {                             \
                    vf xv = LOAD(x + m * K + k);                                                   \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                            \
                        acc[r][m] = vmadd(wv[r], xv, acc[r][m]);                                   \
                }                                                                                  \
            }                                                                                      \
            for (int r = 0; r < R; r++)                                                            \
                for (int m = 0; m < MT; m++) {                                                     \
                    outer[r][m] += acc[r][m];                                                      \
                    for (long j = k; j < k1; j++) tail[r][m] += w[r * K + j] * x[m * K + j];      \
                }                                                                                  \
        }                                                                                          \
        for (int r = 0; r < R; r++)                                                                \
            for (int m = 0; m < MT; m++) y[m * ldy + r] = lane_sum(outer[r][m]) + tail[r][m];     \
    }

typedef void (*tile_fn)(const float *, const float *, float *, long, long, const float *, long);
#define TILES_OF(R) TILE(R, 1) TILE(R, 2) TILE(R, 3) TILE(R, 4) TILE(R, 5) TILE(R, 6)
#define TABLE_OF(R)                                                                                \
    {0, tile_##R##_1, tile_##R##_2, tile_##R##_3, tile_##R##_4, tile_##R##_5, tile_##R##_6}
TILES_OF(1)
TILES_OF(2)
TILES_OF(4)
/* [R][MT] for R = 1, 2, 4: full row groups use nr rows, the last N % nr rows one at a time. */
static const tile_fn TILES[5][7] = {{0}, TABLE_OF(1), TABLE_OF(2), {0}, TABLE_OF(4)};

int skinny_vector_lanes(void) { return VL; }

/* y (M, N) = x (M, K) w (N, K)^T on nthreads threads. */
void skinny_matmul_nt(const float *x, const float *w, float *y, long M, long N, long K,
                      int nthreads) {
    const long nr = M <= SHORT_M ? NR_SHORT : NR, mtmax = M <= SHORT_M ? MTMAX_SHORT : MTMAX;
    const long groups = (N + nr - 1) / nr;
    /* The next row group's weights, a share per tile, are fetched into L2 while this group's
     * tiles compute, so the weight stream overlaps the arithmetic instead of stalling each
     * group's first tile. Measured on Zen 4, 2 threads, fc6 (4096 x 9216) at batch 10: 7.9 -> 6.1
     * ms with AVX-512, 9.0 -> 7.1 ms with AVX2; the same bytes. Past 16 rows the tiles'
     * arithmetic dominates and the prefetches only cost (batch 64: +5%). */
    const long tiles = (M + mtmax - 1) / mtmax, share = nr * K / tiles, pstep = nr * VL / tiles;
    /* Tiles of near-equal height (10 rows: 5 + 5, not 6 + 4): the weights are reread per tile
     * either way, and a short tile leaves registers idle (AVX-512, batch 10: fc6's input gradient
     * 6.9 -> 5.9 ms). Tile t has base + 1 rows if t < extra, else base. */
    const long base = M / tiles, extra = M % tiles;
    const int prefetch = M <= 16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (long g = 0; g < groups; g++) {
        long n = g * nr, rows = N - n < nr ? N - n : nr, t = 0;
        const float *next = prefetch && n + 2 * nr <= N ? w + (n + nr) * K : NULL;
        for (long m0 = 0; m0 < M; m0 += base + (t < extra), ++t) {
            long mt = base + (t < extra);
            if (rows == nr) {
                TILES[nr][mt](x + m0 * K, w + n * K, y + m0 * N + n, K, N,
                             next ? next + t * share : NULL, pstep);
            } else {
                for (long r = 0; r < rows; r++)
                    TILES[1][mt](x + m0 * K, w + (n + r) * K, y + m0 * N + n + r, K, N, NULL, 0);
            }
        }
    }
    (void)nthreads;
}
