/* normscope's fused CPU reduction: every quantity of a (tensor, snapshot) in one pass, in float64.
 *
 * Built with the package into the extension module `normscope.engine._fused` (setup.py; the module
 * glue is `_fused_module.c`, this file needs no Python headers) and called by
 * `normscope/engine/fused.py` through ctypes, which releases the GIL, so the engine's worker
 * threads run it in parallel. torch's
 * kernels need ~9 passes over a block for the same sums (upcast, multiply, sum, per quantity);
 * here each element is read once and every product is accumulated in float64.
 *
 * Per entry i, `out[6 * i + k]` receives
 *   k = 0  sum x^2        (weight)
 *   k = 1  sum x * y      (y: the previous snapshot's tensor)
 *   k = 2  sum (y - x)^2
 *   k = 3  sum x * m      (m: momentum / exp_avg)
 *   k = 4  sum m^2
 *   k = 5  sum v          (v: exp_avg_sq)
 * for the streams that are present (a NULL pointer array means absent). Products of inputs up
 * to float32 are exact in float64, and the sums are accumulated in float64 over short vector
 * lanes: ~1e-13 relative where the engine promises 1e-6. bf16 and fp16 weights and pairs, where
 * the CPU has AVX-512, are summed in float32 lanes for a few steps at a time: within 5e-7 (see
 * `bf16_f32_steps`). Non-finite inputs make k = 0 non-finite; the caller recounts those rare
 * entries.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NS_X86 1 /* F16C half conversion, chosen at run time (`half_block`) */
#endif

enum { NS_FLOAT32 = 0, NS_FLOAT64 = 1, NS_BFLOAT16 = 2, NS_FLOAT16 = 3 };

#define BLOCK 512 /* elements converted per step: 4 KiB of doubles per stream, L1-resident */
/* Long entries are reduced CHUNK elements at a time, and before each chunk the pages two chunks
 * ahead are prefetched (one cache line per 4 KiB page of each stream). A mapped file's pages are
 * 4 KiB apart in physical memory, and the CPU's own prefetcher stops at every page boundary;
 * without this the kernel waits for memory at the start of each page (measured: 4.5 GB/s per core
 * on mapped page-cache pages against 8 GB/s with the prefetch, bf16 pairs). */
#define CHUNK 2048
#define PAGE 4096

#if defined(__GNUC__) || defined(__clang__)
#define NS_PREFETCH(p) __builtin_prefetch(p) /* a hint: never faults, even past a mapping */
#else
#define NS_PREFETCH(p) ((void)(p))
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* one build runs on any x86-64; the loader picks the widest vector ISA the CPU has */
#define NS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NS_CLONES
#endif

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t float_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* IEEE half → float by bits, exact: normals get their exponent rebiased (an integer add),
 * subnormals are their integer mantissa times 2^-24 (no subnormal float arithmetic, which costs
 * a microcode assist per element), Inf/NaN (exponent 31) get the float exponent set. */
static inline float half_to_float(uint16_t h) {
    uint32_t em = h & 0x7fffu;
    uint32_t normal = (em << 13) + (112u << 23);
    uint32_t subnormal = float_to_bits((float)(int32_t)em * 0x1p-24f);
    uint32_t special = 0x7f800000u | (em << 13);
    uint32_t bits = em >= 0x7c00u ? special : em < 0x400u ? subnormal : normal;
    return bits_to_float(bits | (uint32_t)(h & 0x8000u) << 16);
}

