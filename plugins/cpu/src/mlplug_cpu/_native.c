/* mlplug_cpu._native: weight-row products that read GGUF weight bytes once, never
 * materialising a whole F32 weight matrix.
 *
 * * Block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: the F32 activation
 *   is quantised once per product to int8 blocks of 32 and multiplied with integer dot products
 *   (AVX512-VNNI vpdpbusd, AVX2 maddubs, or portable C; _native_qdot.h), tiles of 4 weight rows
 *   x 4 activation rows; with AVX512-VNNI, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K use 16-row
 *   tiles on 512-bit registers (a lane per weight row, the GGUF blocks transposed in
 *   registers) x up to 8 activation rows.
 * * F32, F16, BF16 (and the float path of Q8_0/Q4_0/Q4_K/Q6_K): each block is decoded to F32 in
 *   registers/L1 and FMA'd into F32 accumulators (_native_kernels.h); with AVX-512, F16 and
 *   BF16 run in tiles of 4 weight rows x 6 activation rows on 512-bit registers.
 *
 * The instruction set is chosen at import by CPUID; the build uses no -march flag. Threads come
 * from one pool that sleeps when idle (_native_pool.c).
 *
 * Python API (all offsets and strides in bytes; buffers are any contiguous buffer objects):
 *   matmul(ggml_type, w, w_off, w_rs, x, x_off, x_rs, o, o_off, o_rs, M, K, N, threads) -> bool
 *       o[n, m] = sum_k W[m, k] * x[n, k]; row m of W at w_off + m*w_rs (GGUF layout), row n of
 *       x (F32) at x_off + n*x_rs, o[n, m] (F32) at o_off + n*o_rs + 4*m. Returns False, doing
 *       nothing, when o overlaps w or x, or (block types) when x holds an inf or NaN: the
 *       caller's exact float path then runs.
 *   dequantize(ggml_type, w, w_off, w_rs, o, o_off, M, K, threads) -> None
 *       o (F32, rows of K packed) = the decoded rows of W (types with a float decoder).
 *   supported(ggml_type, K) -> bool, isa() -> str ("avx512vnni", "avx2" or "generic"),
 *   default_threads() -> int (the CPUs this process may run on), pool_workers() -> int (threads
 *   the pool has started; a run on N threads uses the caller and N - 1 of them),
 *   set_isa(name) -> bool (use one instruction set's kernels, for tests), wide_float() -> bool
 *   (F16/BF16 products of any N run natively: the AVX-512 FMA tiles of _native_qdot.h).
 * threads <= 0 uses default_threads(). The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native_half.h"
#include "_native_ops.h"
#include "_native_pool.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MLPLUG_X86 1
#endif

enum {
    KIND_F32, KIND_F16, KIND_BF16, KIND_Q8_0, KIND_Q4_0, KIND_Q4_K, KIND_Q6_K,
    KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_Q2_K, KIND_Q3_K, KIND_Q5_K, N_KINDS
};

/* Block types with an integer product (_native_qdot.h). */
enum { QK_Q4_0, QK_Q4_1, QK_Q5_0, QK_Q5_1, QK_Q8_0, QK_Q2_K, QK_Q3_K, QK_Q4_K, QK_Q5_K, QK_Q6_K,
       N_QKINDS };

/* A quantised activation block of 32: scale, d*sum(q[0:16]), d*sum(q[16:32]), d*sum(q). */
typedef struct {
    float d, s0, s1, s;
} xblock;

typedef void (*qgemm_fn)(const uint8_t *w, ptrdiff_t w_rs, int64_t m0, int64_t m1,
                         const int8_t *xq, const xblock *xb, int64_t k, int64_t n, float *o,
                         ptrdiff_t os);

typedef struct {
    void (*rows)(const uint8_t *row, const float *x, ptrdiff_t xs, float *o, ptrdiff_t os,
                 int64_t nb, int64_t n);
    void (*deqrow)(const uint8_t *row, float *o, int64_t nb);
} kernel_set;

typedef struct {
    int ggml_type;
    int block;     /* elements per block (32 for the scalar types: a chunk) */
    int bytes;     /* bytes per block */
    int elem;      /* bytes per element of a scalar type, 0 for block types (no tail) */
    int qkind;     /* index into the integer kernels, -1 for the float types */
} kind_info;

