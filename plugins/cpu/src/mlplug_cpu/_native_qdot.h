/* Integer products of GGUF block weights with 8-bit quantised activations (included by
 * _native.c once per instruction set, like _native_kernels.h).
 *
 * The including file defines SFX(name) and one of QDOT_VNNI (AVX512-VNNI vpdpbusd on 256-bit
 * registers), QDOT_AVX2 (maddubs) or neither (portable C), after switching the target.
 *
 * Activation: each row of x (F32, K a multiple of 32) is quantised once per product into int8
 * q[K] and, per 32-element block, an xblock {d, d*sum(q[0:16]), d*sum(q[16:32]), d*sum(q)} with
 * d = max|x|/127 and q = round-half-even(x * 127/max|x|) (so |q| <= 127).
 *
 * Weight: every type is read 32 elements at a time as 32 unsigned codes u (Q8_0: signed q)
 * with, for elements 0-15 and 16-31, a scale sc and an offset of such that w = sc*u + of.
 * Then sum(w*x) over the block = dx*(sc0*S0 + sc1*S1) + of0*(dx*Sq0) + of1*(dx*Sq1), where S
 * are the integer sums of u*q over each half (exact in int32) and Sq the activation half sums
 * (precomputed in the xblock). A tile of RM weight rows x RN activation rows shares each
 * unpacked weight block across RN rows and each activation block across RM rows.
 */

#define QK 32

/* ---- activation quantiser ---------------------------------------------------------------- */

/* Quantise one row of k F32 values; return 0, or 1 when a value is not finite (the caller then
 * takes the exact float path). */
static int SFX(quantize_x)(const float *x, int64_t k, int8_t *q, xblock *xb) {
    int bad = 0;
    for (int64_t b = 0; b < k / QK; b++) {
        const float *v = x + b * QK;
        float amax = 0.0f;
        for (int l = 0; l < QK; l++) {
            const float a = fabsf(v[l]);
            amax = a > amax ? a : amax;
        }
        if (!(amax <= FLT_MAX)) { /* inf or NaN */
            bad = 1;
            amax = 0.0f;
        }
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int s0 = 0, s1 = 0;
        int8_t *qb = q + b * QK;
#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i32[4];
        for (int i = 0; i < 4; i++)
            i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * i), vid));
        /* packs interleave 128-bit lanes: permute back to element order. */
        const __m256i p01 = _mm256_packs_epi32(i32[0], i32[1]);
        const __m256i p23 = _mm256_packs_epi32(i32[2], i32[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)qb, p);
        for (int l = 0; l < 16; l++) s0 += qb[l];
        for (int l = 16; l < 32; l++) s1 += qb[l];
#else
        for (int l = 0; l < QK; l++) {
            const int r = (int)nearbyintf(v[l] * id); /* default rounding: to nearest even */
            qb[l] = (int8_t)r;
            if (l < 16)
                s0 += r;
            else
                s1 += r;
        }
#endif
        xb[b].d = d;
        xb[b].s0 = d * (float)s0;
        xb[b].s1 = d * (float)s1;
        xb[b].s = d * (float)(s0 + s1);
    }
    return bad;
}

/* ---- weight unpackers: block j (32 elements) of a row -> codes, scales, offsets ----------- */

static inline __attribute__((always_inline)) float SFX(h2f)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return half_to_float(h);
#endif
}

