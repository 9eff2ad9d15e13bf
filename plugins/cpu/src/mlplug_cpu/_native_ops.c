/* mlplug_cpu._native small ops: the non-product kernels of a decode step (SEMANTICS §5.2, §5.3,
 * §5.5, §5.7, §5.10) in C, so that one call costs a few microseconds instead of the tens that
 * numpy's temporaries and Python's bookkeeping cost per op.
 *
 * Python API (part of the _native module; _native.c lists it through _native_ops.h). Every
 * operand is an mlplug.device.TensorRef, read here through its buffer's `data` (a numpy byte
 * array), offset, ne, nb and dtype; `out` is written. Each call returns True when it computed
 * the result, False (having written nothing) for what it does not handle: a dtype outside the
 * list, a buffer that is not host memory, extents that do not fit the op, or an output that
 * partly overlaps an input (an output equal to an element-wise input is fine). The caller then
 * runs its numpy path.
 *   ops_binary(op, out, a, b, threads)      op 0 add, 1 sub, 2 mul, 3 div; b tiled over a.
 *   ops_rms_norm(out, x, w, r, eps, threads) x / sqrt(mean(x²) + eps) [· w] [+ r]; w, r None
 *                                            or tiled over x (rms_norm, rms_norm_add).
 *   ops_softmax(out, x, threads)            per row along dim 0.
 *   ops_gated(kind, out, a, b, threads)     kind 0 silu(a)·b (swiglu), 1 gelu(a)·b (geglu).
 *   ops_unary(kind, out, x, a, b, threads)  kind 0 scale (x·a), 1 clamp (lo a, hi b), 2 neg,
 *                                            3 sqr, 4 sqrt, 5 relu, 6 silu, 7 gelu, 8 sigmoid,
 *                                            9 exp (sin, cos, tanh stay in numpy).
 *   ops_rope(out, x, cos, sin, mode, threads) the fused rope op (mode 0 normal, 2 neox).
 *   ops_set_rows(out, a, ids)               out[:, ids[r], j, k] = a[:, r, j, k], converted
 *                                            (a Q8_0/Q4_0 out quantised bit for bit as gguf).
 *   ops_rows(out, a, ids)                   out[:, i, j, k] = a[:, ids[i, j, k], j, k].
 *   ops_isa() -> str, ops_set_isa(name) -> bool   "avx2" or "generic" (tests use both).
 * Float operands and results are F32, F16 or BF16 (computed in F32, rounded once, F16 exactly
 * as numpy's astype rounds, BF16 as mlplug's encoder); ids are I32; a rows table may also be
 * I32, Q8_0 or Q4_0. set_rows and rows raise IndexError for an id out of range, before writing.
 * Calls with at least OPS_PARALLEL elements (prompt batches) run on the extension's pool
 * (_native_pool.h) with the GIL released; smaller ones run inline and keep it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native_half.h"
#include "_native_ops.h"
#include "_native_pool.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OPS_X86 1
#endif

/* mlplug DType values (not ggml ids). */
enum { DT_F32 = 1, DT_F16 = 2, DT_Q8_0 = 3, DT_Q4_0 = 4, DT_I32 = 5, DT_BF16 = 7 };
enum { OPS_ADD = 0, OPS_SUB = 1, OPS_MUL = 2, OPS_DIV = 3 };
enum { OPS_SILU = 0, OPS_GELU = 1 };
enum { OPS_SCALE, OPS_CLAMP, OPS_NEG, OPS_SQR, OPS_SQRT, OPS_RELU, OPS_SILU_1, OPS_GELU_1,
       OPS_SIGMOID, OPS_EXP, OPS_N_UNARY };

/* Elements from which a call is split over the pool's threads (about 30 µs of work). */
#define OPS_PARALLEL (1 << 16)

typedef struct {
    void (*binary)(int op, const float *a, const float *b, int64_t bn, float *o, int64_t n);
    float (*sumsq)(const float *x, int64_t n);
    void (*div1)(const float *x, float d, float *o, int64_t n);
    void (*softmax)(const float *x, float *o, int64_t n);
    void (*gate)(int kind, const float *x, float *o, int64_t n);
    void (*rope)(int mode, const float *x, const float *c, const float *s, float *o,
                 int64_t n_rot, int64_t d);
    void (*f16_to_f32)(const uint16_t *x, float *o, int64_t n);
    void (*f32_to_f16)(const float *x, uint16_t *o, int64_t n);
    void (*bf16_to_f32)(const uint16_t *x, float *o, int64_t n);
    void (*f32_to_bf16)(const float *x, uint16_t *o, int64_t n);
    void (*unary)(int kind, const float *x, float a, float b, float *o, int64_t n);
} ops_kernels;

