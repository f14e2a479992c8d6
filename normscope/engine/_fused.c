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
 * lanes of a fixed width: ~1e-13 relative where the engine promises 1e-6, and the same bits on
 * every CPU (see `NS_LANES`). bf16 and fp16 weights and pairs are summed in float32 lanes
 * for a few steps at a time: within 5e-7 (see `NS_F32_STEPS`). Non-finite inputs make k = 0
 * non-finite; the caller recounts those rare entries.
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

/* Every sum is kept in NS_LANES = 8 float64 lanes: element i of a span adds to lane i % 8, the
 * lanes are added in a fixed tree (`lanes_total`), and the tail of fewer than 8 elements after
 * them in element order. The lanes are the compiler's vector types, two of 4 doubles a sum,
 * whose arithmetic is defined lane by lane: each lane is an independent IEEE sum, whatever
 * registers the compiler carries it in (AVX2 or AVX-512 registers, two SSE2 or NEON registers
 * each), and setup.py builds with -ffp-contract=off so no product is fused into an addition.
 * So every build the loader can pick gives the same bits for the same input, and the numbers a
 * report prints do not depend on the machine that read the run. */
#define NS_LANES 8
#define NS_INLINE static inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
/* the lane vectors never cross a call (`NS_INLINE`), so the vector ABI they would have is moot */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef double ns_d4 __attribute__((vector_size(32)));
typedef float ns_f4 __attribute__((vector_size(16)));
typedef float ns_f8 __attribute__((vector_size(32)));
typedef uint16_t ns_h8 __attribute__((vector_size(16)));
typedef uint32_t ns_u8 __attribute__((vector_size(32)));

/* Lanes 0-3 and 4-7 of 8 floats, widened (exactly). */
NS_INLINE void widen8(ns_f8 f, ns_d4 *lo, ns_d4 *hi) {
    ns_f4 a, b;
    memcpy(&a, &f, sizeof a);
    memcpy(&b, (const char *)&f + sizeof a, sizeof b);
    *lo = __builtin_convertvector(a, ns_d4);
    *hi = __builtin_convertvector(b, ns_d4);
}