static inline __attribute__((always_inline)) void SFX(k3_scales)(const uint8_t *sc, int i,
                                                                  int *out) {
    /* Q3_K: 16 six-bit scales, low 4 bits in bytes 0-7, high 2 bits in bytes 8-11; minus 32. */
    const int low = i < 8 ? sc[i] & 15 : sc[i - 8] >> 4;
    const int high = (sc[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    *out = (low | (high << 4)) - 32;
}

#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
typedef __m256i SFX(codes);
#define LOAD16(p) _mm_loadu_si128((const __m128i *)(p))
#define LOAD32(p) _mm256_loadu_si256((const __m256i *)(p))
#define BYTES(v) _mm256_set1_epi8((char)(v))
#define SHR(v, c) _mm256_srl_epi16((v), _mm_cvtsi32_si128((int)(c)))

static inline __attribute__((always_inline)) __m256i SFX(nibbles)(const uint8_t *p) {
    /* 16 bytes of packed nibbles -> 32 codes: low nibbles first, then high (GGUF's order). */
    const __m128i q = LOAD16(p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), BYTES(15));
}

static inline __attribute__((always_inline)) __m256i SFX(bits_to_bytes)(const uint8_t *p) {
    /* 32 bits -> 32 bytes, 0xff where the bit is set (bit l for byte l). */
    uint32_t x32;
    memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}
#define UNPACK_RET __m256i
#else
typedef struct {
    uint8_t u[QK];
} SFX(codes);
#define UNPACK_RET SFX(codes)

static inline __attribute__((always_inline)) SFX(codes) SFX(nibbles)(const uint8_t *p) {
    SFX(codes) c;
    for (int l = 0; l < 16; l++) {
        c.u[l] = p[l] & 15;
        c.u[l + 16] = p[l] >> 4;
    }
    return c;
}
#endif

#define UNPACK(T)                                                                             \
    static inline __attribute__((always_inline)) UNPACK_RET SFX(unpack_##T)(                  \
        const uint8_t *row, int64_t j, float *sc, float *of)

UNPACK(q4_0) {
    const uint8_t *b = row + j * 18;
    const float d = SFX(h2f)(b);
    sc[0] = sc[1] = d;
    of[0] = of[1] = -8.0f * d;
    return SFX(nibbles)(b + 2);
}

UNPACK(q4_1) {
    const uint8_t *b = row + j * 20;
    sc[0] = sc[1] = SFX(h2f)(b);
    of[0] = of[1] = SFX(h2f)(b + 2);
    return SFX(nibbles)(b + 4);
}

#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
#define HIGH_BITS(c, qh) _mm256_or_si256((c), _mm256_and_si256(SFX(bits_to_bytes)(qh), BYTES(16)))
#else
#define HIGH_BITS(c, qh)                                                                      \
    do {                                                                                      \
        uint32_t h32;                                                                         \
        memcpy(&h32, (qh), 4);                                                                \
        for (int l = 0; l < QK; l++) (c).u[l] |= (uint8_t)(((h32 >> l) & 1) << 4);           \
    } while (0)
#endif

UNPACK(q5_0) {
    const uint8_t *b = row + j * 22;
    const float d = SFX(h2f)(b);
    sc[0] = sc[1] = d;
    of[0] = of[1] = -16.0f * d;
    UNPACK_RET c = SFX(nibbles)(b + 6);
#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
    return HIGH_BITS(c, b + 2);
#else
    HIGH_BITS(c, b + 2);
    return c;
#endif
}

UNPACK(q5_1) {
    const uint8_t *b = row + j * 24;
    sc[0] = sc[1] = SFX(h2f)(b);
    of[0] = of[1] = SFX(h2f)(b + 2);
    UNPACK_RET c = SFX(nibbles)(b + 8);
#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
    return HIGH_BITS(c, b + 4);
#else
    HIGH_BITS(c, b + 4);
    return c;
#endif
}

UNPACK(q8_0) { /* signed codes (the kernel multiplies them as int8) */
    const uint8_t *b = row + j * 34;
    sc[0] = sc[1] = SFX(h2f)(b);
    of[0] = of[1] = 0.0f;
#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
    return LOAD32(b + 2);
#else
    SFX(codes) c;
    memcpy(c.u, b + 2, QK);
    return c;
#endif
}

/* Bits [shift, shift + width) of 32 bytes at p, as codes. */
#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
#define FIELD(p, shift, mask) _mm256_and_si256(SHR(LOAD32(p), (shift)), BYTES(mask))
#define OR_FIELD(c, p, shift, mask, up)                                                       \
    (c) = _mm256_or_si256((c), _mm256_slli_epi16(FIELD((p), (shift), (mask)), (up)))
#else
static inline __attribute__((always_inline)) SFX(codes)
    SFX(field)(const uint8_t *p, int shift, int mask) {
    SFX(codes) c;
    for (int l = 0; l < QK; l++) c.u[l] = (uint8_t)((p[l] >> shift) & mask);
    return c;
}
#define FIELD(p, shift, mask) SFX(field)((p), (shift), (mask))
#define OR_FIELD(c, p, shift, mask, up)                                                       \
    for (int l = 0; l < QK; l++) (c).u[l] |= (uint8_t)((((p)[l] >> (shift)) & (mask)) << (up))
#endif

UNPACK(q2_k) { /* 84 bytes: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin */
    const uint8_t *b = row + (j >> 3) * 84;
    const int s = (int)(j & 7);
    const float d = SFX(h2f)(b + 80), dmin = SFX(h2f)(b + 82);
    for (int h = 0; h < 2; h++) {
        const int v = b[2 * s + h];
        sc[h] = d * (float)(v & 15);
        of[h] = -dmin * (float)(v >> 4);
    }
    return FIELD(b + 16 + 32 * (s >> 2), 2 * (s & 3), 3);
}

UNPACK(q3_k) { /* 110 bytes: hmask[32], qs[64], scales[12], d */
    const uint8_t *b = row + (j >> 3) * 110;
    const int s = (int)(j & 7);
    const float d = SFX(h2f)(b + 108);
    for (int h = 0; h < 2; h++) {
        int v;
        SFX(k3_scales)(b + 96, 2 * s + h, &v);
        sc[h] = d * (float)v;
        of[h] = -4.0f * sc[h];
    }
    UNPACK_RET c = FIELD(b + 32 + 32 * (s >> 2), 2 * (s & 3), 3);
    OR_FIELD(c, b, s, 1, 2);
    return c;
}

UNPACK(q4_k) { /* 144 bytes: d, dmin, scales[12], qs[128] */
    const uint8_t *b = row + (j >> 3) * 144;
    const int s = (int)(j & 7);
    uint8_t scale, min;
    scale_min_k4(s, b + 4, &scale, &min);
    sc[0] = sc[1] = SFX(h2f)(b) * (float)scale;
    of[0] = of[1] = -SFX(h2f)(b + 2) * (float)min;
    return FIELD(b + 16 + 32 * (s >> 1), 4 * (s & 1), 15);
}

UNPACK(q5_k) { /* 176 bytes: d, dmin, scales[12], qh[32], qs[128] */
    const uint8_t *b = row + (j >> 3) * 176;
    const int s = (int)(j & 7);
    uint8_t scale, min;
    scale_min_k4(s, b + 4, &scale, &min);
    sc[0] = sc[1] = SFX(h2f)(b) * (float)scale;
    of[0] = of[1] = -SFX(h2f)(b + 2) * (float)min;
    UNPACK_RET c = FIELD(b + 48 + 32 * (s >> 1), 4 * (s & 1), 15);
    OR_FIELD(c, b + 16, s, 1, 4);
    return c;
}

UNPACK(q6_k) { /* 210 bytes: ql[128], qh[64], scales[16] (int8), d */
    const uint8_t *b = row + (j >> 3) * 210;
    const int s = (int)(j & 7), h = s >> 2, qq = s & 3;
    const float d = SFX(h2f)(b + 208);
    const int8_t *scales = (const int8_t *)(b + 192 + 8 * h + 2 * qq);
    for (int i = 0; i < 2; i++) {
        sc[i] = d * (float)scales[i];
        of[i] = -32.0f * sc[i];
    }
    UNPACK_RET c = FIELD(b + 64 * h + 32 * (qq & 1), 4 * (qq >> 1), 15);
    OR_FIELD(c, b + 128 + 32 * h, 2 * qq, 3, 4);
    return c;
}

/* ---- tiles ------------------------------------------------------------------------------- */

#if defined(QDOT_AVX2) || defined(QDOT_VNNI)
static inline __attribute__((always_inline)) float SFX(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight int32 sums of 4 code x activation products each (lanes 0-3: elements 0-15), plus
 * `bias` (per-lane sums of the activation times minus the code bias, see lane_bias). */
static inline __attribute__((always_inline)) __m256i SFX(dot)(__m256i u, __m256i x, __m256i bias,
                                                              int sgn) {
    if (sgn) { /* signed codes: |w| times x with w's sign */
        x = _mm256_sign_epi8(x, u);
        u = _mm256_sign_epi8(u, u);
    }
#ifdef QDOT_VNNI
    return _mm256_dpbusd_epi32(bias, u, x);
#else
    /* u <= 128 and |x| <= 127: the pair sums of maddubs (<= 32512) never saturate. */
    return _mm256_add_epi32(bias, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x),
                                                     _mm256_set1_epi16(1)));
#endif
}