static void half_block_portable(const uint16_t *src, int64_t n, float *restrict dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

#ifdef NS_X86
/* The same conversion by the CPU's F16C instruction, 8 elements at a time. */
__attribute__((target("avx,f16c"))) static void half_block_f16c(const uint16_t *src, int64_t n,
                                                                float *restrict dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = half_to_float(src[i]);
}

static int ns_has_f16c(void) {
    __builtin_cpu_init(); /* idempotent: reads what the loader found once */
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

/* Half → float for `n` elements: by F16C where the CPU has it, else by bits. */
static void half_block(const uint16_t *src, int64_t n, float *restrict dst, int portable) {
#ifdef NS_X86
    if (!portable && ns_has_f16c()) {
        half_block_f16c(src, n, dst);
        return;
    }
#endif
    (void)portable;
    half_block_portable(src, n, dst);
}

NS_CLONES
static void to_double(const void *src, int dtype, int64_t n, double *restrict dst) {
    int64_t i;
    switch (dtype) {
    case NS_FLOAT32: {
        const float *s = (const float *)src;
        for (i = 0; i < n; i++) dst[i] = s[i];
        break;
    }
    case NS_FLOAT64:
        memcpy(dst, src, (size_t)n * sizeof(double));
        break;
    case NS_BFLOAT16: {
        const uint16_t *s = (const uint16_t *)src;
        for (i = 0; i < n; i++) dst[i] = bits_to_float((uint32_t)s[i] << 16);
        break;
    }
    default: { /* n <= BLOCK */
        float f[BLOCK];
        half_block((const uint16_t *)src, n, f, 0);
        for (i = 0; i < n; i++) dst[i] = f[i];
        break;
    }
    }
}

static inline int64_t itemsize(int dtype) {
    return dtype == NS_FLOAT64 ? 8 : dtype == NS_FLOAT32 ? 4 : 2;
}

static inline const void *at(const void *base, int dtype, int64_t offset) {
    return (const char *)base + offset * itemsize(dtype);
}

/* The general case (streams of different dtypes): convert a block of each stream to float64
 * in an L1-resident buffer, then reduce the buffers. */
NS_CLONES
static void reduce_mixed(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                         int mt, const void *v, int vt, double *out) {
    double xb[BLOCK], yb[BLOCK], mb[BLOCK], vb[BLOCK];
    double xx = 0, xy = 0, dd = 0, xm = 0, mm = 0, vs = 0;
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t k = n - lo < BLOCK ? n - lo : BLOCK, i;
        to_double(at(x, xt, lo), xt, k, xb);
#pragma omp simd reduction(+ : xx)
        for (i = 0; i < k; i++) xx += xb[i] * xb[i];
        if (y) {
            to_double(at(y, yt, lo), yt, k, yb);
#pragma omp simd reduction(+ : xy, dd)
            for (i = 0; i < k; i++) {
                double d = yb[i] - xb[i];
                xy += xb[i] * yb[i];
                dd += d * d;
            }
        }
        if (m) {
            to_double(at(m, mt, lo), mt, k, mb);
#pragma omp simd reduction(+ : xm, mm)
            for (i = 0; i < k; i++) {
                xm += xb[i] * mb[i];
                mm += mb[i] * mb[i];
            }
        }
        if (v) {
            to_double(at(v, vt, lo), vt, k, vb);
#pragma omp simd reduction(+ : vs)
            for (i = 0; i < k; i++) vs += vb[i];
        }
    }
    out[0] += xx; out[1] += xy; out[2] += dd; out[3] += xm; out[4] += mm; out[5] += vs;
}

/* The common cases, all streams of one dtype: each element is loaded, converted and used in
 * registers. One function per (dtype, streams present), with no test inside a loop, so every
 * inner loop vectorises. */
#define NS_LOAD_float32(p, i) ((double)((const float *)(p))[i])
#define NS_LOAD_float64(p, i) (((const double *)(p))[i])
#define NS_LOAD_bfloat16(p, i) ((double)bits_to_float((uint32_t)((const uint16_t *)(p))[i] << 16))

/* x, with y (the previous snapshot) where Y, with v (exp_avg_sq) where V; m always. */
#define NS_OPTIM(T, NAME, Y, V)                                                                 \
    NS_CLONES static void NAME##_##T(int64_t n, const void *x, const void *y, const void *m,   \
                                     const void *v, double *out) {                              \
        double xx = 0, xy = 0, dd = 0, xm = 0, mm = 0, vs = 0;                                  \
        (void)y;                                                                                \
        (void)v;                                                                                \
        _Pragma("omp simd reduction(+ : xx, xy, dd, xm, mm, vs)") for (int64_t i = 0; i < n;    \
                                                                       i++) {                  \
            double a = NS_LOAD_##T(x, i), c = NS_LOAD_##T(m, i);                                \
            xx += a * a;                                                                        \
            xm += a * c;                                                                        \
            mm += c * c;                                                                        \
            if (Y) {                                                                            \
                double b = NS_LOAD_##T(y, i), d = b - a;                                        \
                xy += a * b;                                                                    \
                dd += d * d;                                                                    \
            }                                                                                   \
            if (V) vs += NS_LOAD_##T(v, i);                                                     \
        }                                                                                       \
        out[0] += xx; out[1] += xy; out[2] += dd; out[3] += xm; out[4] += mm; out[5] += vs;    \
    }