/* F32 -> F16 bits exactly as numpy's astype(float16): round to nearest even (F. Giesen's
 * float_to_half_fast3_rtne), overflow to ±inf, NaN payload truncated to its top 10 bits (0x7c01
 * when none is left), sign kept. */
static inline uint16_t ops_f32_to_f16_1(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    uint32_t o;
    if (x >= 0x47800000u) { /* >= 2^16: overflow, inf or NaN */
        if (x > 0x7f800000u) {
            o = 0x7c00u | ((x & 0x7fffffu) >> 13);
            if (o == 0x7c00u) o = 0x7c01u;
        } else {
            o = 0x7c00u;
        }
    } else if (x < 0x38800000u) { /* below 2^-14: a subnormal half or zero */
        float v;
        memcpy(&v, &x, 4);
        v += 0.5f; /* the F32 addition rounds to nearest even at the half's last bit */
        uint32_t b;
        memcpy(&b, &v, 4);
        o = b - 0x3f000000u;
    } else {
        o = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
    }
    return (uint16_t)(o | sign);
}

/* F32 -> Q8_0 / Q4_0 blocks, bit for bit as gguf.quants.quantize (= ggml's reference
 * quantisers; SEMANTICS §3.2): Q8_0 d = max|x| / 127, q = round half away from zero (x · 1/d);
 * Q4_0 d = (the first value of largest magnitude) / -8, q = min(15, trunc(x · 1/d + 8.5)); d
 * stored as F16, 1/d taken as 0 when d is 0. Each product and sum is rounded to F32 on its own:
 * a fused multiply-add would change q where x · 1/d + 8.5 lands near an integer, so these are
 * compiled without contraction (and outside the AVX2 region, which has FMA). The caller has
 * checked that every value is finite. */
#if defined(__GNUC__) && !defined(__clang__)
#define OPS_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else /* clang contracts only within one expression by default; each step here is its own */
#define OPS_NO_CONTRACT
#endif

OPS_NO_CONTRACT static void ops_quantize_row(int dtype, const float *x, uint8_t *p, ptrdiff_t nb0,
                                             int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, p += nb0) {
        float d, id;
        if (dtype == DT_Q8_0) {
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
            d = amax / 127.0f;
            id = d == 0.0f ? 0.0f : 1.0f / d;
            for (int j = 0; j < 32; j++) {
                const float v = x[j] * id;
                p[2 + j] = (uint8_t)(int8_t)roundf(v);
            }
        } else {
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < 32; j++)
                if (fabsf(x[j]) > amax) {
                    amax = fabsf(x[j]);
                    max = x[j];
                }
            d = max / -8.0f;
            id = d == 0.0f ? 0.0f : 1.0f / d;
            uint8_t q[32];
            for (int j = 0; j < 32; j++) {
                const float v = x[j] * id;
                const float t = truncf(v + 8.5f);
                q[j] = t > 15.0f ? 15 : (uint8_t)t;
            }
            for (int j = 0; j < 16; j++) p[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        }
        const uint16_t h = ops_f32_to_f16_1(d);
        memcpy(p, &h, 2);
    }
}

static int ops_all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

#define SFX(name) name##_generic
#include "_native_ops_kernels.h"
#undef SFX

#ifdef OPS_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX(name) name##_avx2
#define OPS_F16C 1
#include "_native_ops_kernels.h"
#undef OPS_F16C
#undef SFX
#pragma GCC pop_options
#endif

static const ops_kernels *ops_active;
static const char *ops_isa_name;

static int ops_select(const char *name) {
    if (strcmp(name, "generic") == 0) {
        ops_active = &OPS_KERNELS_generic;
        ops_isa_name = "generic";
        return 1;
    }
#ifdef OPS_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        ops_active = &OPS_KERNELS_avx2;
        ops_isa_name = "avx2";
        return 1;
    }
#endif
    return 0;
}

static const ops_kernels *ops_kernels_now(void) {
    if (!ops_active && !ops_select("avx2")) ops_select("generic");
    return ops_active;
}

/* ---- TensorRef windows ------------------------------------------------------------------- */

typedef struct {
    uint8_t *base;            /* element (0, 0, 0, 0) */
    const uint8_t *lo, *hi;   /* the bytes the window touches, [lo, hi) */
    int dtype, block, bytes;  /* elements per block (1 for scalars), bytes per block */
    int64_t ne[4];
    ptrdiff_t nb[4];
    Py_buffer view;
    int held;
} ops_ref;

static PyObject *s_buffer, *s_data, *s_offset, *s_ne, *s_nb, *s_dtype;

static int ops_strings(void) {
    if (s_dtype) return 0;
    s_buffer = PyUnicode_InternFromString("buffer");
    s_data = PyUnicode_InternFromString("data");
    s_offset = PyUnicode_InternFromString("offset");
    s_ne = PyUnicode_InternFromString("ne");
    s_nb = PyUnicode_InternFromString("nb");
    PyObject *dtype = PyUnicode_InternFromString("dtype");
    if (!s_buffer || !s_data || !s_offset || !s_ne || !s_nb || !dtype) return -1;
    s_dtype = dtype;
    return 0;
}

