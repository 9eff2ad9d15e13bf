/* Matrix-vector kernels over GGUF-layout weight rows (included twice by _native.c).
 *
 * The including file defines SFX(name) (a per-target name suffix) and may switch the target
 * (AVX2/FMA/F16C) with #pragma GCC target before including this file. Everything here is
 * plain C written so that GCC vectorises it at -O3 without -ffast-math: each block is decoded
 * into a small F32 array in L1, then multiplied into 32 independent accumulator lanes (an
 * element-wise update, which needs no reassociation); the lanes are summed once per row.
 */

/* ---- block decoders: blk -> y[0 .. block size) ------------------------------------------- */

static inline __attribute__((always_inline)) float SFX(f16)(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return half_to_float(h);
#endif
}

static inline __attribute__((always_inline)) void SFX(deq_f32)(const uint8_t *b, float *y) {
    memcpy(y, b, 32 * sizeof(float));
}

static inline __attribute__((always_inline)) void SFX(deq_f16)(const uint8_t *b, float *y) {
#ifdef __F16C__
    for (int j = 0; j < 32; j += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(b + 2 * j));
        _mm256_storeu_ps(y + j, _mm256_cvtph_ps(h));
    }
#else
    uint16_t h[32];
    memcpy(h, b, sizeof h);
    for (int j = 0; j < 32; j++) y[j] = half_to_float(h[j]);
#endif
}

static inline __attribute__((always_inline)) void SFX(deq_bf16)(const uint8_t *b, float *y) {
#ifdef __AVX2__
    /* GCC keeps the loop below scalar: widen 8 values at a time, shift into the high half. */
    for (int j = 0; j < 32; j += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + 2 * j)));
        _mm256_storeu_ps(y + j, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    return;
#endif
    uint16_t h[32];
    uint32_t u[32];
    memcpy(h, b, sizeof h);
    for (int j = 0; j < 32; j++) u[j] = (uint32_t)h[j] << 16;
    memcpy(y, u, sizeof u);
}

static inline __attribute__((always_inline)) void SFX(deq_q8_0)(const uint8_t *b, float *y) {
    uint16_t dh;
    memcpy(&dh, b, 2);
    const float d = SFX(f16)(dh);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = d * (float)q[j];
}

static inline __attribute__((always_inline)) void SFX(deq_q4_0)(const uint8_t *b, float *y) {
    uint16_t dh;
    memcpy(&dh, b, 2);
    const float d = SFX(f16)(dh);
    const uint8_t *q = b + 2;
    /* d·q − 8d is d·(q − 8) exactly; with FMA it is rounded once, as ggml's (q − 8)·d. */
    const float d8 = 8.0f * d;
#ifdef __AVX2__
    /* GCC turns the nibble loops below into scalar byte code: spell the unpacking out. */
    const __m128i bytes = _mm_loadu_si128((const __m128i *)q);
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m256 vd = _mm256_set1_ps(d), vd8 = _mm256_set1_ps(d8);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; i++) {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i]));
        _mm256_storeu_ps(y + 8 * i, _mm256_fmsub_ps(vd, f, vd8));
    }
#else
    for (int j = 0; j < 16; j++) y[j] = d * (float)(q[j] & 15) - d8;
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)(q[j] >> 4) - d8;
#endif
}

static inline __attribute__((always_inline)) void SFX(deq_q4_k)(const uint8_t *b, float *y) {
    uint16_t dh[2];
    memcpy(dh, b, 4);
    const float d = SFX(f16)(dh[0]), dmin = SFX(f16)(dh[1]);
    const uint8_t *sc = b + 4, *q = b + 16;
    for (int g = 0; g < 4; g++) {
        uint8_t s1, m1, s2, m2;
        scale_min_k4(2 * g, sc, &s1, &m1);
        scale_min_k4(2 * g + 1, sc, &s2, &m2);
        const float d1 = d * s1, c1 = dmin * m1, d2 = d * s2, c2 = dmin * m2;
        float *out = y + 64 * g;
        for (int l = 0; l < 32; l++) out[l] = d1 * (float)(q[l] & 15) - c1;
        for (int l = 0; l < 32; l++) out[l + 32] = d2 * (float)(q[l] >> 4) - c2;
        q += 32;
    }
}