/* -(2^shift) * (sums of 4 consecutive activation codes), the integer part of a code bias
 * (w = sc*(u - 2^shift)); zero for shift < 0. Shared by every weight row of a tile. */
static inline __attribute__((always_inline)) __m256i SFX(lane_bias)(__m256i x, int shift) {
    if (shift < 0) return _mm256_setzero_si256();
#ifdef QDOT_VNNI
    const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), BYTES(1), x);
#else
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(BYTES(1), x),
                                           _mm256_set1_epi16(1));
#endif
    return _mm256_sub_epi32(_mm256_setzero_si256(),
                            _mm256_sll_epi32(sums, _mm_cvtsi32_si128(shift)));
}

/* SGN: signed codes; UNI: one scale for all 32 elements; SHIFT: code bias 2^SHIFT (or -1);
 * OFS: float offsets (0 none, 1 one per block, 2 one per half); PB: bytes per 32 weights
 * (about), to prefetch each row's stream some blocks ahead. */
#define DEFINE_QTILE(T, SGN, UNI, SHIFT, OFS, PB)                                               \
    static inline __attribute__((always_inline)) void SFX(tile_##T)(                          \
        const uint8_t *w, ptrdiff_t w_rs, const int8_t *xq, const xblock *xb, int64_t k,      \
        float *o, ptrdiff_t os, const int RM, const int RN) {                                 \
        const int64_t nb = k / QK;                                                            \
        __m256 acc[4][4];                                                                     \
        float off[4][4];                                                                      \
        for (int r = 0; r < RM; r++)                                                          \
            for (int c = 0; c < RN; c++) {                                                    \
                acc[r][c] = _mm256_setzero_ps();                                              \
                off[r][c] = 0.0f;                                                             \
            }                                                                                 \
        for (int64_t j = 0; j < nb; j++) {                                                    \
            __m256i u[4];                                                                     \
            float sc[4][2], of[4][2];                                                         \
            for (int r = 0; r < RM; r++) {                                                    \
                _mm_prefetch((const char *)(w + r * w_rs + j * (PB) + 1024), _MM_HINT_T1);    \
                u[r] = SFX(unpack_##T)(w + r * w_rs, j, sc[r], of[r]);                        \
            }                                                                                 \
            for (int c = 0; c < RN; c++) {                                                    \
                const __m256i x = LOAD32(xq + c * k + j * QK);                                \
                const xblock xi = xb[c * nb + j];                                             \
                const __m256i bias = SFX(lane_bias)(x, SHIFT);                                \
                for (int r = 0; r < RM; r++) {                                                \
                    const __m256 p = _mm256_cvtepi32_ps(SFX(dot)(u[r], x, bias, SGN));        \
                    __m256 vs;                                                                \
                    if (UNI)                                                                  \
                        vs = _mm256_set1_ps(sc[r][0] * xi.d);                                 \
                    else                                                                      \
                        vs = _mm256_mul_ps(                                                   \
                            _mm256_set_m128(_mm_set1_ps(sc[r][1]), _mm_set1_ps(sc[r][0])),    \
                            _mm256_set1_ps(xi.d));                                            \
                    acc[r][c] = _mm256_fmadd_ps(p, vs, acc[r][c]);                            \
                    if ((OFS) == 1) off[r][c] += of[r][0] * xi.s;                             \
                    if ((OFS) == 2) off[r][c] += of[r][0] * xi.s0 + of[r][1] * xi.s1;         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < RM; r++)                                                          \
            for (int c = 0; c < RN; c++) o[c * os + r] = SFX(hsum)(acc[r][c]) + off[r][c];    \
    }
#else
#define DEFINE_QTILE(T, SGN, UNI, SHIFT, OFS, PB)                                               \
    static inline __attribute__((always_inline)) void SFX(tile_##T)(                          \
        const uint8_t *w, ptrdiff_t w_rs, const int8_t *xq, const xblock *xb, int64_t k,      \
        float *o, ptrdiff_t os, const int RM, const int RN) {                                 \
        const int64_t nb = k / QK;                                                            \
        for (int r = 0; r < RM; r++)                                                          \
            for (int c = 0; c < RN; c++) {                                                    \
                float acc = 0.0f;                                                             \
                for (int64_t j = 0; j < nb; j++) {                                            \
                    float sc[2], of[2];                                                       \
                    const SFX(codes) cw = SFX(unpack_##T)(w + r * w_rs, j, sc, of);           \
                    const int8_t *x = xq + c * k + j * QK;                                    \
                    const xblock xi = xb[c * nb + j];                                         \
                    int32_t s[2] = {0, 0};                                                    \
                    for (int l = 0; l < QK; l++) {                                            \
                        const int v = (SGN) ? (int)(int8_t)cw.u[l] : (int)cw.u[l];            \
                        s[l >> 4] += v * (int)x[l];                                           \
                    }                                                                         \
                    acc += xi.d * (sc[0] * (float)s[0] + sc[1] * (float)s[1]) +               \
                           (of[0] * xi.s0 + of[1] * xi.s1);                                   \
                }                                                                             \
                o[c * os + r] = acc;                                                          \
            }                                                                                 \
    }
#endif

#ifdef QDOT_VNNI
/* ---- 16-row tiles on 512-bit registers (VNNI only) ----------------------------------------
 *
 * Lane r (a dword) of every zmm belongs to weight row r of a 16-row tile, so one vpdpbusd adds
 * 4 code x activation products for each of 16 rows, a block's dot products end fully reduced
 * per row, and the per-block scales are one vector (16 F16 values gathered from the rows).
 * The rows stay in GGUF layout: each block's code bytes are transposed in registers (16 loads
 * of 16 bytes, then a 4x4 dword transpose within 128-bit lanes). The activation's 4-byte
 * groups come as embedded broadcasts from memory. One set of weight registers serves up to
 * T16_RN activation rows. Types: Q4_0, Q4_1 (nibble codes) and Q8_0 (byte codes, made
 * unsigned by flipping the sign bit: w + 128, corrected with the activation's block sums).
 */
#define T16_RN 8
#ifndef PF_DIST
#define PF_DIST 1024
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif

/* out[g] dword r = bytes 4g..4g+3 of the 16 bytes at p + r*rs (r = 0..15). */
static inline __attribute__((always_inline)) void SFX(t16_transpose)(const uint8_t *p,
                                                                     ptrdiff_t rs,
                                                                     __m512i out[4]) {
    /* Row addresses from 4 bases and the strides rs, 2rs, 3rs (x86 addressing modes): the
     * empty asm keeps GCC from hoisting 16 row pointers out of the loop and spilling them. */
    __asm__("" : "+r"(rs));
    const ptrdiff_t rs3 = 3 * rs;
    const uint8_t *base[4] = {p, p + 4 * rs, p + 8 * rs, p + 12 * rs};
    const ptrdiff_t step[4] = {0, rs, 2 * rs, rs3};
    __m512i a[4];
    for (int c = 0; c < 4; c++) { /* 128-bit lane i of a[c] = row 4i + c */
#ifdef T16_BCAST
        /* masked broadcast loads: the merge is a blend (any vector pipe), not a shuffle */
        __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(base[0] + step[c])));
        v = _mm512_mask_broadcast_i32x4(v, 0x00f0, _mm_loadu_si128((const __m128i *)(base[1] + step[c])));
        v = _mm512_mask_broadcast_i32x4(v, 0x0f00, _mm_loadu_si128((const __m128i *)(base[2] + step[c])));
        a[c] = _mm512_mask_broadcast_i32x4(v, 0xf000, _mm_loadu_si128((const __m128i *)(base[3] + step[c])));
#else
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(base[0] + step[c])));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(base[1] + step[c])), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(base[2] + step[c])), 2);
        a[c] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(base[3] + step[c])), 3);