#define NS_SAME(T)                                                                              \
    NS_CLONES static void weight_##T(int64_t n, const void *x, double *out) {                 \
        double xx = 0;                                                                          \
        _Pragma("omp simd reduction(+ : xx)") for (int64_t i = 0; i < n; i++) {                 \
            double a = NS_LOAD_##T(x, i);                                                       \
            xx += a * a;                                                                        \
        }                                                                                       \
        out[0] += xx;                                                                           \
    }                                                                                           \
    NS_CLONES static void pair_##T(int64_t n, const void *x, const void *y, double *out) {     \
        double xx = 0, xy = 0, dd = 0;                                                          \
        _Pragma("omp simd reduction(+ : xx, xy, dd)") for (int64_t i = 0; i < n; i++) {         \
            double a = NS_LOAD_##T(x, i), b = NS_LOAD_##T(y, i), d = b - a;                     \
            xx += a * a;                                                                        \
            xy += a * b;                                                                        \
            dd += d * d;                                                                        \
        }                                                                                       \
        out[0] += xx; out[1] += xy; out[2] += dd;                                               \
    }                                                                                           \
    NS_OPTIM(T, optim_m, 0, 0)                                                                  \
    NS_OPTIM(T, optim_my, 1, 0)                                                                 \
    NS_OPTIM(T, optim_mv, 0, 1)                                                                 \
    NS_OPTIM(T, optim_myv, 1, 1)                                                                \
    static void same_##T(int64_t n, const void *x, const void *y, const void *m, const void *v, \
                         double *out) {                                                         \
        if (m && y && v) optim_myv_##T(n, x, y, m, v, out);                                     \
        else if (m && y) optim_my_##T(n, x, y, m, v, out);                                      \
        else if (m && v) optim_mv_##T(n, x, y, m, v, out);                                      \
        else if (m) optim_m_##T(n, x, y, m, v, out);                                            \
        else if (y) pair_##T(n, x, y, out);                                                     \
        else weight_##T(n, x, out);                                                             \
    }

NS_SAME(float32)
NS_SAME(float64)
NS_SAME(bfloat16)

#ifdef NS_X86
/* bf16 by AVX-512: interleaving 16-bit words with zeros makes each bf16 the float32 with the same
 * upper half (an exact conversion) in one shuffle per 16 elements, where the compiler's widening
 * of the loops above takes three shuffles (measured on a bf16 pair: 2.25 G elements/s per core
 * from the general loop, the kernel's bottleneck on bf16 checkpoints). The interleave puts the
 * elements in another order within each 128-bit lane; every element still adds to the same sums
 * in float64, in an order fixed by `n` alone. */
#define NS_AVX512 __attribute__((target("avx512f,avx512bw")))

NS_AVX512 static inline void bf16_halves(__m512i words, __m512d part[4]) {
    __m512i zero = _mm512_setzero_si512();
    __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, words));
    __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, words));
    part[0] = _mm512_cvtps_pd(_mm512_castps512_ps256(lo));
    part[1] = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lo), 1)));
    part[2] = _mm512_cvtps_pd(_mm512_castps512_ps256(hi));
    part[3] = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(hi), 1)));
}

NS_AVX512 static inline double sum4(const __m512d acc[4]) {
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]),
                                              _mm512_add_pd(acc[2], acc[3])));
}