static int ops_layout(int dtype, int *block, int *bytes) {
    switch (dtype) {
    case DT_F32: case DT_I32: *block = 1; *bytes = 4; return 1;
    case DT_F16: case DT_BF16: *block = 1; *bytes = 2; return 1;
    case DT_Q8_0: *block = 32; *bytes = 34; return 1;
    case DT_Q4_0: *block = 32; *bytes = 18; return 1;
    default: return 0;
    }
}

static int ops_quad(PyObject *obj, PyObject *name, int64_t out[4]) {
    PyObject *t = PyObject_GetAttr(obj, name);
    if (!t) return -1;
    int rc = 1;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4) {
        rc = 0;
    } else {
        for (int i = 0; i < 4; i++) {
            out[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(t, i));
            if (out[i] == -1 && PyErr_Occurred()) rc = -1;
        }
    }
    Py_DECREF(t);
    return rc;
}

/* Read a TensorRef: 1 done, 0 not a window handled here, -1 error (exception set). */
static int ops_parse(PyObject *obj, int writable, ops_ref *r) {
    r->held = 0;
    PyObject *dtype = PyObject_GetAttr(obj, s_dtype);
    if (!dtype) return -1;
    r->dtype = (int)PyLong_AsLong(dtype);
    Py_DECREF(dtype);
    if (r->dtype == -1 && PyErr_Occurred()) return -1;
    if (!ops_layout(r->dtype, &r->block, &r->bytes)) return 0;
    int64_t nb[4], offset;
    int rc = ops_quad(obj, s_ne, r->ne);
    if (rc <= 0) return rc;
    rc = ops_quad(obj, s_nb, nb);
    if (rc <= 0) return rc;
    PyObject *off = PyObject_GetAttr(obj, s_offset);
    if (!off) return -1;
    offset = PyLong_AsLongLong(off);
    Py_DECREF(off);
    if (offset == -1 && PyErr_Occurred()) return -1;
    PyObject *buffer = PyObject_GetAttr(obj, s_buffer);
    if (!buffer) return -1;
    PyObject *data = PyObject_GetAttr(buffer, s_data);
    Py_DECREF(buffer);
    if (!data) { /* not a host buffer of this device */
        PyErr_Clear();
        return 0;
    }
    rc = PyObject_GetBuffer(data, &r->view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
    Py_DECREF(data);
    if (rc < 0) {
        PyErr_Clear();
        return 0;
    }
    r->held = 1;
    int64_t last = 0, n = 1;
    for (int i = 0; i < 4; i++) {
        if (r->ne[i] < 0 || nb[i] < 0) return 0;
        r->nb[i] = (ptrdiff_t)nb[i];
        n *= r->ne[i];
    }
    if (offset < 0 || r->ne[0] % r->block) return 0;
    if (n) {
        last = (r->ne[0] / r->block - 1) * nb[0] + r->bytes;
        for (int i = 1; i < 4; i++) last += (r->ne[i] - 1) * nb[i];
    }
    if (offset + last > (int64_t)r->view.len) return 0; /* outside the buffer: numpy says why */
    r->base = (uint8_t *)r->view.buf + offset;
    r->lo = r->base;
    r->hi = r->base + last;
    return 1;
}

static void ops_release(ops_ref *refs, int n) {
    for (int i = 0; i < n; i++)
        if (refs[i].held) PyBuffer_Release(&refs[i].view);
}

/* Parse objs[0..n) (objs[0], the output, writable; None gives dtype 0). 1, 0 or -1 as above. */
static int ops_parse_all(PyObject *const *objs, int n, ops_ref *refs) {
    for (int i = 0; i < n; i++) refs[i].held = 0;
    if (ops_strings() < 0) return -1;
    for (int i = 0; i < n; i++) {
        if (objs[i] == Py_None) {
            refs[i].dtype = 0;
            continue;
        }
        const int rc = ops_parse(objs[i], i == 0, &refs[i]);
        if (rc <= 0) return rc;
    }
    return 1;
}

static int ops_is_float(const ops_ref *r) {
    return r->dtype == DT_F32 || r->dtype == DT_F16 || r->dtype == DT_BF16;
}

static int ops_overlap(const ops_ref *a, const ops_ref *b) {
    return a->lo < a->hi && b->lo < b->hi && a->lo < b->hi && b->lo < a->hi;
}

static int ops_same(const ops_ref *a, const ops_ref *b) {
    return a->base == b->base && a->dtype == b->dtype &&
           memcmp(a->ne, b->ne, sizeof a->ne) == 0 && memcmp(a->nb, b->nb, sizeof a->nb) == 0;
}

/* The output may be an input element for element (same window) or apart from it. */
static int ops_apart_or_same(const ops_ref *out, const ops_ref *in) {
    return in->dtype == 0 || !ops_overlap(out, in) || ops_same(out, in);
}

static int ops_apart(const ops_ref *out, const ops_ref *in) {
    return in->dtype == 0 || !ops_overlap(out, in);
}

/* b's extents divide a's (b tiles over a, SEMANTICS §5.2). */
static int ops_tiles(const ops_ref *a, const ops_ref *b) {
    for (int i = 0; i < 4; i++)
        if (b->ne[i] < 1 || a->ne[i] % b->ne[i]) return 0;
    return 1;
}

static int ops_same_ne(const ops_ref *a, const ops_ref *b) {
    return memcmp(a->ne, b->ne, sizeof a->ne) == 0;
}

/* Row (i1, i2, i3) of r, tiled: index i of a dim of extent e reads i % e. */
static inline uint8_t *ops_row(const ops_ref *r, int64_t i1, int64_t i2, int64_t i3) {
    if (i1 >= r->ne[1]) i1 %= r->ne[1];
    if (i2 >= r->ne[2]) i2 %= r->ne[2];
    if (i3 >= r->ne[3]) i3 %= r->ne[3];
    return r->base + i1 * r->nb[1] + i2 * r->nb[2] + i3 * r->nb[3];
}

/* The ne0 values of a float row at p as packed F32: p itself when it is, else converted into
 * tmp. */
static const float *ops_load(const ops_kernels *k, const ops_ref *r, const uint8_t *p,
                             float *tmp) {
    const int64_t n = r->ne[0];
    const ptrdiff_t s = r->nb[0];
    if (r->dtype == DT_F32) {
        if (s == 4) return (const float *)p;
        for (int64_t i = 0; i < n; i++) memcpy(&tmp[i], p + i * s, 4);
    } else if (s == 2) {
        (r->dtype == DT_F16 ? k->f16_to_f32 : k->bf16_to_f32)((const uint16_t *)p, tmp, n);
    } else {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + i * s, 2);
            if (r->dtype == DT_F16) {
                tmp[i] = half_to_float(h);
            } else {
                const uint32_t b = (uint32_t)h << 16;
                memcpy(&tmp[i], &b, 4);
            }
        }
    }
    return tmp;
}