/* 8 bf16 words as floats: each bf16 is the upper half of its float32. */
NS_INLINE ns_f8 floats_bf16(const uint16_t *p) {
    ns_h8 h;
    memcpy(&h, p, sizeof h);
    ns_u8 u = __builtin_convertvector(h, ns_u8) << 16;
    ns_f8 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

NS_INLINE ns_f8 floats_f32(const float *p) {
    ns_f8 f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* 8 elements from element i of a stream, as float64 lanes 0-3 (`lo`) and 4-7 (`hi`). */
NS_INLINE void lanes_float32(const void *p, int64_t i, ns_d4 *lo, ns_d4 *hi) {
    widen8(floats_f32((const float *)p + i), lo, hi);
}

NS_INLINE void lanes_float64(const void *p, int64_t i, ns_d4 *lo, ns_d4 *hi) {
    memcpy(lo, (const double *)p + i, sizeof *lo);
    memcpy(hi, (const double *)p + i + 4, sizeof *hi);
}

NS_INLINE void lanes_bfloat16(const void *p, int64_t i, ns_d4 *lo, ns_d4 *hi) {
    widen8(floats_bf16((const uint16_t *)p + i), lo, hi);
}

/* The 8 lanes' total: lane j with lane j + 4, then j + 2, then the two. */
NS_INLINE double lanes_total(ns_d4 lo, ns_d4 hi) {
    ns_d4 s = lo + hi;
    return (s[0] + s[2]) + (s[1] + s[3]);
}

static inline int64_t itemsize(int dtype) {
    return dtype == NS_FLOAT64 ? 8 : dtype == NS_FLOAT32 ? 4 : 2;
}

static inline const void *at(const void *base, int dtype, int64_t offset) {
    return (const char *)base + offset * itemsize(dtype);
}

/* The common cases, all streams of one dtype: each element is loaded, converted and used in
 * registers. One function per (dtype, streams present), with no test inside a loop. */
#define NS_LOAD_float32(p, i) ((double)((const float *)(p))[i])
#define NS_LOAD_float64(p, i) (((const double *)(p))[i])
#define NS_LOAD_bfloat16(p, i) ((double)bits_to_float((uint32_t)((const uint16_t *)(p))[i] << 16))

/* x, with y (the previous snapshot) where Y, with m (momentum / exp_avg) where M, with v
 * (exp_avg_sq) where V. */
#define NS_SUMS(T, NAME, Y, M, V)                                                               \
    NS_CLONES static void NAME##_##T(int64_t n, const void *x, const void *y, const void *m,   \
                                     const void *v, double *out) {                              \
        ns_d4 z = {0, 0, 0, 0};                                                                 \
        ns_d4 xx0 = z, xx1 = z, xy0 = z, xy1 = z, dd0 = z, dd1 = z, xm0 = z, xm1 = z, mm0 = z,  \
              mm1 = z, vs0 = z, vs1 = z;                                                        \
        double t[6] = {0, 0, 0, 0, 0, 0};                                                       \
        int64_t i = 0;                                                                          \
        (void)y;                                                                                \
        (void)m;                                                                                \
        (void)v;                                                                                \
        for (; i + NS_LANES <= n; i += NS_LANES) {                                              \
            ns_d4 a0, a1, b0, b1, c0, c1;                                                       \
            lanes_##T(x, i, &a0, &a1);                                                          \
            xx0 += a0 * a0;                                                                     \
            xx1 += a1 * a1;                                                                     \
            if (Y) {                                                                            \
                lanes_##T(y, i, &b0, &b1);                                                      \
                ns_d4 d0 = b0 - a0, d1 = b1 - a1;                                               \
                xy0 += a0 * b0;                                                                 \
                xy1 += a1 * b1;                                                                 \
                dd0 += d0 * d0;                                                                 \
                dd1 += d1 * d1;                                                                 \
            }                                                                                   \
            if (M) {                                                                            \
                lanes_##T(m, i, &c0, &c1);                                                      \
                xm0 += a0 * c0;                                                                 \
                xm1 += a1 * c1;                                                                 \
                mm0 += c0 * c0;                                                                 \
                mm1 += c1 * c1;                                                                 \
            }                                                                                   \
            if (V) {                                                                            \
                lanes_##T(v, i, &c0, &c1);                                                      \
                vs0 += c0;                                                                      \
                vs1 += c1;                                                                      \
            }                                                                                   \
        }                                                                                       \
        for (; i < n; i++) {                                                                    \
            double a = NS_LOAD_##T(x, i);                                                       \
            t[0] += a * a;                                                                      \
            if (Y) {                                                                            \
                double b = NS_LOAD_##T(y, i), d = b - a;                                        \
                t[1] += a * b;                                                                  \
                t[2] += d * d;                                                                  \
            }                                                                                   \
            if (M) {                                                                            \
                double c = NS_LOAD_##T(m, i);                                                   \
                t[3] += a * c;                                                                  \
                t[4] += c * c;                                                                  \
            }                                                                                   \
            if (V) t[5] += NS_LOAD_##T(v, i);                                                   \
        }                                                                                       \
        out[0] += lanes_total(xx0, xx1) + t[0];                                                 \
        if (Y) {                                                                                \
            out[1] += lanes_total(xy0, xy1) + t[1];                                             \
            out[2] += lanes_total(dd0, dd1) + t[2];                                             \
        }                                                                                       \
        if (M) {                                                                                \
            out[3] += lanes_total(xm0, xm1) + t[3];                                             \
            out[4] += lanes_total(mm0, mm1) + t[4];                                             \
        }                                                                                       \
        if (V) out[5] += lanes_total(vs0, vs1) + t[5];                                          \
    }

#define NS_SAME(T)                                                                              \
    NS_SUMS(T, weight, 0, 0, 0)                                                                 \
    NS_SUMS(T, pair, 1, 0, 0)                                                                   \
    NS_SUMS(T, optim_m, 0, 1, 0)                                                                \
    NS_SUMS(T, optim_my, 1, 1, 0)                                                               \
    NS_SUMS(T, optim_mv, 0, 1, 1)                                                               \
    NS_SUMS(T, optim_myv, 1, 1, 1)                                                              \
    NS_SUMS(T, second_v, 0, 0, 1)                                                               \
    NS_SUMS(T, second_yv, 1, 0, 1)                                                              \
    static void same_##T(int64_t n, const void *x, const void *y, const void *m, const void *v, \
                         double *out) {                                                         \
        if (m && y && v) optim_myv_##T(n, x, y, m, v, out);                                     \
        else if (m && y) optim_my_##T(n, x, y, m, v, out);                                      \
        else if (m && v) optim_mv_##T(n, x, y, m, v, out);                                      \
        else if (m) optim_m_##T(n, x, y, m, v, out);                                            \
        else if (v && y) second_yv_##T(n, x, y, m, v, out);                                     \
        else if (v) second_v_##T(n, x, y, m, v, out);                                           \
        else if (y) pair_##T(n, x, y, m, v, out);                                               \
        else weight_##T(n, x, y, m, v, out);                                                    \
    }