#endif
    }
    const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
}

static inline __attribute__((always_inline)) __m512i SFX(bcast4)(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* F16 values at p + idx[r] (r = 0..15; bits 0-15 of the dword there, or 16-31 if HIGH). */
static inline __attribute__((always_inline)) __m512 SFX(t16_halves)(__m512i gathered, int high) {
    if (high) gathered = _mm512_srli_epi32(gathered, 16);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gathered));
}

/* Integer dots of 32 codes per row (u[g]: elements 4g..4g+3) with one activation block, as two
 * halves (elements 0-15, 16-31); four short chains (a long one would hold the out-of-order
 * window). */
static inline __attribute__((always_inline)) void SFX(t16_dot)(const __m512i *u, const int8_t *x,
                                                               __m512i *lo, __m512i *hi) {
    __m512i s[4];
    for (int g = 0; g < 4; g++)
        s[g] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[(g & 1) * 4 + (g >> 1)],
                                   SFX(bcast4)(x + (g & 1) * 16 + 4 * (g >> 1)));
    for (int g = 0; g < 4; g++)
        s[g] = _mm512_dpbusd_epi32(s[g], u[(g & 1) * 4 + 2 + (g >> 1)],
                                   SFX(bcast4)(x + (g & 1) * 16 + 8 + 4 * (g >> 1)));
    *lo = _mm512_add_epi32(s[0], s[2]); /* chains 0, 2: elements 0-15 */
    *hi = _mm512_add_epi32(s[1], s[3]);
}

/* KIND: 0 Q4_0, 1 Q4_1, 2 Q8_0, 5 Q5_0, 6 Q5_1 (the 32 fifth bits, a dword just before the
 * nibbles, are spread into bit 4 of each code byte through a 16-entry dword table indexed by
 * 4 bits at a time). TS bytes per block, codes at byte CO of a block. Writes
 * o[c*os + r] for the 16 rows at w and RN activation rows. */