/* Write n F32 values into a float row at p, rounding to its dtype. */
static void ops_store(const ops_kernels *k, const ops_ref *r, uint8_t *p, const float *v,
                      int64_t n) {
    const ptrdiff_t s = r->nb[0];
    if (r->dtype == DT_F32) {
        if (s == 4) {
            if ((const void *)p != (const void *)v) memcpy(p, v, (size_t)n * 4);
        } else {
            for (int64_t i = 0; i < n; i++) memcpy(p + i * s, &v[i], 4);
        }
    } else if (s == 2) {
        (r->dtype == DT_F16 ? k->f32_to_f16 : k->f32_to_bf16)(v, (uint16_t *)p, n);
    } else {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            (r->dtype == DT_F16 ? k->f32_to_f16 : k->f32_to_bf16)(&v[i], &h, 1);
            memcpy(p + i * s, &h, 2);
        }
    }
}

/* Where to compute a row of out: the row itself when it is packed F32, else tmp. */
static inline float *ops_dest(const ops_ref *out, uint8_t *p, float *tmp) {
    return out->dtype == DT_F32 && out->nb[0] == 4 ? (float *)p : tmp;
}

/* ---- row jobs, inline or on the pool ------------------------------------------------------ */

typedef struct ops_job ops_job;
typedef void (*ops_rows_fn)(const ops_job *job, int64_t r0, int64_t r1, float *scratch);

struct ops_job {
    ops_rows_fn fn;
    const ops_kernels *k;
    const ops_ref *out, *a, *b, *c;
    int kind;      /* binary op, gate kind, unary op or rope mode */
    float eps;     /* rms_norm's eps, scale's s, clamp's lo */
    float hi;      /* clamp's hi */
    int64_t rows;  /* rows of out: ne1 * ne2 * ne3 */
    int64_t chunk; /* rows per item taken from the counter */
    int64_t next;  /* the pool's shared item counter */
    size_t scratch;
    int failed;
};

static void ops_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    ops_job *job = arg;
    float *s = malloc(job->scratch * sizeof(float));
    if (!s) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (;;) {
        const int64_t r0 = mlplug_pool_next(&job->next) * job->chunk;
        if (r0 >= job->rows) break;
        job->fn(job, r0, r0 + job->chunk < job->rows ? r0 + job->chunk : job->rows, s);
    }
    free(s);
}