NS_SAME(float32)
NS_SAME(float64)
NS_SAME(bfloat16)

/* The general case (streams of different dtypes): each stream converted to float64 a block at a
 * time in an L1-resident buffer, then reduced by the float64 loops. */
static void reduce_mixed(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                         int mt, const void *v, int vt, double *out) {
    double xb[BLOCK], yb[BLOCK], mb[BLOCK], vb[BLOCK];
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t k = n - lo < BLOCK ? n - lo : BLOCK;
        to_double(at(x, xt, lo), xt, k, xb);
        if (y) to_double(at(y, yt, lo), yt, k, yb);
        if (m) to_double(at(m, mt, lo), mt, k, mb);
        if (v) to_double(at(v, vt, lo), vt, k, vb);
        same_float64(k, xb, y ? yb : 0, m ? mb : 0, v ? vb : 0, out);
    }
}

/* fp16: each stream converted to float32 a block at a time (F16C where the CPU has it, see
 * `half_block`; exact either way), then reduced by the float32 loops. */
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

/* 16-bit weights and pairs in float32 lanes, widened to float64 every NS_F32_STEPS steps of
 * NS_F32_WIDTH = 16 elements. A product of two bf16 or two fp16 values is exact in float32 (8 + 8
 * or 11 + 11 significant bits), so only the additions round: each of the 16 float32 lanes adds
 * NS_F32_STEPS = 4 products, lanes j and j + 8 are added once more before float64 lane j takes
 * them, and a difference b - a and its square round once each, so a sum is within 8 * 2^-24
 * (< 5e-7) of the float64 one (a dot product within 5e-7 of |x||y|). The float64 conversions,
 * which bound the float64 loops on 16-bit data, happen once per 64 elements. float32 has bf16's
 * exponent range, so a bf16 product can overflow (Inf/NaN in a sum) or fall below float32's
 * normal range, where it rounds to a multiple of 2^-149: `bf16_f32_trusted` takes a span's sums
 * only where neither can have moved them, and the span is summed again by the float64 loops
 * otherwise. No finite half can overflow float32 or leave its normal range when squared
 * (|x| <= 65504, and the smallest half 2^-24 squares to 2^-48), so an fp16 span goes back to the
 * float64 loops only where its sums are not finite (a NaN/Inf input). */
#define NS_F32_STEPS 4
#define NS_F32_WIDTH 16
#define NS_F32_GROUP (NS_F32_STEPS * NS_F32_WIDTH) /* elements between widenings */