static const kind_info KINDS[N_KINDS] = {
    [KIND_F32] = {0, 32, 128, 4, -1},          [KIND_F16] = {1, 32, 64, 2, -1},
    [KIND_BF16] = {30, 32, 64, 2, -1},         [KIND_Q8_0] = {8, 32, 34, 0, QK_Q8_0},
    [KIND_Q4_0] = {2, 32, 18, 0, QK_Q4_0},     [KIND_Q4_K] = {12, 256, 144, 0, QK_Q4_K},
    [KIND_Q6_K] = {14, 256, 210, 0, QK_Q6_K},  [KIND_Q4_1] = {3, 32, 20, 0, QK_Q4_1},
    [KIND_Q5_0] = {6, 32, 22, 0, QK_Q5_0},     [KIND_Q5_1] = {7, 32, 24, 0, QK_Q5_1},
    [KIND_Q2_K] = {10, 256, 84, 0, QK_Q2_K},   [KIND_Q3_K] = {11, 256, 110, 0, QK_Q3_K},
    [KIND_Q5_K] = {13, 256, 176, 0, QK_Q5_K},
};

static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Portable build of the kernels (the target's baseline ISA, SSE2 on x86-64). */
#define SFX(name) name##_generic
#include "_native_kernels.h"
#include "_native_qdot.h"
#undef SFX

#ifdef MLPLUG_X86
/* The same kernels for AVX2 + FMA + F16C, chosen at run time when the CPU has them. */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX(name) name##_avx2
#define QDOT_AVX2 1
#include "_native_kernels.h"
#include "_native_qdot.h"
#undef QDOT_AVX2
#undef SFX
#pragma GCC pop_options

/* The integer products once more with AVX512-VNNI (vpdpbusd on 256-bit registers). */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define SFX(name) name##_vnni
#define QDOT_VNNI 1
#include "_native_qdot.h"
#undef QDOT_VNNI
#undef SFX
#pragma GCC pop_options
#endif

static const kernel_set *active = KERNELS_generic;
static const qgemm_fn *active_q = QGEMM_generic;
static int (*active_quantize)(const float *, int64_t, int8_t *, xblock *) = quantize_x_generic;
static const char *active_isa = "generic";
/* F16 and BF16 weights on 512-bit registers (NULL: the row kernels of `active`). */
typedef void (*fgemm_fn)(const uint8_t *w, ptrdiff_t w_rs, int64_t m0, int64_t m1, const float *x,
                         ptrdiff_t xs, int64_t k, int64_t n, float *o, ptrdiff_t os);
static fgemm_fn active_f16 = NULL, active_bf16 = NULL;

static int kind_of(int ggml_type) {
    for (int i = 0; i < N_KINDS; i++)
        if (KINDS[i].ggml_type == ggml_type) return i;
    return -1;
}

static float scalar_at(int kind, const uint8_t *row, int64_t k) {
    uint16_t h;
    uint32_t u;
    float f;
    switch (kind) {
        case KIND_F32: memcpy(&f, row + 4 * k, 4); return f;
        case KIND_F16: memcpy(&h, row + 2 * k, 2); return half_to_float(h);
        default:
            memcpy(&h, row + 2 * k, 2);
            u = (uint32_t)h << 16;
            memcpy(&f, &u, 4);
            return f;
    }
}

static int64_t row_bytes(int kind, int64_t k) {
    const kind_info *info = &KINDS[kind];
    if (info->elem) return k * info->elem;
    return k / info->block * info->bytes;
}

static int default_threads(void) {
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    return 1;
}

static int pick_threads(long threads, int64_t work) {
    if (work < (1 << 16)) return 1;
    if (threads <= 0) return default_threads();
    return threads > MLPLUG_POOL_MAX ? MLPLUG_POOL_MAX : (int)threads;
}

/* Check that [off, off + span) lies in a buffer of len bytes; span from rows of a given size. */
static int check_window(const char *what, Py_ssize_t len, long long off, long long rs,
                        long long rows, long long rowlen) {
    if (rows == 0 || rowlen == 0) return 0;
    if (off < 0 || rs < 0) {
        PyErr_Format(PyExc_ValueError, "[cpu native] %s: negative offset or stride", what);
        return -1;
    }
    long long end = off + (rows - 1) * rs + rowlen;
    if (end > (long long)len) {
        PyErr_Format(PyExc_ValueError, "[cpu native] %s: window ends at %lld past %zd bytes",
                     what, end, len);
        return -1;
    }
    return 0;
}

static int ranges_overlap(const char *a, long long a_lo, long long a_hi, const char *b,
                          long long b_lo, long long b_hi) {
    const char *a0 = a + a_lo, *a1 = a + a_hi, *b0 = b + b_lo, *b1 = b + b_hi;
    return a0 < b1 && b0 < a1;
}

static int check_kind(int ggml_type, long long k, int *kind) {
    *kind = kind_of(ggml_type);
    if (*kind < 0) {
        PyErr_Format(PyExc_ValueError, "[cpu native] unsupported ggml type %d", ggml_type);
        return -1;
    }
    if (KINDS[*kind].elem == 0 && k % KINDS[*kind].block) {
        PyErr_Format(PyExc_ValueError, "[cpu native] K=%lld is not a multiple of the block", k);
        return -1;
    }
    return 0;
}

/* One product or decode, shared by the threads of a pool run (each takes chunks of rows). */
typedef struct {
    int kind;
    const uint8_t *w;
    ptrdiff_t w_rs;   /* bytes */
    const float *x;
    ptrdiff_t xs, os; /* floats */
    float *o;
    int64_t m, k, n;
    int64_t chunk; /* weight rows per work item */
    int64_t next;  /* the next work item (atomic) */
    int64_t next_row; /* the next activation row to quantise (atomic) */
    int8_t *xq;    /* the quantised activation (block types) */
    xblock *xbk;
    int bad; /* an activation value was not finite (atomic) */
} job;

static void float_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    job *jb = arg;
    const kernel_set ks = active[jb->kind];
    const int64_t block = KINDS[jb->kind].block, nb = jb->k / block, tail0 = nb * block;
    /* decode (a few rows of x) stays on the row kernels: as fast, and BF16 faster there */
    const fgemm_fn fg = jb->n <= 4 ? NULL
                        : jb->kind == KIND_F16 ? active_f16
                        : jb->kind == KIND_BF16 ? active_bf16
                                                 : NULL;
    for (int64_t c; (c = mlplug_pool_next(&jb->next) * jb->chunk) < jb->m;) {
        const int64_t end = c + jb->chunk < jb->m ? c + jb->chunk : jb->m;
        if (fg != NULL) {
            fg(jb->w, jb->w_rs, c, end, jb->x, jb->xs, jb->k, jb->n, jb->o, jb->os);
            continue;
        }
        for (int64_t m = c; m < end; m++) {
            const uint8_t *row = jb->w + m * jb->w_rs;
            ks.rows(row, jb->x, jb->xs, jb->o + m, jb->os, nb, jb->n);
            for (int64_t i = 0; tail0 < jb->k && i < jb->n; i++) {
                float t = 0.0f;
                for (int64_t j = tail0; j < jb->k; j++)
                    t += scalar_at(jb->kind, row, j) * jb->x[i * jb->xs + j];
                jb->o[m + i * jb->os] += t;
            }
        }
    }
}