NS_AVX512 static void weight_bfloat16_f64(int64_t n, const void *x, double *out) {
    const uint16_t *p = (const uint16_t *)x;
    __m512d xx[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                     _mm512_setzero_pd()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a[4];
        bf16_halves(_mm512_loadu_si512((const void *)(p + i)), a);
        for (int j = 0; j < 4; j++) xx[j] = _mm512_fmadd_pd(a[j], a[j], xx[j]);
    }
    double t = 0;
    for (; i < n; i++) {
        double a = NS_LOAD_bfloat16(p, i);
        t += a * a;
    }
    out[0] += sum4(xx) + t;
}

NS_AVX512 static void pair_bfloat16_f64(int64_t n, const void *x, const void *y, double *out) {
    const uint16_t *p = (const uint16_t *)x, *q = (const uint16_t *)y;
    __m512d xx[4], xy[4], dd[4];
    for (int j = 0; j < 4; j++) xx[j] = xy[j] = dd[j] = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a[4], b[4];
        bf16_halves(_mm512_loadu_si512((const void *)(p + i)), a);
        bf16_halves(_mm512_loadu_si512((const void *)(q + i)), b);
        for (int j = 0; j < 4; j++) {
            __m512d d = _mm512_sub_pd(b[j], a[j]);
            xx[j] = _mm512_fmadd_pd(a[j], a[j], xx[j]);
            xy[j] = _mm512_fmadd_pd(a[j], b[j], xy[j]);
            dd[j] = _mm512_fmadd_pd(d, d, dd[j]);
        }
    }
    double t0 = 0, t1 = 0, t2 = 0;
    for (; i < n; i++) {
        double a = NS_LOAD_bfloat16(p, i), b = NS_LOAD_bfloat16(q, i), d = b - a;
        t0 += a * a;
        t1 += a * b;
        t2 += d * d;
    }
    out[0] += sum4(xx) + t0;
    out[1] += sum4(xy) + t1;
    out[2] += sum4(dd) + t2;
}

/* bf16 sums in float32 lanes, widened to float64 every NS_F32_STEPS steps of 32 elements. A product
 * of two bf16 values is exact in float32 (8 + 8 significant bits), so only the additions round:
 * each float32 lane adds 4 products, its two halves are added once more, and a difference b - a
 * and its square round once each, so a sum is within 8 * 2^-24 (< 5e-7) of the float64 one
 * (a dot product within 5e-7 of |x||y|). That takes the shuffles and float64 conversions, the
 * float64 path's bottleneck, off all but one step in NS_F32_STEPS. float32 has bf16's exponent
 * range, so a product can overflow (Inf/NaN in a sum) or fall below float32's normal range,
 * where it rounds to a multiple of 2^-149; `bf16_f32_trusted` takes a span's sums only where
 * neither can have moved them, and the span is summed again in float64 lanes otherwise. */
#define NS_F32_STEPS 4

NS_AVX512 static inline void bf16_floats(__m512i words, __m512 *lo, __m512 *hi) {
    __m512i zero = _mm512_setzero_si512();
    *lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, words));
    *hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, words));
}

/* lo + hi in float32, then its 16 lanes widened and added to the 8 float64 lanes `acc`. */
NS_AVX512 static inline __m512d widen_add(__m512d acc, __m512 lo, __m512 hi) {
    __m512 s = _mm512_add_ps(lo, hi);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
    __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    return _mm512_add_pd(acc, _mm512_add_pd(a, b));
}

/* The first `n - n % 32` elements' sums into `s` (x^2, and x*y, (y - x)^2 where `q`), 32
 * elements a step loaded as two float32 vectors by LOAD(pointer, lo, hi). */