/* Float32 lanes 0-7 (`lo`) and 8-15 (`hi`): lane j plus lane j + 8, into float64 lanes 0-7. */
NS_INLINE void widen_add(ns_f8 lo, ns_f8 hi, ns_d4 *acc0, ns_d4 *acc1) {
    ns_d4 a, b;
    widen8(lo + hi, &a, &b);
    *acc0 += a;
    *acc1 += b;
}

/* The first `n` elements (a multiple of NS_F32_WIDTH) of p (and q, where Q) into the float64
 * lanes `acc` (lanes 0-3 and 4-7 of x^2, and x*y, (y - x)^2 where Q). */
#define NS_F32_LANES(NAME, E, FLOATS, Q)                                                        \
    NS_CLONES static void NAME(int64_t n, const E *p, const E *q, ns_d4 acc[6]) {               \
        ns_d4 s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3], s4 = acc[4], s5 = acc[5];     \
        (void)q;                                                                                \
        for (int64_t lo = 0; lo < n; lo += NS_F32_GROUP) {                                      \
            int64_t hi = n - lo < NS_F32_GROUP ? n : lo + NS_F32_GROUP;                         \
            ns_f8 z = {0, 0, 0, 0, 0, 0, 0, 0};                                                 \
            ns_f8 xx0 = z, xx1 = z, xy0 = z, xy1 = z, dd0 = z, dd1 = z;                         \
            for (int64_t i = lo; i < hi; i += NS_F32_WIDTH) {                                   \
                ns_f8 a0 = FLOATS(p + i), a1 = FLOATS(p + i + 8);                               \
                xx0 += a0 * a0;                                                                 \
                xx1 += a1 * a1;                                                                 \
                if (Q) {                                                                        \
                    ns_f8 b0 = FLOATS(q + i), b1 = FLOATS(q + i + 8);                           \
                    ns_f8 d0 = b0 - a0, d1 = b1 - a1;                                           \
                    xy0 += a0 * b0;                                                             \
                    xy1 += a1 * b1;                                                             \
                    dd0 += d0 * d0;                                                             \
                    dd1 += d1 * d1;                                                             \
                }                                                                               \
            }                                                                                   \
            widen_add(xx0, xx1, &s0, &s1);                                                      \
            if (Q) {                                                                            \
                widen_add(xy0, xy1, &s2, &s3);                                                  \
                widen_add(dd0, dd1, &s4, &s5);                                                  \
            }                                                                                   \
        }                                                                                       \
        acc[0] = s0; acc[1] = s1; acc[2] = s2; acc[3] = s3; acc[4] = s4; acc[5] = s5;           \
    }

NS_F32_LANES(bf16_weight_steps, uint16_t, floats_bf16, 0)
NS_F32_LANES(bf16_pair_steps, uint16_t, floats_bf16, 1)
NS_F32_LANES(float_weight_steps, float, floats_f32, 0)
NS_F32_LANES(float_pair_steps, float, floats_f32, 1)

static int bf16_all_zero(int64_t n, const uint16_t *p) {
    uint16_t any = 0;
    for (int64_t i = 0; i < n; i++) any |= p[i] & 0x7fffu;
    return !any;
}

/* Whether float32 lanes summed the first `n` elements (a multiple of NS_F32_WIDTH) as float64
 * would within the bound above. Every rounding of a product or a sum below float32's normal range
 * is off by at most 2^-150, so a sum of at least n * 2^-100 is off by a relative 2^-48 at most
 * from those; a smaller one (0 included) is taken only where it is exact: all x zero (x^2 and x*y
 * are 0), or y the same bits as x ((y - x)^2 is 0). A non-finite sum is an overflow or a NaN/Inf
 * input. */
static int sums_finite(const double s[3]) {
    return s[0] - s[0] == 0 && s[1] - s[1] == 0 && s[2] - s[2] == 0;
}