/* Run job->fn over every row of out; 0 done, -1 error (exception set). */
static int ops_run(ops_job *job, long threads) {
    const ops_ref *out = job->out;
    job->rows = out->ne[1] * out->ne[2] * out->ne[3];
    job->scratch = 4 * (size_t)out->ne[0] + 16;
    job->next = 0;
    job->failed = 0;
    int nth = threads < 1 ? 1 : threads > MLPLUG_POOL_MAX ? MLPLUG_POOL_MAX : (int)threads;
    if (job->rows * out->ne[0] < OPS_PARALLEL) nth = 1;
    if (nth > job->rows) nth = (int)job->rows;
    if (nth <= 1) {
        float *s = malloc(job->scratch * sizeof(float));
        if (!s) {
            PyErr_NoMemory();
            return -1;
        }
        job->fn(job, 0, job->rows, s);
        free(s);
        return 0;
    }
    job->chunk = job->rows / (4 * (int64_t)nth);
    if (job->chunk < 1) job->chunk = 1;
    Py_BEGIN_ALLOW_THREADS
    mlplug_pool_run(nth, ops_task, job);
    Py_END_ALLOW_THREADS
    if (job->failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static inline void ops_split(const ops_ref *out, int64_t r, int64_t *i1, int64_t *i2,
                             int64_t *i3) {
    *i1 = r % out->ne[1];
    r /= out->ne[1];
    *i2 = r % out->ne[2];
    *i3 = r / out->ne[2];
}

/* A tiled operand's row as packed F32, converted once per distinct row (weights, biases). */
typedef struct {
    const uint8_t *p;
    const float *v;
} ops_cached;

static const float *ops_tiled(const ops_job *job, const ops_ref *r, int64_t i1, int64_t i2,
                              int64_t i3, float *tmp, ops_cached *c) {
    const uint8_t *p = ops_row(r, i1, i2, i3);
    if (p != c->p) {
        c->v = ops_load(job->k, r, p, tmp);
        c->p = p;
    }
    return c->v;
}

static void ops_binary_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a, *b = job->b;
    const int64_t n = out->ne[0];
    float *ta = s, *tb = s + n, *to = s + 2 * n;
    ops_cached cb = {NULL, NULL};
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = ops_load(job->k, a, ops_row(a, i1, i2, i3), ta);
        const float *y = ops_tiled(job, b, i1, i2, i3, tb, &cb);
        uint8_t *po = ops_row(out, i1, i2, i3);
        float *o = ops_dest(out, po, to);
        job->k->binary(job->kind, x, y, b->ne[0], o, n);
        if (o == to) ops_store(job->k, out, po, o, n);
    }
}

static void ops_rms_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a, *w = job->b, *res = job->c;
    const int64_t n = out->ne[0];
    float *ta = s, *tw = s + n, *tr = s + 2 * n, *to = s + 3 * n;
    ops_cached cw = {NULL, NULL}, cr = {NULL, NULL};
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = ops_load(job->k, a, ops_row(a, i1, i2, i3), ta);
        uint8_t *po = ops_row(out, i1, i2, i3);
        float *o = ops_dest(out, po, to);
        const float d = sqrtf(job->k->sumsq(x, n) / (float)n + job->eps);
        job->k->div1(x, d, o, n);
        if (w->dtype)
            job->k->binary(OPS_MUL, o, ops_tiled(job, w, i1, i2, i3, tw, &cw), w->ne[0], o, n);
        if (res->dtype)
            job->k->binary(OPS_ADD, o, ops_tiled(job, res, i1, i2, i3, tr, &cr), res->ne[0], o,
                           n);
        if (o == to) ops_store(job->k, out, po, o, n);
    }
}

static void ops_softmax_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a;
    const int64_t n = out->ne[0];
    float *ta = s, *to = s + n;
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = ops_load(job->k, a, ops_row(a, i1, i2, i3), ta);
        uint8_t *po = ops_row(out, i1, i2, i3);
        float *o = ops_dest(out, po, to);
        job->k->softmax(x, o, n);
        if (o == to) ops_store(job->k, out, po, o, n);
    }
}

static void ops_gated_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a, *b = job->b;
    const int64_t n = out->ne[0];
    float *ta = s, *tb = s + n, *to = s + 2 * n;
    ops_cached cb = {NULL, NULL};
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = ops_load(job->k, a, ops_row(a, i1, i2, i3), ta);
        const float *y = ops_tiled(job, b, i1, i2, i3, tb, &cb);
        uint8_t *po = ops_row(out, i1, i2, i3);
        float *o = ops_dest(out, po, to);
        job->k->gate(job->kind, x, o, n);
        job->k->binary(OPS_MUL, o, y, b->ne[0], o, n);
        if (o == to) ops_store(job->k, out, po, o, n);
    }
}