#define NS_F32_LANES(NAME, LOAD)                                                                \
    NS_AVX512 static void NAME(int64_t n, const uint16_t *p, const uint16_t *q, double s[3]) {  \
        __m512d xx = _mm512_setzero_pd(), xy = _mm512_setzero_pd(), dd = _mm512_setzero_pd();   \
        int64_t i = 0;                                                                          \
        while (i + 32 <= n) {                                                                   \
            __m512 xx0 = _mm512_setzero_ps(), xx1 = xx0, xy0 = xx0, xy1 = xx0, dd0 = xx0,       \
                   dd1 = xx0;                                                                   \
            for (int k = 0; k < NS_F32_STEPS && i + 32 <= n; k++, i += 32) {                    \
                __m512 a0, a1, b0, b1;                                                          \
                LOAD(p + i, a0, a1);                                                            \
                xx0 = _mm512_fmadd_ps(a0, a0, xx0);                                             \
                xx1 = _mm512_fmadd_ps(a1, a1, xx1);                                             \
                if (q) {                                                                        \
                    LOAD(q + i, b0, b1);                                                        \
                    __m512 d0 = _mm512_sub_ps(b0, a0), d1 = _mm512_sub_ps(b1, a1);              \
                    xy0 = _mm512_fmadd_ps(a0, b0, xy0);                                         \
                    xy1 = _mm512_fmadd_ps(a1, b1, xy1);                                         \
                    dd0 = _mm512_fmadd_ps(d0, d0, dd0);                                         \
                    dd1 = _mm512_fmadd_ps(d1, d1, dd1);                                         \
                }                                                                               \
            }                                                                                   \
            xx = widen_add(xx, xx0, xx1);                                                       \
            if (q) {                                                                            \
                xy = widen_add(xy, xy0, xy1);                                                   \
                dd = widen_add(dd, dd0, dd1);                                                   \
            }                                                                                   \
        }                                                                                       \
        s[0] = _mm512_reduce_add_pd(xx);                                                        \
        s[1] = _mm512_reduce_add_pd(xy);                                                        \
        s[2] = _mm512_reduce_add_pd(dd);                                                        \
    }

#define NS_LOAD_BF16_LANES(at, lo, hi) bf16_floats(_mm512_loadu_si512((const void *)(at)), &lo, &hi)
/* fp16 by F16C's 16-wide form (AVX-512F): the halves' float32 values, exact, in element order */
#define NS_LOAD_HALF_LANES(at, lo, hi)                                                          \
    (lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(at))),                           \
     hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((at) + 16))))

NS_F32_LANES(bf16_f32_steps, NS_LOAD_BF16_LANES)
NS_F32_LANES(half_f32_steps, NS_LOAD_HALF_LANES)

static int bf16_all_zero(int64_t n, const uint16_t *p) {
    uint16_t any = 0;
    for (int64_t i = 0; i < n; i++) any |= p[i] & 0x7fffu;
    return !any;
}

/* Whether float32 lanes summed the first `n` elements (a multiple of 32) as float64 would within
 * the bound above. Every rounding of a product or a sum below float32's normal range is off by at
 * most 2^-150, so a sum of at least n * 2^-100 is off by a relative 2^-48 at most from those; a
 * smaller one (0 included) is taken only where it is exact: all x zero (x^2 and x*y are 0), or y
 * the same bits as x ((y - x)^2 is 0). A non-finite sum is an overflow or a NaN/Inf input. */
static int bf16_f32_trusted(int64_t n, const uint16_t *p, const uint16_t *q, const double s[3]) {
    double floor = (double)n * 0x1p-100;
    int finite = s[0] - s[0] == 0 && s[1] - s[1] == 0 && s[2] - s[2] == 0;
    if (!finite || n == 0) return finite;
    int zero_x = s[0] < floor && s[0] == 0 && bf16_all_zero(n, p);
    if (s[0] < floor && !zero_x) return 0;
    if (!q) return 1;
    if (!(s[1] >= floor || s[1] <= -floor) && !zero_x) return 0;
    return s[2] >= floor || (s[2] == 0 && memcmp(p, q, (size_t)n * sizeof *p) == 0);
}

/* Elements from `i` on (fewer than 32), in float64. */
static void bf16_tail(int64_t i, int64_t n, const uint16_t *p, const uint16_t *q, double s[3]) {
    for (; i < n; i++) {
        double a = NS_LOAD_bfloat16(p, i);
        s[0] += a * a;
        if (q) {
            double b = NS_LOAD_bfloat16(q, i), d = b - a;
            s[1] += a * b;
            s[2] += d * d;
        }
    }
}