static inline __attribute__((always_inline)) void SFX(t16_tile)(
    const uint8_t *w, ptrdiff_t w_rs, const int8_t *xq, const xblock *xb, int64_t k, float *o,
    ptrdiff_t os, int more, const int KIND, const int TS, const int CO, const int RN) {
    const int64_t nb = k / QK, rowlen = nb * TS;
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)w_rs));
    const __m512i low4 = _mm512_set1_epi8(15), flip = _mm512_set1_epi8((char)0x80);
    const float bias = KIND == 0 ? -8.0f : KIND == 2 ? -128.0f : KIND == 5 ? -16.0f : 0.0f;
    const int offset = KIND == 1 || KIND == 6; /* w = d*u + m instead of d*(u - bias) */
    __m512i spread = _mm512_setzero_si512(); /* entry v: byte i = 16 * bit i of v */
    if (KIND == 5 || KIND == 6) {
        int32_t table[16];
        for (int v = 0; v < 16; v++) {
            uint32_t e = 0;
            for (int i = 0; i < 4; i++) e |= (uint32_t)((v >> i) & 1) << (8 * i + 4);
            table[v] = (int32_t)e;
        }
        spread = _mm512_loadu_si512(table);
    }
    __m512 acc[T16_RN];
    for (int c = 0; c < RN; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        const uint8_t *blk = w + j * TS;
        if (RN <= 2 && (j & 3) == 0) { /* decode: prefetch ahead, into the next tile at the end */
            /* (the next tile only when this thread takes it: `more`) */
            const int64_t ahead = j * TS + PF_DIST;
            const uint8_t *pf = ahead < rowlen ? w + ahead : w + 16 * w_rs + (ahead - rowlen);
            if (ahead < rowlen || more)
                for (int r = 0; r < 16; r++)
                    _mm_prefetch((const char *)(pf + r * w_rs), PF_HINT);
        }
        const __m512i head = _mm512_i32gather_epi32(idx, (const void *)blk, 1);
        const __m512 d = SFX(t16_halves)(head, 0);
        __m512 m = _mm512_setzero_ps();
        if (offset) m = SFX(t16_halves)(head, 1);
        __m512i u[8]; /* u[g]: elements 4g..4g+3 (Q8_0: of the first or second 16 bytes) */
        __m512i t[4];
        SFX(t16_transpose)(blk + CO, w_rs, t);
        if (KIND == 2) {
            for (int g = 0; g < 4; g++) u[g] = _mm512_xor_si512(t[g], flip);
            SFX(t16_transpose)(blk + CO + 16, w_rs, t);
            for (int g = 0; g < 4; g++) u[4 + g] = _mm512_xor_si512(t[g], flip);
        } else {
            for (int g = 0; g < 4; g++) {
                u[g] = _mm512_and_si512(t[g], low4);
                u[4 + g] = _mm512_and_si512(_mm512_srli_epi16(t[g], 4), low4);
            }
            if (KIND == 5 || KIND == 6) {
                const __m512i qh = _mm512_i32gather_epi32(idx, (const void *)(blk + CO - 4), 1);
                const __m512i nib = _mm512_set1_epi32(15);
                for (int g = 0; g < 8; g++) { /* elements 4g.. (g < 4), 16 + 4(g-4).. */
                    const int bit = g < 4 ? 4 * g : 16 + 4 * (g - 4);
                    const __m512i v = _mm512_and_si512(_mm512_srli_epi32(qh, bit), nib);
                    u[g] = _mm512_or_si512(u[g], _mm512_permutexvar_epi32(v, spread));
                }
            }
        }
        for (int c = 0; c < RN; c++) {
            const int8_t *x = xq + c * k + j * QK;
            const xblock xi = xb[c * nb + j];
            __m512i lo, hi;
            SFX(t16_dot)(u, x, &lo, &hi);
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
            if (offset) {
                acc[c] = _mm512_fmadd_ps(m, _mm512_set1_ps(xi.s), acc[c]);
                acc[c] = _mm512_fmadd_ps(d, _mm512_mul_ps(dot, _mm512_set1_ps(xi.d)), acc[c]);
            } else {
                const __m512 v =
                    _mm512_fmadd_ps(dot, _mm512_set1_ps(xi.d), _mm512_set1_ps(bias * xi.s));
                acc[c] = _mm512_fmadd_ps(d, v, acc[c]);
            }
        }
    }
    for (int c = 0; c < RN; c++) _mm512_storeu_ps(o + c * os, acc[c]);
}

/* Byte i of each 32-bit lane, zero- or sign-extended. */
#define LANE_BYTE(X, i, mask) _mm512_and_si512(_mm512_srli_epi32((X), 8 * (i)), _mm512_set1_epi32(mask))
#define LANE_SBYTE(X, i) _mm512_srai_epi32(_mm512_slli_epi32((X), 24 - 8 * (i)), 24)

/* The K-quants with 16-row tiles. KIND 3: Q4_K (144-byte superblocks of 256: d, dmin, 12
 * bytes of 6-bit scales and mins, qs[128]); KIND 4: Q6_K (210 bytes: ql[128], qh[64], 16 int8
 * scales, d). Per superblock the scale fields of the 16 rows are gathered once; the codes of
 * each 32-element sub-block are transposed as for Q4_0. */
