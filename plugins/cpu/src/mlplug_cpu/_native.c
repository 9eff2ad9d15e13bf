/* mlplug_cpu._native: weight-row products that read F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K bytes
 * once, decoding each block in registers/L1 (never a whole F32 weight matrix).
 *
 * Python API (all offsets and strides in bytes; buffers are any contiguous buffer objects):
 *   matmul(ggml_type, w, w_off, w_rs, x, x_off, x_rs, o, o_off, o_rs, M, K, N, threads) -> bool
 *       o[n, m] = sum_k W[m, k] * x[n, k]; row m of W at w_off + m*w_rs (GGUF layout), row n of
 *       x (F32) at x_off + n*x_rs, o[n, m] (F32) at o_off + n*o_rs + 4*m. Returns False, doing
 *       nothing, when o overlaps w or x.
 *   dequantize(ggml_type, w, w_off, w_rs, o, o_off, M, K, threads) -> None
 *       o (F32, rows of K packed) = the decoded rows of W.
 *   supported(ggml_type, K) -> bool, isa() -> str ("avx2" or "generic").
 * threads <= 0 uses OpenMP's default. The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MLPLUG_X86 1
#endif

enum { KIND_F32, KIND_F16, KIND_BF16, KIND_Q8_0, KIND_Q4_0, KIND_Q4_K, KIND_Q6_K, N_KINDS };

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
} kind_info;

static const kind_info KINDS[N_KINDS] = {
    [KIND_F32] = {0, 32, 128, 4},   [KIND_F16] = {1, 32, 64, 2},   [KIND_BF16] = {30, 32, 64, 2},
    [KIND_Q8_0] = {8, 32, 34, 0},   [KIND_Q4_0] = {2, 32, 18, 0},  [KIND_Q4_K] = {12, 256, 144, 0},
    [KIND_Q6_K] = {14, 256, 210, 0},
};

static float half_to_float(uint16_t h) {
    /* Exact for normals, subnormals (rescaled by a power of two), infinities and NaNs. */
    const uint32_t em = (uint32_t)(h & 0x7fff) << 13;
    uint32_t bits;
    float f;
    if (em >= (0x7c00u << 13)) {
        bits = em | 0x7f800000u;
        memcpy(&f, &bits, 4);
    } else {
        memcpy(&f, &em, 4);
        f *= 0x1p112f;
    }
    memcpy(&bits, &f, 4);
    bits |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &bits, 4);
    return f;
}

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
#undef SFX

#ifdef MLPLUG_X86
/* The same kernels for AVX2 + FMA + F16C, chosen at run time when the CPU has them. */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX(name) name##_avx2
#include "_native_kernels.h"
#undef SFX
#pragma GCC pop_options
#endif

static const kernel_set *active = KERNELS_generic;
static const char *active_isa = "generic";

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

static int pick_threads(long threads, int64_t work) {
#ifdef _OPENMP
    if (work < (1 << 16)) return 1;
    return threads > 0 ? (int)threads : omp_get_max_threads();
#else
    (void)threads;
    (void)work;
    return 1;
#endif
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
        const uint8_t *wb = (const uint8_t *)w.buf + w_off;
        const float *xb = (const float *)((const char *)x.buf + x_off);
        float *ob = (float *)((char *)o.buf + o_off);
        const ptrdiff_t xs = (ptrdiff_t)(x_rs / 4), os = (ptrdiff_t)(o_rs / 4);
        const int64_t block = KINDS[kind].block;
        const int64_t nb = k / block, tail0 = nb * block;
        const kernel_set ks = active[kind];
        const int nth = pick_threads(threads, m_rows * k * (n < 8 ? n : 8));
        Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1)
        for (int64_t m = 0; m < m_rows; m++) {
            const uint8_t *row = wb + m * w_rs;
            ks.rows(row, xb, xs, ob + m, os, nb, n);
            if (tail0 < k) {
                for (int64_t i = 0; i < n; i++) {
                    float t = 0.0f;
                    for (int64_t j = tail0; j < k; j++) t += scalar_at(kind, row, j) * xb[i * xs + j];
                    ob[m + i * os] += t;
                }
            }
        }
        Py_END_ALLOW_THREADS
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
        const uint8_t *wb = (const uint8_t *)w.buf + w_off;
        float *ob = (float *)((char *)o.buf + o_off);
        const int64_t block = KINDS[kind].block;
        const int64_t nb = k / block, tail0 = nb * block;
        const kernel_set ks = active[kind];
        const int nth = pick_threads(threads, m_rows * k);
        Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1)
        for (int64_t m = 0; m < m_rows; m++) {
            const uint8_t *row = wb + m * w_rs;
            float *out = ob + m * k;
            ks.deqrow(row, out, nb);
            for (int64_t j = tail0; j < k; j++) out[j] = scalar_at(kind, row, j);
        }
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

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(active_isa);
}

static PyMethodDef METHODS[] = {
    {"matmul", py_matmul, METH_VARARGS, "o[n, m] = sum_k W[m, k] x[n, k] (see module doc)."},
    {"dequantize", py_dequantize, METH_VARARGS, "Decode weight rows to packed F32 rows."},
    {"supported", py_supported, METH_VARARGS, "Whether a ggml type with row length K is handled."},
    {"isa", py_isa, METH_NOARGS, "The instruction set the kernels run with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native weight-row products for the mlplug cpu plugin (see _native.c).", -1, METHODS,
};

PyMODINIT_FUNC PyInit__native(void) {
#ifdef MLPLUG_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        active = KERNELS_avx2;
        active_isa = "avx2";
    }
#endif
    return PyModule_Create(&MODULE);
}