static void quantize_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    job *jb = arg;
    const int64_t nb = jb->k / QK;
    int bad = 0;
    for (int64_t i; (i = mlplug_pool_next(&jb->next_row)) < jb->n;)
        bad |= active_quantize(jb->x + i * jb->xs, jb->k, jb->xq + i * jb->k, jb->xbk + i * nb);
    if (bad) __atomic_store_n(&jb->bad, 1, __ATOMIC_RELAXED);
}

static void qgemm_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    job *jb = arg;
    const qgemm_fn fn = active_q[KINDS[jb->kind].qkind];
    for (int64_t c; (c = mlplug_pool_next(&jb->next) * jb->chunk) < jb->m;) {
        const int64_t end = c + jb->chunk < jb->m ? c + jb->chunk : jb->m;
        fn(jb->w, jb->w_rs, c, end, jb->xq, jb->xbk, jb->k, jb->n, jb->o, jb->os);
    }
}

static void dequantize_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    job *jb = arg;
    const kernel_set ks = active[jb->kind];
    const int64_t block = KINDS[jb->kind].block, nb = jb->k / block, tail0 = nb * block;
    for (int64_t c; (c = mlplug_pool_next(&jb->next) * jb->chunk) < jb->m;) {
        const int64_t end = c + jb->chunk < jb->m ? c + jb->chunk : jb->m;
        for (int64_t m = c; m < end; m++) {
            const uint8_t *row = jb->w + m * jb->w_rs;
            float *out = jb->o + m * jb->k;
            ks.deqrow(row, out, nb);
            for (int64_t j = tail0; j < jb->k; j++) out[j] = scalar_at(jb->kind, row, j);
        }
    }
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type;
    Py_buffer w, x, o;
    long long w_off, w_rs, x_off, x_rs, o_off, o_rs, m_rows, k, n;
    long threads;
    if (!PyArg_ParseTuple(args, "iy*LLy*LLw*LLLLLl", &ggml_type, &w, &w_off, &w_rs, &x, &x_off,
                          &x_rs, &o, &o_off, &o_rs, &m_rows, &k, &n, &threads))
        return NULL;
    PyObject *result = NULL;
    int kind;
    if (check_kind(ggml_type, k, &kind) < 0) goto done;
    if (m_rows < 0 || k < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "[cpu native] negative extent");
        goto done;
    }
    const long long wlen = row_bytes(kind, k);
    if (check_window("weight", w.len, w_off, w_rs, m_rows, wlen) < 0 ||
        check_window("x", x.len, x_off, x_rs, n, 4 * k) < 0 ||
        check_window("out", o.len, o_off, o_rs, n, 4 * m_rows) < 0)
        goto done;
    if ((x_rs | o_rs | x_off | o_off) & 3) {
        PyErr_SetString(PyExc_ValueError, "[cpu native] F32 rows must be 4-byte aligned");
        goto done;
    }
    if (m_rows == 0 || n == 0) {
        result = Py_True;
        goto done;
    }
    const long long o_end = o_off + (n - 1) * o_rs + 4 * m_rows;
    if (ranges_overlap(o.buf, o_off, o_end, w.buf, w_off, w_off + (m_rows - 1) * w_rs + wlen) ||
        (k && ranges_overlap(o.buf, o_off, o_end, x.buf, x_off, x_off + (n - 1) * x_rs + 4 * k))) {
        result = Py_False;
        goto done;
    }
    {
        job jb = {.kind = kind,
                  .w = (const uint8_t *)w.buf + w_off,
                  .w_rs = (ptrdiff_t)w_rs,
                  .x = (const float *)((const char *)x.buf + x_off),
                  .xs = (ptrdiff_t)(x_rs / 4),
                  .o = (float *)((char *)o.buf + o_off),
                  .os = (ptrdiff_t)(o_rs / 4),
                  .m = m_rows,
                  .k = k,
                  .n = n};
        const int nth = pick_threads(threads, m_rows * k * (n < 8 ? n : 8));
        /* Chunks of whole 16-row tiles (the VNNI kernels' unit), about 8 or more per thread. */
        const int64_t tiles = m_rows / (16 * 8 * nth);
        jb.chunk = m_rows >= 16 * 2 * nth ? 16 * (tiles < 1 ? 1 : tiles > 8 ? 8 : tiles) : 4;
        int ok = 1;
        if (KINDS[kind].qkind >= 0) {
            const int64_t nb = k / QK;
            jb.xq = malloc((size_t)(n * k) + 64);
            jb.xbk = malloc(sizeof(xblock) * (size_t)(n * nb) + 64);
            if (jb.xq == NULL || jb.xbk == NULL) {
                free(jb.xq);
                free(jb.xbk);
                PyErr_NoMemory();
                goto done;
            }
            Py_BEGIN_ALLOW_THREADS
            mlplug_pool_run(n * k >= (1 << 16) ? nth : 1, quantize_task, &jb);
            if (!jb.bad) {
                mlplug_pool_run(nth, qgemm_task, &jb);
            }
            Py_END_ALLOW_THREADS
            ok = !jb.bad;
            free(jb.xq);
            free(jb.xbk);
        } else {
            Py_BEGIN_ALLOW_THREADS
            mlplug_pool_run(nth, float_task, &jb);
            Py_END_ALLOW_THREADS
        }
        if (!ok) {
            result = Py_False;
            goto done;
        }
    }
    result = Py_True;
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    PyBuffer_Release(&o);
    Py_XINCREF(result);
    return result;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type;
    Py_buffer w, o;
    long long w_off, w_rs, o_off, m_rows, k;
    long threads;
    if (!PyArg_ParseTuple(args, "iy*LLw*LLLl", &ggml_type, &w, &w_off, &w_rs, &o, &o_off, &m_rows,
                          &k, &threads))
        return NULL;
    PyObject *result = NULL;
    int kind;
    if (check_kind(ggml_type, k, &kind) < 0) goto done;
    if (active[kind].deqrow == NULL) {
        PyErr_Format(PyExc_ValueError, "[cpu native] dequantize: no decoder for ggml type %d",
                     ggml_type);
        goto done;
    }
    if (m_rows < 0 || k < 0) {
        PyErr_SetString(PyExc_ValueError, "[cpu native] negative extent");
        goto done;
    }
    const long long wlen = row_bytes(kind, k);
    if (check_window("weight", w.len, w_off, w_rs, m_rows, wlen) < 0 ||
        check_window("out", o.len, o_off, 4 * k, m_rows, 4 * k) < 0)
        goto done;
    if (m_rows && k &&
        ranges_overlap(o.buf, o_off, o_off + 4 * k * m_rows, w.buf, w_off,
                       w_off + (m_rows - 1) * w_rs + wlen)) {
        PyErr_SetString(PyExc_ValueError, "[cpu native] dequantize: output overlaps the weight");
        goto done;
    }
    {
        job jb = {.kind = kind,
                  .w = (const uint8_t *)w.buf + w_off,
                  .w_rs = (ptrdiff_t)w_rs,
                  .o = (float *)((char *)o.buf + o_off),
                  .m = m_rows,
                  .k = k,
                  .chunk = 16};
        const int nth = pick_threads(threads, m_rows * k);
        Py_BEGIN_ALLOW_THREADS
        mlplug_pool_run(nth, dequantize_task, &jb);
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&o);
    Py_XINCREF(result);
    return result;
}