static inline __attribute__((always_inline)) void SFX(t16k_tile)(
    const uint8_t *w, ptrdiff_t w_rs, const int8_t *xq, const xblock *xb, int64_t k, float *o,
    ptrdiff_t os, int more, const int KIND, const int TS, const int CO, const int RN) {
    (void)CO;
    const int64_t nb = k / QK, nsb = k / 256, rowlen = nsb * TS;
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)w_rs));
    const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
    __m512 acc[T16_RN];
    for (int c = 0; c < RN; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + sb * TS;
        if (RN <= 2) {
            const int64_t ahead = sb * TS + PF_DIST;
            const uint8_t *pf = ahead < rowlen ? w + ahead : w + 16 * w_rs + (ahead - rowlen);
            if (ahead < rowlen || more)
                for (int r = 0; r < 16; r++)
                    for (int l = 0; l < TS; l += 64)
                        _mm_prefetch((const char *)(pf + r * w_rs + l), PF_HINT);
        }
        if (KIND == 3) {
            const __m512i head = _mm512_i32gather_epi32(idx, (const void *)blk, 1);
            const __m512 d = SFX(t16_halves)(head, 0), dmin = SFX(t16_halves)(head, 1);
            const __m512i A = _mm512_i32gather_epi32(idx, (const void *)(blk + 4), 1);
            const __m512i B = _mm512_i32gather_epi32(idx, (const void *)(blk + 8), 1);
            const __m512i C = _mm512_i32gather_epi32(idx, (const void *)(blk + 12), 1);
            for (int p = 0; p < 4; p++) { /* sub-blocks 2p (low nibbles) and 2p + 1 (high) */
                __m512i t[8];
                SFX(t16_transpose)(blk + 16 + 32 * p, w_rs, t);
                SFX(t16_transpose)(blk + 32 + 32 * p, w_rs, t + 4);
                for (int half = 0; half < 2; half++) {
                    const int j = 2 * p + half;
                    __m512i sc, mn;
                    if (j < 4) {
                        sc = LANE_BYTE(A, j, 63);
                        mn = LANE_BYTE(B, j, 63);
                    } else {
                        sc = _mm512_or_si512(LANE_BYTE(C, j - 4, 15),
                                             _mm512_srli_epi32(LANE_BYTE(A, j - 4, 0xc0), 2));
                        mn = _mm512_or_si512(_mm512_srli_epi32(LANE_BYTE(C, j - 4, 0xf0), 4),
                                             _mm512_srli_epi32(LANE_BYTE(B, j - 4, 0xc0), 2));
                    }
                    const __m512 scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
                    const __m512 mins = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn));
                    __m512i u[8];
                    for (int g = 0; g < 8; g++)
                        u[g] = _mm512_and_si512(half ? _mm512_srli_epi16(t[g], 4) : t[g], low4);
                    for (int c = 0; c < RN; c++) {
                        const int64_t b = sb * 8 + j;
                        const xblock xi = xb[c * nb + b];
                        __m512i lo, hi;
                        SFX(t16_dot)(u, xq + c * k + b * QK, &lo, &hi);
                        const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
                        acc[c] = _mm512_fmadd_ps(scale, _mm512_mul_ps(dot, _mm512_set1_ps(xi.d)),
                                                 acc[c]);
                        acc[c] = _mm512_fnmadd_ps(mins, _mm512_set1_ps(xi.s), acc[c]);
                    }
                }
            }
        } else { /* Q6_K */
            /* d: the high half of the dword at 206 (reading at 208 could pass the buffer) */
            const __m512 d =
                SFX(t16_halves)(_mm512_i32gather_epi32(idx, (const void *)(blk + 206), 1), 1);
            __m512i S[4]; /* the 16 int8 scales, 4 per lane */
            for (int q = 0; q < 4; q++)
                S[q] = _mm512_i32gather_epi32(idx, (const void *)(blk + 192 + 4 * q), 1);
            for (int h = 0; h < 2; h++) {
                __m512i H[8];
                SFX(t16_transpose)(blk + 128 + 32 * h, w_rs, H);
                SFX(t16_transpose)(blk + 144 + 32 * h, w_rs, H + 4);
                for (int odd = 0; odd < 2; odd++) { /* ql bytes 32*odd .. +31 of this half */
                    __m512i L[8];
                    SFX(t16_transpose)(blk + 64 * h + 32 * odd, w_rs, L);
                    SFX(t16_transpose)(blk + 64 * h + 32 * odd + 16, w_rs, L + 4);
                    for (int high = 0; high < 2; high++) {
                        const int qq = 2 * high + odd, s = 4 * h + qq;
                        const __m512i SD = S[2 * h + (qq >> 1)];
                        const __m512 sc0 =
                            _mm512_mul_ps(d, _mm512_cvtepi32_ps(LANE_SBYTE(SD, 2 * (qq & 1))));
                        const __m512 sc1 = _mm512_mul_ps(
                            d, _mm512_cvtepi32_ps(LANE_SBYTE(SD, 2 * (qq & 1) + 1)));
                        __m512i u[8];
                        for (int g = 0; g < 8; g++) {
                            const __m512i lo4 = _mm512_and_si512(
                                high ? _mm512_srli_epi16(L[g], 4) : L[g], low4);
                            /* bits 2qq, 2qq+1 of qh to bits 4, 5 */
                            const __m512i hb = qq == 0   ? _mm512_slli_epi16(H[g], 4)
                                               : qq == 1 ? _mm512_slli_epi16(H[g], 2)
                                               : qq == 2 ? H[g]
                                                         : _mm512_srli_epi16(H[g], 2);
                            u[g] = _mm512_or_si512(lo4, _mm512_and_si512(hb, bits45));
                        }
                        for (int c = 0; c < RN; c++) {
                            const int64_t b = sb * 8 + s;
                            const xblock xi = xb[c * nb + b];
                            __m512i lo, hi;
                            SFX(t16_dot)(u, xq + c * k + b * QK, &lo, &hi);
                            const __m512 vd = _mm512_set1_ps(xi.d);
                            const __m512 v0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), vd,
                                                              _mm512_set1_ps(-32.0f * xi.s0));
                            const __m512 v1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), vd,
                                                              _mm512_set1_ps(-32.0f * xi.s1));
                            acc[c] = _mm512_fmadd_ps(sc0, v0, acc[c]);
                            acc[c] = _mm512_fmadd_ps(sc1, v1, acc[c]);
                        }
                    }
                }
            }
        }
    }
    for (int c = 0; c < RN; c++) _mm512_storeu_ps(o + c * os, acc[c]);
}
#undef LANE_BYTE
#undef LANE_SBYTE

#define T16_CASES(FN, KIND, TS, CO)                                                               \
    switch (rn) {                                                                             \
        case 1: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 1); break;          \
        case 2: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 2); break;          \
        case 3: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 3); break;          \
        case 4: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 4); break;          \
        case 5: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 5); break;          \
        case 6: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 6); break;          \
        case 7: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 7); break;          \
        default: SFX(FN)(wm, w_rs, xqc, xbc, k, oc, os, more, KIND, TS, CO, 8); break;         \
    }

