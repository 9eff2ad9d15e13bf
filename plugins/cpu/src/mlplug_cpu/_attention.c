/* mlplug_cpu._native.attention: fused scaled-dot-product attention (SEMANTICS §8.7) reading
 * F32/F16/BF16 key, value and mask in place through their byte strides.
 *
 * Python API (part of the _native module; _native.c lists it):
 *   attention(q, k, v, mask, out, dims, scale, permuted_v, threads) -> bool
 *       q, k, v, out: (buffer, ggml_type, offset, nb0, nb1, nb2); mask the same or None.
 *       dims: (Dk, Dv, H, Hkv, T, L). q [Dk, H, T] F32; k [Dk, Hkv, L]; v [Dv, Hkv, L], or
 *       [L, Dv, Hkv] when permuted_v; mask [L, >= T] (rows t < T read); out [Dv, H, T] F32.
 *       out[:, h, t] = sum_j softmax_j(scale·k[:, h/g, j]·q[:, h, t] + mask[j, t]) v[:, h/g, j].
 *       Returns False, doing nothing, for what it does not handle (other types, elements not
 *       packed along dim 0 for k/v rows, negative strides, out overlapping an input).
 *   attention_isa() -> str: "avx512", "avx2" or "generic".
 * Work items (KV head x tile of query tokens x slice of the history) run on the extension's
 * thread pool (_native_pool.h; threads >= 1), taken from a shared counter; slices of one row
 * are merged at the end (flash decoding), so a long decode history still uses every thread.
 * The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native_pool.h"
#include "_native_half.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATT_X86 1
#endif

enum { ATT_F32 = 0, ATT_F16 = 1, ATT_BF16 = 30 }; /* ggml type ids */
#define ATT_BLOCK 128 /* history cells per online-softmax step */
#define ATT_ROWS 32   /* query rows (heads of a group x tokens) a tile aims for */
#define ATT_PAD 32    /* Dk and Dv are padded to a multiple of this (2 x 16 floats) */
#define ATT_MIX_T_ROWS 16 /* up to this many rows, a transposed V block is read as it is */

typedef struct {
    const uint8_t *base;
    int type;
    ptrdiff_t nb0, nb1, nb2;
} att_src;

typedef struct {
    att_src q, k, v, m;
    int has_mask, permuted_v;
    uint8_t *out;
    ptrdiff_t o_nb1, o_nb2;
    int64_t dk, dv, heads, kv_heads, tokens, length, dkp, dvp;
    float scale;
    int64_t tile_tokens, n_tiles, n_split, split_len, max_rows;
    float *partial; /* n_split > 1: per item and row, (m, l, acc[dv]) */
} att_problem;

typedef struct {
    float *q, *k, *v, *s, *mask, *acc, *m, *l, *tmp;
    int32_t *rows;
} att_scratch;

static size_t att_scratch_floats(const att_problem *pb) {
    const size_t rows = (size_t)pb->max_rows;
    return rows * (size_t)pb->dkp + ATT_BLOCK * (size_t)pb->dkp + ATT_BLOCK * (size_t)pb->dvp +
           rows * ATT_BLOCK + (size_t)pb->tile_tokens * ATT_BLOCK + rows * (size_t)pb->dvp +
           3 * rows + ATT_BLOCK + 64;
}

static void att_carve(const att_problem *pb, float *base, att_scratch *sc) {
    const int64_t rows = pb->max_rows;
    sc->q = base;
    sc->k = sc->q + rows * pb->dkp;
    sc->v = sc->k + ATT_BLOCK * pb->dkp;
    sc->s = sc->v + ATT_BLOCK * pb->dvp;
    sc->mask = sc->s + rows * ATT_BLOCK;
    sc->acc = sc->mask + pb->tile_tokens * ATT_BLOCK;
    sc->m = sc->acc + rows * pb->dvp;
    sc->l = sc->m + rows;
    sc->tmp = sc->l + rows;
    sc->rows = (int32_t *)(sc->tmp + ATT_BLOCK);
}

static float *att_partial(const att_problem *pb, int64_t hk, int64_t tile, int64_t split,
                          int64_t r) {
    const int64_t item = (hk * pb->n_tiles + tile) * pb->n_split + split;
    return pb->partial + (item * pb->max_rows + r) * (pb->dv + 2);
}