NS_AVX512 static void bf16_sums_avx512(int64_t n, const uint16_t *p, const uint16_t *q,
                                       double *out) {
    int64_t steps = n - n % 32;
    double s[3] = {0, 0, 0};
    bf16_f32_steps(steps, p, q, s);
    if (bf16_f32_trusted(steps, p, q, s)) {
        double t[3] = {0, 0, 0};
        bf16_tail(steps, n, p, q, t);
        out[0] += s[0] + t[0];
        if (q) {
            out[1] += s[1] + t[1];
            out[2] += s[2] + t[2];
        }
    } else if (q) {
        pair_bfloat16_f64(n, p, q, out);
    } else {
        weight_bfloat16_f64(n, p, out);
    }
}

static int ns_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}
#endif

/* fp16: each stream converted to float32 a block at a time (F16C where the CPU has it, see
 * `half_block`), then reduced by the float32 loops; float32 holds every half exactly. */
static void same_float16(int64_t n, const void *x, const void *y, const void *m, const void *v,
                         double *out) {
    float xb[BLOCK], yb[BLOCK], mb[BLOCK], vb[BLOCK];
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t k = n - lo < BLOCK ? n - lo : BLOCK;
        half_block((const uint16_t *)x + lo, k, xb, 0);
        if (y) half_block((const uint16_t *)y + lo, k, yb, 0);
        if (m) half_block((const uint16_t *)m + lo, k, mb, 0);
        if (v) half_block((const uint16_t *)v + lo, k, vb, 0);
        same_float32(k, xb, y ? yb : 0, m ? mb : 0, v ? vb : 0, out);
    }
}

#ifdef NS_X86
/* fp16 in float32 lanes (see `bf16_f32_steps`): a product of two halves is exact in float32 (11 +
 * 11 significant bits), and unlike bf16 no finite half can overflow float32 or leave its normal
 * range when squared (|x| <= 65504, and the smallest half 2^-24 squares to 2^-48), so the bound
 * holds for every finite input; a non-finite sum (a NaN/Inf input) sends the span to the float64
 * loops, which count it. */
NS_AVX512 static void half_sums_avx512(int64_t n, const uint16_t *p, const uint16_t *q,
                                       double *out) {
    int64_t steps = n - n % 32;
    double s[3] = {0, 0, 0};
    half_f32_steps(steps, p, q, s);
    if (!(s[0] - s[0] == 0 && s[1] - s[1] == 0 && s[2] - s[2] == 0)) {
        same_float16(n, p, q, 0, 0, out);
        return;
    }
    for (int64_t i = steps; i < n; i++) { /* the tail, in float64 */
        double a = half_to_float(p[i]);
        s[0] += a * a;
        if (q) {
            double b = half_to_float(q[i]), d = b - a;
            s[1] += a * b;
            s[2] += d * d;
        }
    }
    out[0] += s[0];
    if (q) {
        out[1] += s[1];
        out[2] += s[2];
    }
}
#endif

/* 16-bit streams (`dtype` bf16 or fp16): weights, alone or with the previous snapshot's, in
 * float32 lanes where the CPU has AVX-512; the rest by the float64 loops. */
static void reduce_16bit(int dtype, int64_t n, const void *x, const void *y, const void *m,
                         const void *v, double *out) {
    int bf16 = dtype == NS_BFLOAT16;
#ifdef NS_X86
    if (!m && !v && ns_has_avx512()) {
        (bf16 ? bf16_sums_avx512 : half_sums_avx512)(n, (const uint16_t *)x, (const uint16_t *)y,
                                                     out);
        return;
    }
#endif
    (bf16 ? same_bfloat16 : same_float16)(n, x, y, m, v, out);
}

static void reduce_span(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                        int mt, const void *v, int vt, double *out) {
    int same = (!y || yt == xt) && (!m || mt == xt) && (!v || vt == xt);
    if (!same || (v && !m)) {
        reduce_mixed(n, x, xt, y, yt, m, mt, v, vt, out);
        return;
    }
    switch (xt) {
    case NS_FLOAT32: same_float32(n, x, y, m, v, out); break;
    case NS_FLOAT64: same_float64(n, x, y, m, v, out); break;
    default: reduce_16bit(xt, n, x, y, m, v, out); break;
    }
}