/* Rows [m0, m0 + 16*tiles) of every activation row; returns the first row not done. */
#define DEFINE_T16(T, FN, KIND, TS, CO)                                                           \
    static int64_t SFX(t16_##T)(const uint8_t *w, ptrdiff_t w_rs, int64_t m0, int64_t m1,      \
                                const int8_t *xq, const xblock *xb, int64_t k, int64_t n,     \
                                float *o, ptrdiff_t os) {                                     \
        const int64_t nb = k / QK, end = m0 + (m1 - m0) / 16 * 16;                           \
        if (w_rs > (1 << 26)) return m0; /* gather offsets are 32-bit */                       \
        for (int64_t c = 0; c < n; c += T16_RN) {                                             \
            const int rn = n - c < T16_RN ? (int)(n - c) : T16_RN;                            \
            const int8_t *xqc = xq + c * k;                                                   \
            const xblock *xbc = xb + c * nb;                                                  \
            for (int64_t m = m0; m < end; m += 16) {                                          \
                const uint8_t *wm = w + m * w_rs;                                             \
                float *oc = o + c * os + m;                                                   \
                const int more = m + 16 < end;                                                \
                T16_CASES(FN, KIND, TS, CO)                                                       \
            }                                                                                 \
        }                                                                                     \
        return end;                                                                           \
    }

DEFINE_T16(q4_0, t16_tile, 0, 18, 2)
DEFINE_T16(q4_1, t16_tile, 1, 20, 4)
DEFINE_T16(q8_0, t16_tile, 2, 34, 2)
DEFINE_T16(q5_0, t16_tile, 5, 22, 6)
DEFINE_T16(q5_1, t16_tile, 6, 24, 8)
DEFINE_T16(q4_k, t16k_tile, 3, 144, 0)
DEFINE_T16(q6_k, t16k_tile, 4, 210, 0)
#undef DEFINE_T16
#undef T16_CASES
#define T16_q4_0(...) m0 = SFX(t16_q4_0)(__VA_ARGS__)
#define T16_q4_1(...) m0 = SFX(t16_q4_1)(__VA_ARGS__)
#define T16_q8_0(...) m0 = SFX(t16_q8_0)(__VA_ARGS__)
#define T16_q5_0(...) m0 = SFX(t16_q5_0)(__VA_ARGS__)
#define T16_q5_1(...) m0 = SFX(t16_q5_1)(__VA_ARGS__)
#define T16_q4_k(...) m0 = SFX(t16_q4_k)(__VA_ARGS__)
#define T16_q6_k(...) m0 = SFX(t16_q6_k)(__VA_ARGS__)
#endif
#ifndef T16_q4_0
#define T16_q4_0(...) (void)0
#define T16_q4_1(...) (void)0
#define T16_q8_0(...) (void)0
#define T16_q5_0(...) (void)0
#define T16_q5_1(...) (void)0
#define T16_q4_k(...) (void)0
#define T16_q6_k(...) (void)0
#endif
#define T16_q2_k(...) (void)0
#define T16_q3_k(...) (void)0
#define T16_q5_k(...) (void)0

#ifdef QDOT_VNNI
/* ---- F16 / BF16 weights on 512-bit registers (AVX512F; built with the VNNI set) ------------
 *
 * Exact F32 arithmetic: 16 weights at a time widened to F32 in registers (vcvtph2ps, or a
 * 16-bit shift for BF16) and FMA'd against F32 activations, tiles of 4 weight rows x up to 6
 * activation rows (24 accumulators), so prompt products run at the FMA rate without writing
 * F32 weights anywhere. A row tail (K not a multiple of 16) is a masked step. */
static inline __attribute__((always_inline)) __m512 SFX(wide16)(const uint8_t *p, __mmask16 mk,
                                                                const int BF) {
    const __m256i h = _mm256_maskz_loadu_epi16(mk, p);
    if (BF) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* Elements [k0, k1) of the rows; the sums are added to o unless k0 == 0. */
static inline __attribute__((always_inline)) void SFX(ftile)(
    const uint8_t *w, ptrdiff_t w_rs, const float *x, ptrdiff_t xs, int64_t k0, int64_t k,
    float *o, ptrdiff_t os, const int BF, const int RM, const int RN) {
    __m512 acc[4][6];
    _Pragma("GCC unroll 8") for (int r = 0; r < RM; r++)
        _Pragma("GCC unroll 8") for (int c = 0; c < RN; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t j = k0; j < k; j += 16) {
        const __mmask16 mk = j + 16 <= k ? (__mmask16)0xffff : (__mmask16)((1u << (k - j)) - 1);
        if (RN <= 2 && (j & 31) == 0)
            _Pragma("GCC unroll 8") for (int r = 0; r < RM; r++)
                _mm_prefetch((const char *)(w + r * w_rs + 2 * j + 1024), _MM_HINT_T1);
        __m512 wv[4];
        _Pragma("GCC unroll 8") for (int r = 0; r < RM; r++) wv[r] = SFX(wide16)(w + r * w_rs + 2 * j, mk, BF);
        _Pragma("GCC unroll 8") for (int c = 0; c < RN; c++) {
            const __m512 xv = _mm512_maskz_loadu_ps(mk, x + c * xs + j);
            _Pragma("GCC unroll 8") for (int r = 0; r < RM; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < RM; r++)
        _Pragma("GCC unroll 8") for (int c = 0; c < RN; c++)
            o[c * os + r] = (k0 ? o[c * os + r] : 0.0f) + _mm512_reduce_add_ps(acc[r][c]);
}

#define FTILE_RN(RM, BF)                                                                        \
    switch (rn) {                                                                             \
        case 1: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 1); break;                     \
        case 2: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 2); break;                     \
        case 3: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 3); break;                     \
        case 4: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 4); break;                     \
        case 5: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 5); break;                     \
        default: SFX(ftile)(wm, w_rs, xc, xs, k0, k1, oc, os, BF, RM, 6); break;                    \
    }