static inline float att_half_generic(uint16_t h) { return half_to_float(h); }

/* ---- portable build: one float per "vector" ------------------------------------------------ */

#define SFX(name) name##_generic
#define VW 1
#define vf float
#define V_LOAD(p) (*(p))
#define V_STORE(p, x) (*(p) = (x))
#define V_SET1(x) (x)
#define V_ZERO() 0.0f
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MAX(a, b) ((a) > (b) ? (a) : (b))
#define V_HSUM(x) (x)
#define V_HMAX(x) (x)
#define V_EXP(x) expf(x)
#define V_HSUM4(a, b, c, d, out) ((out)[0] = (a), (out)[1] = (b), (out)[2] = (c), (out)[3] = (d))
#include "_attention_kernel.h" /* it undefines the parameters above */

#ifdef ATT_X86
/* ---- AVX2 + FMA + F16C: 8 floats ----------------------------------------------------------- */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

static inline float att_half_avx2(uint16_t h) { return _cvtsh_ss(h); }

static inline __m256 att_exp_avx2(__m256 x) {
    /* Cephes expf (as ggml and many others): x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-6
     * polynomial (about 1 ulp), times 2^n from the exponent bits. x < -87 (and -inf) give 0;
     * NaN stays NaN. The inputs here are <= 0 (scores minus their running max). */
    const __m256 zero_below = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i n = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
    return _mm256_andnot_ps(zero_below, y);
}