/* One line of each page of [lo, hi) elements of a stream (see CHUNK). */
static inline void prefetch_pages(const void *p, int dtype, int64_t lo, int64_t hi) {
    if (!p) return;
    const char *base = (const char *)p;
    int64_t size = itemsize(dtype);
    for (int64_t at_byte = lo * size; at_byte < hi * size; at_byte += PAGE)
        NS_PREFETCH(base + at_byte);
}

static void reduce_entry(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                         int mt, const void *v, int vt, double *out) {
    if (n <= 2 * CHUNK) {
        reduce_span(n, x, xt, y, yt, m, mt, v, vt, out);
        return;
    }
    for (int64_t lo = 0; lo < n; lo += CHUNK) {
        int64_t k = n - lo < CHUNK ? n - lo : CHUNK;
        int64_t ahead = lo + 2 * CHUNK; /* may pass the end: a prefetch never faults */
        prefetch_pages(x, xt, ahead, ahead + CHUNK);
        prefetch_pages(y, yt, ahead, ahead + CHUNK);
        prefetch_pages(m, mt, ahead, ahead + CHUNK);
        prefetch_pages(v, vt, ahead, ahead + CHUNK);
        reduce_span(k, at(x, xt, lo), xt, y ? at(y, yt, lo) : 0, yt, m ? at(m, mt, lo) : 0, mt,
                    v ? at(v, vt, lo) : 0, vt, out);
    }
}

/* Entries are independent; `out` holds 6 doubles per entry and is added to, so the caller may
 * split a long tensor into pieces that share one output row. */
void normscope_reduce(int64_t count, const int64_t *numel, const void *const *x, const int32_t *xt,
                      const void *const *y, const int32_t *yt, const void *const *m,
                      const int32_t *mt, const void *const *v, const int32_t *vt, double *out) {
    for (int64_t i = 0; i < count; i++) {
        reduce_entry(numel[i], x[i], xt[i], y ? y[i] : 0, y ? yt[i] : 0, m ? m[i] : 0,
                     m ? mt[i] : 0, v ? v[i] : 0, v ? vt[i] : 0, out + 6 * i);
    }
}

/* The sums of the same pieces in `snapshots` consecutive snapshots, each against the one before:
 * `x[s * stride + i]`, `xt[s * stride + i]` is piece i in snapshot s, and `out + 6 * (s * stride +
 * i)` receives its sums, added to, for s >= `first`; snapshots before `first` are only read as the
 * previous of the next (and snapshot 0, where `first` is 0, has none). Each chunk of a piece is
 * reduced in every snapshot in turn, so the previous snapshot's chunk is still in the L1 cache
 * when it is read again as `y`: memory is read once, not twice. Per (snapshot, piece) the sums
 * are added in the order `normscope_reduce` adds them, so the results are the same bits. */
void normscope_reduce_chain(int64_t count, const int64_t *numel, int64_t snapshots, int64_t first,
                            int64_t stride, const void *const *x, const int32_t *xt, double *out) {
    for (int64_t i = 0; i < count; i++) {
        int64_t n = numel[i];
        if (n <= 2 * CHUNK) { /* as `reduce_entry`: one span */
            for (int64_t s = first, at_s = i + first * stride; s < snapshots; s++, at_s += stride) {
                const void *y = s ? x[at_s - stride] : 0;
                reduce_span(n, x[at_s], xt[at_s], y, s ? xt[at_s - stride] : 0, 0, 0, 0, 0,
                            out + 6 * at_s);
            }
            continue;
        }
        for (int64_t lo = 0; lo < n; lo += CHUNK) { /* as `reduce_entry`: chunk by chunk */
            int64_t k = n - lo < CHUNK ? n - lo : CHUNK, ahead = lo + 2 * CHUNK;
            if (first > 0) prefetch_pages(x[i + (first - 1) * stride], xt[i + (first - 1) * stride],
                                          ahead, ahead + CHUNK);
            for (int64_t s = first, at_s = i + first * stride; s < snapshots; s++, at_s += stride) {
                const void *y = s ? x[at_s - stride] : 0;
                int yt = s ? xt[at_s - stride] : 0;
                prefetch_pages(x[at_s], xt[at_s], ahead, ahead + CHUNK);
                reduce_span(k, at(x[at_s], xt[at_s], lo), xt[at_s], y ? at(y, yt, lo) : 0, yt, 0,
                            0, 0, 0, out + 6 * at_s);
            }
        }
    }
}