/* o[c*os + m] = sum_k W[m][k] x[c*xs + k] for rows [m0, m1), every activation row. */
#define FGEMM_KB 1024
#define DEFINE_FGEMM(T, BF)                                                                   \
    static void SFX(fgemm_##T)(const uint8_t *w, ptrdiff_t w_rs, int64_t m0, int64_t m1,       \
                               const float *x, ptrdiff_t xs, int64_t k, int64_t n, float *o,  \
                               ptrdiff_t os) {                                                \
        for (int64_t c = 0; c < n; c += 6)                                                    \
            for (int64_t k0 = 0; k0 < k; k0 += FGEMM_KB) { /* 6 rows of x stay in L1 */      \
            const int64_t k1 = k - k0 > FGEMM_KB ? k0 + FGEMM_KB : k;                         \
            const int rn = n - c < 6 ? (int)(n - c) : 6;                                      \
            const float *xc = x + c * xs;                                                     \
            int64_t m = m0;                                                                   \
            for (; m + 4 <= m1; m += 4) {                                                     \
                const uint8_t *wm = w + m * w_rs;                                             \
                float *oc = o + c * os + m;                                                   \
                FTILE_RN(4, BF)                                                               \
            }                                                                                 \
            for (; m < m1; m++) {                                                             \
                const uint8_t *wm = w + m * w_rs;                                             \
                float *oc = o + c * os + m;                                                   \
                FTILE_RN(1, BF)                                                               \
            }                                                                                 \
        }                                                                                     \
    }
DEFINE_FGEMM(f16, 0)
DEFINE_FGEMM(bf16, 1)
#undef DEFINE_FGEMM
#undef FGEMM_KB
#undef FTILE_RN
#endif

/* o[c*os + m] for weight rows m in [m0, m1) and activation rows c in [0, n). */
#define DEFINE_QGEMM(T, SGN, UNI, SHIFT, OFS, PB)                                               \
    DEFINE_QTILE(T, SGN, UNI, SHIFT, OFS, PB)                                                 \
    static void SFX(qgemm_##T)(const uint8_t *w, ptrdiff_t w_rs, int64_t m0, int64_t m1,      \
                               const int8_t *xq, const xblock *xb, int64_t k, int64_t n,      \
                               float *o, ptrdiff_t os) {                                      \
        const int64_t nb = k / QK;                                                            \
        T16_##T(w, w_rs, m0, m1, xq, xb, k, n, o, os);                                         \
        for (int64_t c = 0; c < n; c += 4) {                                                  \
            const int rn = n - c < 4 ? (int)(n - c) : 4;                                      \
            const int8_t *xqc = xq + c * k;                                                   \
            const xblock *xbc = xb + c * nb;                                                  \
            float *oc = o + c * os;                                                           \
            int64_t m = m0;                                                                   \
            for (; m + 4 <= m1; m += 4) {                                                     \
                if (rn == 4)                                                                  \
                    SFX(tile_##T)(w + m * w_rs, w_rs, xqc, xbc, k, oc + m, os, 4, 4);         \
                else                                                                          \
                    for (int i = 0; i < rn; i++)                                              \
                        SFX(tile_##T)(w + m * w_rs, w_rs, xqc + i * k, xbc + i * nb, k,       \
                                      oc + i * os + m, os, 4, 1);                             \
            }                                                                                 \
            for (; m < m1; m++) {                                                             \
                if (rn == 4)                                                                  \
                    SFX(tile_##T)(w + m * w_rs, w_rs, xqc, xbc, k, oc + m, os, 1, 4);         \
                else                                                                          \
                    for (int i = 0; i < rn; i++)                                              \
                        SFX(tile_##T)(w + m * w_rs, w_rs, xqc + i * k, xbc + i * nb, k,       \
                                      oc + i * os + m, os, 1, 1);                             \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_QGEMM(q4_0, 0, 1, 3, 0, 18)
DEFINE_QGEMM(q4_1, 0, 1, -1, 1, 20)
DEFINE_QGEMM(q5_0, 0, 1, 4, 0, 22)
DEFINE_QGEMM(q5_1, 0, 1, -1, 1, 24)
DEFINE_QGEMM(q8_0, 1, 1, -1, 0, 34)
DEFINE_QGEMM(q2_k, 0, 0, -1, 2, 10)
DEFINE_QGEMM(q3_k, 0, 0, 2, 0, 13)
DEFINE_QGEMM(q4_k, 0, 1, -1, 1, 18)
DEFINE_QGEMM(q5_k, 0, 1, -1, 1, 22)
DEFINE_QGEMM(q6_k, 0, 0, 5, 0, 26)

#undef DEFINE_QGEMM
#undef T16_q4_0
#undef T16_q4_1
#undef T16_q8_0
#undef T16_q5_0
#undef T16_q5_1
#undef T16_q2_k
#undef T16_q3_k
#undef T16_q4_k
#undef T16_q5_k
#undef T16_q6_k
#undef DEFINE_QTILE
#undef UNPACK
#undef UNPACK_RET
#undef FIELD
#undef OR_FIELD
#undef HIGH_BITS
#undef LOAD16
#undef LOAD32
#undef BYTES
#undef SHR

static const qgemm_fn SFX(QGEMM)[N_QKINDS] = {
    [QK_Q4_0] = SFX(qgemm_q4_0), [QK_Q4_1] = SFX(qgemm_q4_1), [QK_Q5_0] = SFX(qgemm_q5_0),
    [QK_Q5_1] = SFX(qgemm_q5_1), [QK_Q8_0] = SFX(qgemm_q8_0), [QK_Q2_K] = SFX(qgemm_q2_k),
    [QK_Q3_K] = SFX(qgemm_q3_k), [QK_Q4_K] = SFX(qgemm_q4_k), [QK_Q5_K] = SFX(qgemm_q5_k),
    [QK_Q6_K] = SFX(qgemm_q6_k),
};