static int bf16_f32_trusted(int64_t n, const uint16_t *p, const uint16_t *q, const double s[3]) {
    double floor = (double)n * 0x1p-100;
    if (!sums_finite(s) || n == 0) return sums_finite(s);
    int zero_x = s[0] == 0 && bf16_all_zero(n, p);
    if (s[0] < floor && !zero_x) return 0;
    if (!q) return 1;
    if (!(s[1] >= floor || s[1] <= -floor) && !zero_x) return 0;
    return s[2] >= floor || (s[2] == 0 && memcmp(p, q, (size_t)n * sizeof *p) == 0);
}

/* The float32 lanes' sums of the first `steps` elements of 16-bit p (and q) into `s`; fp16 is
 * converted a block at a time (BLOCK is a multiple of NS_F32_WIDTH * NS_F32_STEPS, so the steps
 * group as they would in one pass). */
static void lanes_of_16bit(int bf16, int64_t steps, const uint16_t *p, const uint16_t *q,
                           double s[3]) {
    ns_d4 acc[6] = {{0}, {0}, {0}, {0}, {0}, {0}};
    if (bf16) {
        (q ? bf16_pair_steps : bf16_weight_steps)(steps, p, q, acc);
    } else {
        float xb[BLOCK], yb[BLOCK];
        for (int64_t lo = 0; lo < steps; lo += BLOCK) {
            int64_t k = steps - lo < BLOCK ? steps - lo : BLOCK;
            half_block(p + lo, k, xb, 0);
            if (q) half_block(q + lo, k, yb, 0);
            (q ? float_pair_steps : float_weight_steps)(k, xb, q ? yb : 0, acc);
        }
    }
    for (int j = 0; j < 3; j++) s[j] = lanes_total(acc[2 * j], acc[2 * j + 1]);
}

/* 16-bit streams (`dtype` bf16 or fp16). Weights, alone or with the previous snapshot's `q`, in
 * float32 lanes, the tail after the last full step in float64; a span the lanes cannot be
 * trusted with, and every span with optimizer state, by the float64 loops. */
static void reduce_16bit(int dtype, int64_t n, const void *x, const void *y, const void *m,
                         const void *v, double *out) {
    int bf16 = dtype == NS_BFLOAT16;
    const uint16_t *p = (const uint16_t *)x, *q = (const uint16_t *)y;
    int64_t steps = n - n % NS_F32_WIDTH;
    double s[3] = {0, 0, 0};
    if (!m && !v) lanes_of_16bit(bf16, steps, p, q, s);
    if (m || v || !(bf16 ? bf16_f32_trusted(steps, p, q, s) : sums_finite(s))) {
        (bf16 ? same_bfloat16 : same_float16)(n, x, y, m, v, out);
        return;
    }
    double t[3] = {0, 0, 0}; /* the tail, in float64 */
    for (int64_t i = steps; i < n; i++) {
        double a = bf16 ? NS_LOAD_bfloat16(p, i) : half_to_float(p[i]);
        t[0] += a * a;
        if (q) {
            double b = bf16 ? NS_LOAD_bfloat16(q, i) : half_to_float(q[i]), d = b - a;
            t[1] += a * b;
            t[2] += d * d;
        }
    }
    out[0] += s[0] + t[0];
    if (q) {
        out[1] += s[1] + t[1];
        out[2] += s[2] + t[2];
    }
}


static void reduce_span(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                        int mt, const void *v, int vt, double *out) {
    int same = (!y || yt == xt) && (!m || mt == xt) && (!v || vt == xt);
    if (!same) {
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
 * (3 doubles, added to), by the path the kernel takes (`path` 0: float32 lanes where trusted) or
 * by the float64 loops a span falls back to (1): for the tests, which compare both with a float64
 * reference. */
void normscope_bf16_sums(int64_t n, const uint16_t *x, const uint16_t *y, double *out, int path) {
    if (path) same_bfloat16(n, x, y, 0, 0, out);
    else reduce_16bit(NS_BFLOAT16, n, x, y, 0, 0, out);
}

/* The ABI version the Python side checks, so a build from another normscope is never called. */
int normscope_fused_abi(void) { return 3; }