static PyObject *py_supported(PyObject *self, PyObject *args) {
    (void)self;
    int ggml_type;
    long long k;
    if (!PyArg_ParseTuple(args, "iL", &ggml_type, &k)) return NULL;
    const int kind = kind_of(ggml_type);
    if (kind < 0 || k < 0 || (KINDS[kind].elem == 0 && k % KINDS[kind].block)) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* Select the kernels of one instruction set; 0 when the CPU lacks it. */
static int select_isa(const char *name) {
    if (strcmp(name, "generic") == 0) {
        active = KERNELS_generic;
        active_q = QGEMM_generic;
        active_quantize = quantize_x_generic;
        active_f16 = active_bf16 = NULL;
        active_isa = "generic";
        return 1;
    }
#ifdef MLPLUG_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("f16c");
    const int vnni = avx2 && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("avx512vnni");
    if ((strcmp(name, "avx2") == 0 && avx2) || (strcmp(name, "avx512vnni") == 0 && vnni)) {
        active = KERNELS_avx2;
        active_q = name[3] == '2' ? QGEMM_avx2 : QGEMM_vnni;
        active_quantize = name[3] == '2' ? quantize_x_avx2 : quantize_x_vnni;
        active_isa = name[3] == '2' ? "avx2" : "avx512vnni";
        active_f16 = name[3] == '2' ? NULL : fgemm_f16_vnni;
        active_bf16 = name[3] == '2' ? NULL : fgemm_bf16_vnni;
        return 1;
    }
#endif
    return 0;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (select_isa(name)) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *py_default_threads(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(default_threads());
}

static PyObject *py_pool_workers(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(mlplug_pool_workers());
}

static PyObject *py_wide_float(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(active_f16 != NULL);
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(active_isa);
}

/* Fused attention lives in _attention.c. */
PyObject *mlplug_attention(PyObject *self, PyObject *args);
PyObject *mlplug_attention_isa(PyObject *self, PyObject *args);

static PyMethodDef METHODS[] = {
    {"attention", mlplug_attention, METH_VARARGS, "Fused attention (see _attention.c)."},
    {"attention_isa", mlplug_attention_isa, METH_NOARGS, "The attention kernel's ISA."},
    {"matmul", py_matmul, METH_VARARGS, "o[n, m] = sum_k W[m, k] x[n, k] (see module doc)."},
    {"dequantize", py_dequantize, METH_VARARGS, "Decode weight rows to packed F32 rows."},
    {"supported", py_supported, METH_VARARGS, "Whether a ggml type with row length K is handled."},
    {"isa", py_isa, METH_NOARGS, "The instruction set the kernels run with."},
    {"wide_float", py_wide_float, METH_NOARGS,
     "Whether F16/BF16 products of any size run natively (512-bit FMA tiles)."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "Use the kernels of one instruction set (generic, avx2, avx512vnni); False if absent."},
    {"pool_workers", py_pool_workers, METH_NOARGS, "Worker threads the pool has started."},
    {"default_threads", py_default_threads, METH_NOARGS, "The CPUs this process may run on."},
    MLPLUG_OPS_METHODS, /* the small ops (_native_ops.c) */
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native weight-row products for the mlplug cpu plugin (see _native.c).", -1, METHODS,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (!select_isa("avx512vnni") && !select_isa("avx2")) select_isa("generic");
    return PyModule_Create(&MODULE);
}