static void ops_unary_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a;
    const int64_t n = out->ne[0];
    float *ta = s, *to = s + n;
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = ops_load(job->k, a, ops_row(a, i1, i2, i3), ta);
        uint8_t *po = ops_row(out, i1, i2, i3);
        float *o = ops_dest(out, po, to);
        job->k->unary(job->kind, x, job->eps, job->hi, o, n);
        if (o == to) ops_store(job->k, out, po, o, n);
    }
}

static void ops_rope_rows(const ops_job *job, int64_t r0, int64_t r1, float *s) {
    const ops_ref *out = job->out, *a = job->a, *cs = job->b, *sn = job->c;
    const int64_t n = out->ne[0];
    float *tc = s, *ts = s + n;
    ops_cached cc = {NULL, NULL}, cn = {NULL, NULL};
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        ops_split(out, r, &i1, &i2, &i3);
        const float *x = (const float *)ops_row(a, i1, i2, i3);
        /* cos and sin [n_rot/2, T]: the row of token i2. */
        const float *c = ops_tiled(job, cs, i2, 0, 0, tc, &cc);
        const float *si = ops_tiled(job, sn, i2, 0, 0, ts, &cn);
        /* out is x itself or apart from it (checked by the caller): rotated in place or not. */
        job->k->rope(job->kind, x, c, si, (float *)ops_row(out, i1, i2, i3), 2 * cs->ne[0], n);
    }
}

/* ---- entry points ------------------------------------------------------------------------- */

static PyObject *ops_result(int rc) {
    if (rc < 0) return NULL;
    if (rc) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static int ops_args(Py_ssize_t nargs, Py_ssize_t want, const char *name) {
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "[cpu native] %s takes %zd arguments (%zd given)", name, want,
                 nargs);
    return -1;
}

/* The Python entry point mlplug_ops_NAME: check the argument count, let IMPL parse the N_REFS
 * tensor refs and run, release every ref it took, return True / False / NULL (error set). */
