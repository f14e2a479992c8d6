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
 * lanes: ~1e-13 relative where the engine promises 1e-6. Non-finite inputs make k = 0
 * non-finite; the caller recounts those rare entries.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

enum { NS_FLOAT32 = 0, NS_FLOAT64 = 1, NS_BFLOAT16 = 2, NS_FLOAT16 = 3 };

#define BLOCK 512 /* elements converted per step: 4 KiB of doubles per stream, L1-resident */

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

/* IEEE half → float by bits: shift the exponent+mantissa into place and rescale by 2^112, exact
 * for normals and subnormals; Inf/NaN (exponent 31) get their exponent set. */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    union { float f; uint32_t u; } value = {.u = em << 13};
    value.f *= 0x1p112f;
    value.u = (em >= 0x7c00u ? (0x7f800000u | (em << 13)) : value.u) | sign;
    return value.f;
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
    default: {
        const uint16_t *s = (const uint16_t *)src;
        for (i = 0; i < n; i++) dst[i] = half_to_float(s[i]);
        break;
    }
    }
}

static inline const void *at(const void *base, int dtype, int64_t offset) {
    int64_t size = dtype == NS_FLOAT64 ? 8 : dtype == NS_FLOAT32 ? 4 : 2;
    return (const char *)base + offset * size;
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
 * registers. One function per (dtype, streams present), so every inner loop vectorises. */
#define NS_LOAD_float32(p, i) ((double)((const float *)(p))[i])
#define NS_LOAD_float64(p, i) (((const double *)(p))[i])
#define NS_LOAD_bfloat16(p, i) ((double)bits_to_float((uint32_t)((const uint16_t *)(p))[i] << 16))
#define NS_LOAD_float16(p, i) ((double)half_to_float(((const uint16_t *)(p))[i]))

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
    NS_CLONES static void optim_##T(int64_t n, const void *x, const void *y, const void *m,    \
                                    const void *v, double *out) {                               \
        double xx = 0, xy = 0, dd = 0, xm = 0, mm = 0, vs = 0;                                  \
        _Pragma("omp simd reduction(+ : xx, xy, dd, xm, mm, vs)") for (int64_t i = 0; i < n;    \
                                                                       i++) {                  \
            double a = NS_LOAD_##T(x, i), c = NS_LOAD_##T(m, i);                                \
            xx += a * a;                                                                        \
            xm += a * c;                                                                        \
            mm += c * c;                                                                        \
            if (y) {                                                                            \
                double b = NS_LOAD_##T(y, i), d = b - a;                                        \
                xy += a * b;                                                                    \
                dd += d * d;                                                                    \
            }                                                                                   \
            if (v) vs += NS_LOAD_##T(v, i);                                                     \
        }                                                                                       \
        out[0] += xx; out[1] += xy; out[2] += dd; out[3] += xm; out[4] += mm; out[5] += vs;    \
    }

NS_SAME(float32)
NS_SAME(float64)
NS_SAME(bfloat16)
NS_SAME(float16)

static void reduce_entry(int64_t n, const void *x, int xt, const void *y, int yt, const void *m,
                         int mt, const void *v, int vt, double *out) {
    int same = (!y || yt == xt) && (!m || mt == xt) && (!v || vt == xt);
    if (!same || (v && !m)) {
        reduce_mixed(n, x, xt, y, yt, m, mt, v, vt, out);
        return;
    }
#define NS_DISPATCH(T)                                                                          \
    if (m) optim_##T(n, x, y, m, v, out);                                                       \
    else if (y) pair_##T(n, x, y, out);                                                         \
    else weight_##T(n, x, out);
    switch (xt) {
    case NS_FLOAT32: NS_DISPATCH(float32) break;
    case NS_FLOAT64: NS_DISPATCH(float64) break;
    case NS_BFLOAT16: NS_DISPATCH(bfloat16) break;
    default: NS_DISPATCH(float16) break;
    }
#undef NS_DISPATCH
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

/* The ABI version the Python side checks, so a build from another normscope is never called. */
int normscope_fused_abi(void) { return 2; }