static inline float att_hsum_avx2(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float att_hmax_avx2(__m256 x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline void att_hsum4_avx2(__m256 a, __m256 b, __m256 c, __m256 d, float *out) {
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 abcd = _mm256_hadd_ps(ab, cd); /* per 128-bit half: a, b, c, d partial sums */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}

#define SFX(name) name##_avx2
#define VW 8
#define vf __m256
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define V_STORE(p, x) _mm256_storeu_ps(p, x)
#define V_SET1(x) _mm256_set1_ps(x)
#define V_ZERO() _mm256_setzero_ps()
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_SUB(a, b) _mm256_sub_ps(a, b)
#define V_MAX(a, b) _mm256_max_ps(a, b)
#define V_HSUM(x) att_hsum_avx2(x)
#define V_HMAX(x) att_hmax_avx2(x)
#define V_EXP(x) att_exp_avx2(x)
#define V_HSUM4(a, b, c, d, out) att_hsum4_avx2(a, b, c, d, out)
#include "_attention_kernel.h" /* it undefines the parameters above */
#pragma GCC pop_options

/* ---- AVX-512 (F, BW, DQ, VL) + FMA + F16C: 16 floats ---------------------------------------- */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")

static inline float att_half_avx512(uint16_t h) { return _cvtsh_ss(h); }

static inline __m512 att_exp_avx512(__m512 x) {
    /* The AVX2 version's polynomial on 16 lanes. */
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
    fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    const __m512i n = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(keep, y, _mm512_castsi512_ps(n));
}

static inline void att_hsum4_avx512(__m512 a, __m512 b, __m512 c, __m512 d, float *out) {
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}

#define SFX(name) name##_avx512
#define VW 16
#define vf __m512
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define V_STORE(p, x) _mm512_storeu_ps(p, x)
#define V_SET1(x) _mm512_set1_ps(x)
#define V_ZERO() _mm512_setzero_ps()
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_SUB(a, b) _mm512_sub_ps(a, b)
#define V_MAX(a, b) _mm512_max_ps(a, b)
#define V_HSUM(x) _mm512_reduce_add_ps(x)
#define V_HMAX(x) _mm512_reduce_max_ps(x)
#define V_EXP(x) att_exp_avx512(x)
#define V_HSUM4(a, b, c, d, out) att_hsum4_avx512(a, b, c, d, out)
#include "_attention_kernel.h" /* it undefines the parameters above */
#pragma GCC pop_options
#endif /* ATT_X86 */

/* ---- dispatch and the Python entry --------------------------------------------------------- */

typedef void (*att_item_fn)(const att_problem *, int64_t, float *);

/* The best kernel the CPU runs, unless MLPLUG_CPU_ATTENTION_ISA names a lesser one ("avx2",
 * "generic"; read on every call so that tests can run each path). */
static att_item_fn att_pick(const char **isa) {
    *isa = "generic";
#ifdef ATT_X86
    static int avx2 = -1, avx512 = -1;
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
        avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    }
    const char *force = getenv("MLPLUG_CPU_ATTENTION_ISA");
    int cap = 2;
    if (force && strcmp(force, "avx2") == 0) cap = 1;
    if (force && strcmp(force, "generic") == 0) cap = 0;
    if (avx512 && cap >= 2) {
        *isa = "avx512";
        return att_item_avx512;
    }
    if (avx2 && cap >= 1) {
        *isa = "avx2";
        return att_item_avx2;
    }
#endif
    return att_item_generic;
}

static int att_elem(int type) { return type == ATT_F32 ? 4 : 2; }

/* Parse (buffer, type, offset, nb0, nb1, nb2) and check that extents ne fit in the buffer. */
static int att_parse(PyObject *tuple, const char *what, int writable, Py_buffer *view,
                     att_src *src, long long *offset, const int64_t ne[3], int *ok) {
    PyObject *buffer;
    long long off, nb0, nb1, nb2;
    if (!PyArg_ParseTuple(tuple, "OiLLLL", &buffer, &src->type, &off, &nb0, &nb1, &nb2))
        return -1;
    if (PyObject_GetBuffer(buffer, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) return -1;
    src->base = (const uint8_t *)view->buf + (off < 0 ? 0 : off);
    src->nb0 = (ptrdiff_t)nb0;
    src->nb1 = (ptrdiff_t)nb1;
    src->nb2 = (ptrdiff_t)nb2;
    *offset = off;
    if (src->type != ATT_F32 && src->type != ATT_F16 && src->type != ATT_BF16) *ok = 0;
    if (off < 0 || nb0 < 0 || nb1 < 0 || nb2 < 0) *ok = 0;
    if (!*ok) return 0;
    const long long end =
        off + (ne[0] - 1) * nb0 + (ne[1] - 1) * nb1 + (ne[2] - 1) * nb2 + att_elem(src->type);
    if (end > (long long)view->len) {
        PyErr_Format(PyExc_ValueError, "[cpu native] attention %s: window ends at %lld past %zd "
                     "bytes", what, end, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static long long att_last_byte(const att_src *s, const int64_t ne[3]) {
    return (ne[0] - 1) * s->nb0 + (ne[1] - 1) * s->nb1 + (ne[2] - 1) * s->nb2 + att_elem(s->type);
}

static int att_overlap(const uint8_t *a, long long a_len, const uint8_t *b, long long b_len) {
    return a < b + b_len && b < a + a_len;
}

static void att_merge(const att_problem *pb) {
    const int64_t g = pb->heads / pb->kv_heads;
    for (int64_t hk = 0; hk < pb->kv_heads; hk++)
        for (int64_t tile = 0; tile < pb->n_tiles; tile++) {
            const int64_t t0 = tile * pb->tile_tokens;
            const int64_t nt =
                pb->tokens - t0 < pb->tile_tokens ? pb->tokens - t0 : pb->tile_tokens;
            for (int64_t r = 0; r < nt * g; r++) {
                float m = -INFINITY;
                for (int64_t s = 0; s < pb->n_split; s++) {
                    const float ms = att_partial(pb, hk, tile, s, r)[0];
                    m = ms > m ? ms : m;
                }
                const int64_t tl = r / g, i = r % g;
                float *out = (float *)(pb->out + (hk * g + i) * pb->o_nb1 + (t0 + tl) * pb->o_nb2);
                for (int64_t d = 0; d < pb->dv; d++) out[d] = 0.0f;
                if (m == -INFINITY) continue; /* sees no cell: zeros, as in one slice */
                float total = 0.0f;
                for (int64_t s = 0; s < pb->n_split; s++) {
                    const float *part = att_partial(pb, hk, tile, s, r);
                    if (part[0] == -INFINITY) continue;
                    const float w = expf(part[0] - m);
                    total += w * part[1];
                    for (int64_t d = 0; d < pb->dv; d++) out[d] += w * part[2 + d];
                }
                const float inv = 1.0f / total;
                for (int64_t d = 0; d < pb->dv; d++) out[d] *= inv;
            }
        }
}

static int64_t att_ceil(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void att_plan(att_problem *pb, int nth) {
    const int64_t g = pb->heads / pb->kv_heads;
    pb->dkp = att_ceil(pb->dk, ATT_PAD) * ATT_PAD;
    pb->dvp = att_ceil(pb->dv, ATT_PAD) * ATT_PAD;
    pb->tile_tokens = ATT_ROWS / g > 1 ? ATT_ROWS / g : 1;
    if (pb->tile_tokens > pb->tokens) pb->tile_tokens = pb->tokens;
    pb->n_tiles = att_ceil(pb->tokens, pb->tile_tokens);
    pb->max_rows = pb->tile_tokens * g;
    /* Too few items for the threads (decode): split the history into slices of whole blocks,
     * at least two blocks each, and merge them at the end. */
    const int64_t items = pb->kv_heads * pb->n_tiles;
    int64_t split = 1;
    if (nth > 1 && items < 2 * (int64_t)nth) {
        split = att_ceil(2 * (int64_t)nth, items);
        const int64_t most = att_ceil(pb->length, 2 * ATT_BLOCK);
        if (split > most) split = most;
        if (split < 1) split = 1;
    }
    pb->split_len = att_ceil(att_ceil(pb->length, split), ATT_BLOCK) * ATT_BLOCK;
    pb->n_split = att_ceil(pb->length, pb->split_len);
}

static void *att_alloc(size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* This thread's scratch of at least `bytes`, kept from call to call: a decode step's attention
 * then costs no allocation (a fresh block of a few hundred KiB is an mmap, page faults and a
 * munmap each time, which cost more than the attention itself). Zeroed only when `zero`: the
 * kernel writes every float it reads except the zero padding of Dk, Dv to ATT_PAD. */
static _Thread_local float *att_kept;
static _Thread_local size_t att_kept_bytes;

static float *att_kept_scratch(size_t bytes, int zero) {
    bytes = (bytes + 63) / 64 * 64;
    if (bytes > att_kept_bytes) {
        free(att_kept);
        att_kept = aligned_alloc(64, bytes);
        att_kept_bytes = att_kept ? bytes : 0;
        if (!att_kept) return NULL;
    }
    if (zero) memset(att_kept, 0, bytes);
    return att_kept;
}

typedef struct {
    att_problem *pb;
    att_item_fn fn;
    size_t scratch_floats;
    int64_t n_items, next; /* next: the shared item counter */
    int failed;
} att_run;

/* One thread's share: take items from the shared counter until none is left (a thread that
 * starts late finds less to do), with its own scratch. */
static void att_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    att_run *run = arg;
    const att_problem *pb = run->pb;
    float *scratch = att_kept_scratch(run->scratch_floats * sizeof(float),
                                 pb->dkp != pb->dk || pb->dvp != pb->dv);
    if (!scratch) {
        __atomic_store_n(&run->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (;;) {
        const int64_t item = __atomic_fetch_add(&run->next, 1, __ATOMIC_RELAXED);
        if (item >= run->n_items) break;
        run->fn(run->pb, item, scratch);
    }
}

PyObject *mlplug_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *q_t, *k_t, *v_t, *m_t, *o_t;
    long long dk, dv, heads, kv_heads, tokens, length;
    double scale;
    int permuted;
    long threads;
    if (!PyArg_ParseTuple(args, "OOOOO(LLLLLL)dpl", &q_t, &k_t, &v_t, &m_t, &o_t, &dk, &dv, &heads,
                          &kv_heads, &tokens, &length, &scale, &permuted, &threads))
        return NULL;
    if (dk < 1 || dv < 1 || heads < 1 || kv_heads < 1 || tokens < 1 || length < 1 ||
        heads % kv_heads) {
        PyErr_SetString(PyExc_ValueError, "[cpu native] attention: bad extents");
        return NULL;
    }
    Py_buffer views[5];
    int held = 0, ok = 1;
    PyObject *result = NULL;
    att_problem pb;
    memset(&pb, 0, sizeof pb);
    long long offs[5];
    const int64_t q_ne[3] = {dk, heads, tokens}, k_ne[3] = {dk, kv_heads, length};
    const int64_t v_std[3] = {dv, kv_heads, length}, v_perm[3] = {length, dv, kv_heads};
    const int64_t m_ne[3] = {length, tokens, 1}, o_ne[3] = {dv, heads, tokens};
    att_src out;
    if (att_parse(q_t, "query", 0, &views[held], &pb.q, &offs[0], q_ne, &ok) < 0) goto done;
    held++;
    if (att_parse(k_t, "key", 0, &views[held], &pb.k, &offs[1], k_ne, &ok) < 0) goto done;
    held++;
    if (att_parse(v_t, "value", 0, &views[held], &pb.v, &offs[2], permuted ? v_perm : v_std,
                  &ok) < 0)
        goto done;
    held++;
    pb.has_mask = m_t != Py_None;
    if (pb.has_mask) {
        if (att_parse(m_t, "mask", 0, &views[held], &pb.m, &offs[3], m_ne, &ok) < 0) goto done;
        held++;
    }
    if (att_parse(o_t, "out", 1, &views[held], &out, &offs[4], o_ne, &ok) < 0) goto done;
    held++;
    if (!ok || pb.q.type != ATT_F32 || out.type != ATT_F32 || pb.q.nb0 != 4 || out.nb0 != 4 ||
        pb.k.nb0 != att_elem(pb.k.type) || pb.v.nb0 != att_elem(pb.v.type) ||
        (out.nb1 | out.nb2 | offs[4]) & 3) {
        result = Py_False;
        goto done;
    }
    {
        const long long o_len = att_last_byte(&out, o_ne);
        const att_src *ins[4] = {&pb.q, &pb.k, &pb.v, &pb.m};
        const int64_t *in_ne[4] = {q_ne, k_ne, permuted ? v_perm : v_std, m_ne};
        for (int i = 0; i < 3 + pb.has_mask; i++)
            if (att_overlap(out.base, o_len, ins[i]->base, att_last_byte(ins[i], in_ne[i]))) {
                result = Py_False;
                goto done;
            }
    }
    pb.permuted_v = permuted;
    pb.out = (uint8_t *)out.base;
    pb.o_nb1 = out.nb1;
    pb.o_nb2 = out.nb2;
    pb.dk = dk;
    pb.dv = dv;
    pb.heads = heads;
    pb.kv_heads = kv_heads;
    pb.tokens = tokens;
    pb.length = length;
    pb.scale = (float)scale;
    const char *isa;
    const att_item_fn fn = att_pick(&isa);
    int nth = threads < 1 ? 1 : threads > MLPLUG_POOL_MAX ? MLPLUG_POOL_MAX : (int)threads;
    /* Below about a millisecond of work (a decode step over a few thousand cells) one thread
     * is faster than waking others, and on a busy machine safer: a run ends only when each of
     * its threads has been scheduled. */
    if ((long long)tokens * heads * length * (dk + dv) < (1LL << 24)) nth = 1;
    att_plan(&pb, nth);
    const int64_t n_items = pb.kv_heads * pb.n_tiles * pb.n_split;
    if (nth > n_items) nth = (int)n_items;
    att_run run = {&pb, fn, att_scratch_floats(&pb), n_items, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    if (pb.n_split > 1) {
        pb.partial = att_alloc((size_t)n_items * (size_t)pb.max_rows * (size_t)(pb.dv + 2) *
                               sizeof(float));
        run.failed = pb.partial == NULL;
    }
    if (!run.failed) mlplug_pool_run(nth, att_task, &run);
    if (!run.failed && pb.n_split > 1) att_merge(&pb);
    free(pb.partial);
    Py_END_ALLOW_THREADS
    const int failed = run.failed;
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_True;
done:
    for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    Py_XINCREF(result);
    return result;
}

PyObject *mlplug_attention_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    const char *isa;
    att_pick(&isa);
    return PyUnicode_FromString(isa);
}