#define OPS_ENTRY(NAME, IMPL, N_ARGS, N_REFS)                                                    \
    PyObject *mlplug_ops_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {      \
        (void)self;                                                                           \
        if (ops_args(nargs, N_ARGS, "ops_" #NAME) < 0) return NULL;                          \
        ops_ref r[N_REFS];                                                                    \
        const int rc = IMPL(args, r);                                                         \
        ops_release(r, N_REFS);                                                               \
        return ops_result(rc);                                                                \
    }

static int ops_binary_impl(PyObject *const *args, ops_ref *r) {
    const long op = PyLong_AsLong(args[0]);
    const long threads = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args + 1, 3, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *a = &r[1], *b = &r[2];
    if (op < OPS_ADD || op > OPS_DIV || !ops_is_float(out) || !ops_is_float(a) ||
        !ops_is_float(b) || !ops_same_ne(out, a) || !ops_tiles(a, b) ||
        !ops_apart_or_same(out, a) || !ops_apart_or_same(out, b))
        return 0;
    ops_job job = {ops_binary_rows, ops_kernels_now(), out, a, b, NULL, (int)op, 0.0f};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(binary, ops_binary_impl, 5, 3)

static int ops_rms_impl(PyObject *const *args, ops_ref *r) {
    const double eps = PyFloat_AsDouble(args[4]);
    const long threads = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args, 4, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *x = &r[1], *w = &r[2], *res = &r[3];
    if (!ops_is_float(out) || !ops_is_float(x) || !ops_same_ne(out, x) || out->ne[0] < 1 ||
        !ops_apart_or_same(out, x))
        return 0;
    for (int i = 2; i < 4; i++)
        if (r[i].dtype && (!ops_is_float(&r[i]) || !ops_tiles(x, &r[i]) || !ops_apart(out, &r[i])))
            return 0;
    ops_job job = {ops_rms_rows, ops_kernels_now(), out, x, w, res, 0, (float)eps};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(rms_norm, ops_rms_impl, 6, 4)

static int ops_softmax_impl(PyObject *const *args, ops_ref *r) {
    const long threads = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args, 2, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *x = &r[1];
    if (!ops_is_float(out) || !ops_is_float(x) || !ops_same_ne(out, x) || out->ne[0] < 1 ||
        !ops_apart_or_same(out, x))
        return 0;
    ops_job job = {ops_softmax_rows, ops_kernels_now(), out, x, NULL, NULL, 0, 0.0f};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(softmax, ops_softmax_impl, 3, 2)

static int ops_unary_impl(PyObject *const *args, ops_ref *r) {
    const long kind = PyLong_AsLong(args[0]);
    const double lo = PyFloat_AsDouble(args[3]), hi = PyFloat_AsDouble(args[4]);
    const long threads = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args + 1, 2, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *x = &r[1];
    if (kind < 0 || kind >= OPS_N_UNARY || !ops_is_float(out) || !ops_is_float(x) ||
        !ops_same_ne(out, x) || !ops_apart_or_same(out, x))
        return 0;
    ops_job job = {ops_unary_rows, ops_kernels_now(), out, x, NULL, NULL, (int)kind,
                   (float)lo, (float)hi};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(unary, ops_unary_impl, 6, 2)

static int ops_gated_impl(PyObject *const *args, ops_ref *r) {
    const long kind = PyLong_AsLong(args[0]);
    const long threads = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args + 1, 3, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *a = &r[1], *b = &r[2];
    /* b is read after the row of out is written: it must not overlap out at all. */
    if ((kind != OPS_SILU && kind != OPS_GELU) || !ops_is_float(out) || !ops_is_float(a) ||
        !ops_is_float(b) || !ops_same_ne(out, a) || !ops_tiles(a, b) ||
        !ops_apart_or_same(out, a) || !ops_apart(out, b))
        return 0;
    ops_job job = {ops_gated_rows, ops_kernels_now(), out, a, b, NULL, (int)kind, 0.0f};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(gated, ops_gated_impl, 5, 3)

static int ops_rope_impl(PyObject *const *args, ops_ref *r) {
    const long mode = PyLong_AsLong(args[4]);
    const long threads = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) return -1;
    int rc = ops_parse_all(args, 4, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *x = &r[1], *c = &r[2], *s = &r[3];
    /* x [D, H, T] F32 with packed rows; cos, sin [n_rot/2, T] F32. */
    if ((mode != 0 && mode != 2) || out->dtype != DT_F32 || x->dtype != DT_F32 ||
        c->dtype != DT_F32 || s->dtype != DT_F32 || out->nb[0] != 4 || x->nb[0] != 4 ||
        !ops_same_ne(out, x) || x->ne[3] != 1 || !ops_same_ne(c, s) || c->ne[0] < 1 ||
        2 * c->ne[0] > x->ne[0] || c->ne[1] != x->ne[2] || c->ne[2] != 1 || c->ne[3] != 1 ||
        !ops_apart_or_same(out, x) || !ops_apart(out, c) || !ops_apart(out, s))
        return 0;
    ops_job job = {ops_rope_rows, ops_kernels_now(), out, x, c, s, (int)mode, 0.0f};
    return ops_run(&job, threads) < 0 ? -1 : 1;
}

OPS_ENTRY(rope, ops_rope_impl, 6, 4)

/* Check every id in logical order (dim 0 fastest); -1 with IndexError naming the first bad one,
 * as the numpy path does. */
static int ops_check_ids(const ops_ref *ids, int64_t axis_len, const char *op) {
    for (int64_t k = 0; k < ids->ne[2]; k++)
        for (int64_t j = 0; j < ids->ne[1]; j++)
            for (int64_t i = 0; i < ids->ne[0]; i++) {
                int32_t id;
                memcpy(&id, ids->base + i * ids->nb[0] + j * ids->nb[1] + k * ids->nb[2], 4);
                if (id < 0 || id >= axis_len) {
                    PyErr_Format(PyExc_IndexError, "[%s] index %d out of range 0..%lld", op,
                                 (int)id, (long long)axis_len - 1);
                    return -1;
                }
            }
    return 0;
}

/* Copy or convert one row of n elements from src (row at ps) to dst (row at pd; a Q8_0/Q4_0
 * dst is quantised). */
static void ops_move_row(const ops_kernels *k, const ops_ref *src, const uint8_t *ps,
                         const ops_ref *dst, uint8_t *pd, int64_t n, float *tmp) {
    if (dst->block > 1) {
        ops_quantize_row(dst->dtype, ops_load(k, src, ps, tmp), pd, dst->nb[0], n);
        return;
    }
    if (src->dtype == dst->dtype) {
        const int e = src->bytes;
        if (src->nb[0] == e && dst->nb[0] == e) {
            memcpy(pd, ps, (size_t)n * (size_t)e);
        } else {
            for (int64_t i = 0; i < n; i++) memcpy(pd + i * dst->nb[0], ps + i * src->nb[0], e);
        }
        return;
    }
    ops_store(k, dst, pd, ops_load(k, src, ps, tmp), n);
}

static int ops_set_rows_impl(PyObject *const *args, ops_ref *r) {
    int rc = ops_parse_all(args, 3, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *a = &r[1], *ids = &r[2];
    /* a [ne0, R, ne2, ne3] float; out [ne0, N, ne2, ne3] float, Q8_0 or Q4_0; ids I32 [R]. */
    if ((!ops_is_float(out) && out->block == 1) || !ops_is_float(a) || ids->dtype != DT_I32 ||
        a->ne[0] != out->ne[0] ||
        a->ne[2] != out->ne[2] || a->ne[3] != out->ne[3] || ids->ne[0] != a->ne[1] ||
        ids->ne[1] != 1 || ids->ne[2] != 1 || ids->ne[3] != 1 || !ops_apart(out, a) ||
        !ops_apart(out, ids))
        return 0;
    if (a->ne[0] * a->ne[1] * a->ne[2] * a->ne[3] == 0 || out->ne[1] == 0) return 1;
    if (ops_check_ids(ids, out->ne[1], "set_rows") < 0) return -1;
    const ops_kernels *k = ops_kernels_now();
    float *tmp = malloc((size_t)a->ne[0] * sizeof(float) + 16);
    if (!tmp) {
        PyErr_NoMemory();
        return -1;
    }
    if (out->block > 1) /* quantising inf or NaN: leave numpy's behaviour to numpy */
        for (int64_t i3 = 0; i3 < a->ne[3]; i3++)
            for (int64_t i2 = 0; i2 < a->ne[2]; i2++)
                for (int64_t i = 0; i < a->ne[1]; i++)
                    if (!ops_all_finite(ops_load(k, a, ops_row(a, i, i2, i3), tmp), a->ne[0])) {
                        free(tmp);
                        return 0;
                    }
    /* In order of r, so that the last row written to a repeated id wins. */
    for (int64_t i3 = 0; i3 < a->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < a->ne[2]; i2++)
            for (int64_t i = 0; i < a->ne[1]; i++) {
                int32_t id;
                memcpy(&id, ids->base + i * ids->nb[0], 4);
                ops_move_row(k, a, ops_row(a, i, i2, i3), out, ops_row(out, id, i2, i3),
                             a->ne[0], tmp);
            }
    free(tmp);
    return 1;
}

OPS_ENTRY(set_rows, ops_set_rows_impl, 3, 3)

/* Decode n elements of Q8_0 / Q4_0 blocks (stride nb0) to F32 as gguf does: d·q and
 * (nibble − 8)·d, one F32 product each. */
static void ops_dequant_row(const ops_ref *a, const uint8_t *p, float *o) {
    const int64_t blocks = a->ne[0] / 32;
    for (int64_t b = 0; b < blocks; b++, p += a->nb[0], o += 32) {
        uint16_t h;
        memcpy(&h, p, 2);
        const float d = half_to_float(h);
        if (a->dtype == DT_Q8_0) {
            for (int j = 0; j < 32; j++) o[j] = d * (float)(int8_t)p[2 + j];
        } else {
            for (int j = 0; j < 16; j++) {
                o[j] = (float)((p[2 + j] & 15) - 8) * d;
                o[j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
            }
        }
    }
}

static int ops_rows_impl(PyObject *const *args, ops_ref *r) {
    int rc = ops_parse_all(args, 3, r);
    if (rc <= 0) return rc;
    ops_ref *out = &r[0], *a = &r[1], *ids = &r[2];
    const int int_table = a->dtype == DT_I32;
    /* out [ne0, n, ne2, ne3] (F32, or I32 for an I32 table); ids I32 [n, ne2, ne3]. */
    if (out->dtype != (int_table ? DT_I32 : DT_F32) || ids->dtype != DT_I32 ||
        out->ne[0] != a->ne[0] || out->ne[1] != ids->ne[0] || ids->ne[1] != a->ne[2] ||
        ids->ne[2] != a->ne[3] || ids->ne[3] != 1 || out->ne[2] != a->ne[2] ||
        out->ne[3] != a->ne[3] || !ops_apart(out, a) || !ops_apart(out, ids))
        return 0;
    if (out->ne[0] * out->ne[1] * out->ne[2] * out->ne[3] == 0) return 1;
    if (ops_check_ids(ids, a->ne[1], "rows") < 0) return -1;
    const ops_kernels *k = ops_kernels_now();
    float *tmp = malloc((size_t)a->ne[0] * sizeof(float) + 16);
    if (!tmp) {
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i3 = 0; i3 < out->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < out->ne[2]; i2++)
            for (int64_t i = 0; i < out->ne[1]; i++) {
                int32_t id;
                memcpy(&id, ids->base + i * ids->nb[0] + i2 * ids->nb[1] + i3 * ids->nb[2], 4);
                const uint8_t *src = a->base + id * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3];
                uint8_t *dst = ops_row(out, i, i2, i3);
                if (a->block > 1) {
                    ops_dequant_row(a, src, tmp);
                    ops_store(k, out, dst, tmp, out->ne[0]);
                } else {
                    ops_move_row(k, a, src, out, dst, out->ne[0], tmp);
                }
            }
    free(tmp);
    return 1;
}

OPS_ENTRY(rows, ops_rows_impl, 3, 3)

PyObject *mlplug_ops_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    ops_kernels_now();
    return PyUnicode_FromString(ops_isa_name);
}

PyObject *mlplug_ops_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    return ops_result(ops_select(name));
}