/* Reading mapped files: a page whose file was cut short under the mapping (a job rewriting the
 * checkpoint in place) raises SIGBUS on the reading thread. `normscope_reduce_guarded` runs
 * `normscope_reduce` with this thread's jump point set, and the handler jumps back there: the
 * call returns -1 and the caller reports the file, instead of the process dying. A SIGBUS
 * outside a guarded call goes to the handler that was installed before ours. */
static __thread sigjmp_buf *ns_jump;
static struct sigaction ns_previous_bus;
static volatile sig_atomic_t ns_installed;

static void ns_on_sigbus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *jump = ns_jump;
    if (jump) {
        ns_jump = 0;
        siglongjmp(*jump, 1);
    }
    if (ns_previous_bus.sa_flags & SA_SIGINFO) {
        if (ns_previous_bus.sa_sigaction) {
            ns_previous_bus.sa_sigaction(sig, info, context);
            return;
        }
    } else if (ns_previous_bus.sa_handler == SIG_IGN) {
        return;
    } else if (ns_previous_bus.sa_handler != SIG_DFL) {
        ns_previous_bus.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL); /* the default: end the process with SIGBUS, as without us */
    raise(sig);
}

/* Install the handler once per process; 0 on success. */
int normscope_guard_install(void) {
    struct sigaction action;
    if (ns_installed) return 0;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = ns_on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &ns_previous_bus) != 0) return -1;
    ns_installed = 1;
    return 0;
}

/* `normscope_reduce`, returning 0, or -1 where a page it read had vanished (SIGBUS). */
int normscope_reduce_guarded(int64_t count, const int64_t *numel, const void *const *x,
                             const int32_t *xt, const void *const *y, const int32_t *yt,
                             const void *const *m, const int32_t *mt, const void *const *v,
                             const int32_t *vt, double *out) {
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) return -1; /* 1: the signal mask comes back as it was */
    ns_jump = &jump;
    normscope_reduce(count, numel, x, xt, y, yt, m, mt, v, vt, out);
    ns_jump = 0;
    return 0;
}

/* `normscope_reduce_chain`, returning 0, or -1 where a page it read had vanished (SIGBUS). */
int normscope_reduce_chain_guarded(int64_t count, const int64_t *numel, int64_t snapshots,
                                   int64_t first, int64_t stride, const void *const *x,
                                   const int32_t *xt, double *out) {
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) return -1;
    ns_jump = &jump;
    normscope_reduce_chain(count, numel, snapshots, first, stride, x, xt, out);
    ns_jump = 0;
    return 0;
}

/* Half → float by the path the kernel takes (`portable` 0) or by bits (1): for the tests, which
 * compare both with every fp16 bit pattern. */
void normscope_half_to_float(int64_t n, const uint16_t *src, float *dst, int portable) {
    for (int64_t lo = 0; lo < n; lo += BLOCK)
        half_block(src + lo, n - lo < BLOCK ? n - lo : BLOCK, dst + lo, portable);
}

/* The sums of `n` bf16 weights `x` (and the previous snapshot's `y`, where not NULL) into `out`
 * (3 doubles, added to), by the path the kernel takes (`path` 0), by the compiler's loops (1) or
 * by the AVX-512 float64 lanes a span falls back to (2; the compiler's loops without AVX-512):
 * for the tests, which compare each with a float64 reference. */
void normscope_bf16_sums(int64_t n, const uint16_t *x, const uint16_t *y, double *out, int path) {
#ifdef NS_X86
    if (path == 2 && ns_has_avx512()) {
        if (y) pair_bfloat16_f64(n, x, y, out);
        else weight_bfloat16_f64(n, x, out);
        return;
    }
#endif
    if (path) same_bfloat16(n, x, y, 0, 0, out);
    else reduce_16bit(NS_BFLOAT16, n, x, y, 0, 0, out);
}

/* The ABI version the Python side checks, so a build from another normscope is never called. */
int normscope_fused_abi(void) { return 2; }