static inline __attribute__((always_inline)) void SFX(deq_q6_k)(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    const float d = SFX(f16)(dh);
    for (int half = 0; half < 2; half++) {
        float *out = y + 128 * half;
        for (int is = 0; is < 2; is++) {
            const float s1 = d * sc[is], s2 = d * sc[is + 2], s3 = d * sc[is + 4],
                        s4 = d * sc[is + 6];
            for (int l = 16 * is; l < 16 * is + 16; l++) {
                out[l] = s1 * (float)((int)((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32);
                out[l + 32] = s2 * (float)((int)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
                out[l + 64] = s3 * (float)((int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                out[l + 96] = s4 * (float)((int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

/* ---- row products ------------------------------------------------------------------------ */

/* out[n * os] = sum_k row[k] * x[n * xs + k] for n < NN (NN a compile-time constant after
 * inlining). BS elements are stored in TS bytes per block; K is a multiple of BS. */
#define DEFINE_ROW(T, BS, TS)                                                                  \
    static inline __attribute__((always_inline)) void SFX(row_##T)(                           \
        const uint8_t *row, const float *x, ptrdiff_t xs, float *o, ptrdiff_t os, int64_t nb, \
        const int NN) {                                                                        \
        float acc[4][32];                                                                      \
        float y[BS];                                                                           \
        for (int n = 0; n < NN; n++)                                                           \
            for (int j = 0; j < 32; j++) acc[n][j] = 0.0f;                                     \
        for (int64_t ib = 0; ib < nb; ib++) {                                                  \
            SFX(deq_##T)(row + ib * (TS), y);                                                  \
            for (int n = 0; n < NN; n++) {                                                     \
                const float *xb = x + n * xs + ib * (BS);                                      \
                for (int s = 0; s < (BS); s += 32)                                             \
                    for (int j = 0; j < 32; j++) acc[n][j] += y[s + j] * xb[s + j];            \
            }                                                                                  \
        }                                                                                      \
        for (int n = 0; n < NN; n++) {                                                         \
            float t[8];                                                                        \
            for (int j = 0; j < 8; j++)                                                        \
                t[j] = (acc[n][j] + acc[n][j + 8]) + (acc[n][j + 16] + acc[n][j + 24]);        \
            o[n * os] = ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));     \
        }                                                                                      \
    }                                                                                          \
    static void SFX(rows_##T)(const uint8_t *row, const float *x, ptrdiff_t xs, float *o,      \
                              ptrdiff_t os, int64_t nb, int64_t n) {                           \
        int64_t i = 0;                                                                         \
        for (; i + 4 <= n; i += 4) SFX(row_##T)(row, x + i * xs, xs, o + i * os, os, nb, 4);   \
        switch (n - i) {                                                                       \
            case 3: SFX(row_##T)(row, x + i * xs, xs, o + i * os, os, nb, 3); break;           \
            case 2: SFX(row_##T)(row, x + i * xs, xs, o + i * os, os, nb, 2); break;           \
            case 1: SFX(row_##T)(row, x + i * xs, xs, o + i * os, os, nb, 1); break;           \
            default: break;                                                                    \
        }                                                                                      \
    }                                                                                          \
    static void SFX(deqrow_##T)(const uint8_t *row, float *o, int64_t nb) {                    \
        for (int64_t ib = 0; ib < nb; ib++) SFX(deq_##T)(row + ib * (TS), o + ib * (BS));      \
    }

DEFINE_ROW(f32, 32, 128)
DEFINE_ROW(f16, 32, 64)
DEFINE_ROW(bf16, 32, 64)
DEFINE_ROW(q8_0, 32, 34)
DEFINE_ROW(q4_0, 32, 18)
DEFINE_ROW(q4_k, 256, 144)
DEFINE_ROW(q6_k, 256, 210)

#undef DEFINE_ROW

static const kernel_set SFX(KERNELS)[N_KINDS] = {
    [KIND_F32] = {SFX(rows_f32), SFX(deqrow_f32)},
    [KIND_F16] = {SFX(rows_f16), SFX(deqrow_f16)},
    [KIND_BF16] = {SFX(rows_bf16), SFX(deqrow_bf16)},
    [KIND_Q8_0] = {SFX(rows_q8_0), SFX(deqrow_q8_0)},
    [KIND_Q4_0] = {SFX(rows_q4_0), SFX(deqrow_q4_0)},
    [KIND_Q4_K] = {SFX(rows_q4_k), SFX(deqrow_q4_k)},
    [KIND_Q6_K] = {SFX(rows_q6_k), SFX(deqrow_q6_k)},
};
