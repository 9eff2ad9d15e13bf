/* Row kernels of the small ops (_native_ops.c), on packed F32 rows; included once per
 * instruction set with SFX(name) naming the copy (the AVX2 copy is compiled with
 * target("avx2,fma,f16c") and OPS_F16C set, so GCC vectorises the plain loops for it).
 *
 * Output and input rows may be the same memory (an in-place op), so no pointer is restrict:
 * each loop that writes o reads element i of its inputs only to write element i of its output
 * (the pairs of rope: elements i and i + n_rot/2, or 2i and 2i + 1), so it has no dependence
 * between iterations when o == a exactly, and `GCC ivdep` lets GCC vectorise it without
 * versioning it for aliasing (the caller refuses partial overlaps).
 */
#define OPS_IVDEP _Pragma("GCC ivdep")

/* e^x for every float: Cephes' polynomial on x - n·ln2 (about 1 ulp), scaled by 2^n in two
 * halves so that the overflow to inf and the gradual underflow to 0 come out right; NaN
 * propagates (both clamps compare false). Branch-free so that the loops calling it vectorise. */
static inline float SFX(ops_exp)(float x) {
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    float n = x * 1.44269504088896341f + 12582912.0f;
    n -= 12582912.0f; /* round to nearest integer */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float z = r * r;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * z + r + 1.0f;
    const int32_t ni = (int32_t)n;
    const int32_t h = ni >> 1;
    const uint32_t b1 = (uint32_t)(h + 127) << 23, b2 = (uint32_t)(ni - h + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

#ifdef OPS_F16C
/* ops_exp on 8 lanes with AVX2/FMA (GCC does not if-convert the scalar one's clamps). max/min
 * return their second operand for a NaN, so x stays NaN through the clamps. */
static inline __m256 SFX(ops_exp8)(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    const __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
#endif

/* o = a ∘ b, b repeating every bn elements (bn divides n). */
static void SFX(ops_binary)(int op, const float *a, const float *b, int64_t bn,
                            float *o, int64_t n) {
    if (bn == 1) {
        const float s = b[0];
        switch (op) {
        case OPS_ADD: OPS_IVDEP for (int64_t i = 0; i < n; i++) o[i] = a[i] + s; break;
        case OPS_SUB: OPS_IVDEP for (int64_t i = 0; i < n; i++) o[i] = a[i] - s; break;
        case OPS_MUL: OPS_IVDEP for (int64_t i = 0; i < n; i++) o[i] = a[i] * s; break;
        default: OPS_IVDEP for (int64_t i = 0; i < n; i++) o[i] = a[i] / s; break;
        }
        return;
    }
    for (int64_t j = 0; j < n; j += bn) {
        const float *x = a + j;
        float *y = o + j;
        switch (op) {
        case OPS_ADD: OPS_IVDEP for (int64_t i = 0; i < bn; i++) y[i] = x[i] + b[i]; break;
        case OPS_SUB: OPS_IVDEP for (int64_t i = 0; i < bn; i++) y[i] = x[i] - b[i]; break;
        case OPS_MUL: OPS_IVDEP for (int64_t i = 0; i < bn; i++) y[i] = x[i] * b[i]; break;
        default: OPS_IVDEP for (int64_t i = 0; i < bn; i++) y[i] = x[i] / b[i]; break;
        }
    }
}

/* Σ x² in F32 over 16 interleaved partial sums, then pairwise (as accurate as numpy's pairwise
 * summation for the row lengths of models). */
static float SFX(ops_sumsq)(const float *x, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j] * x[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += x[i] * x[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* o = x / d (the division numpy's rms_norm does, not a multiplication by 1/d). */
static void SFX(ops_div1)(const float *x, float d, float *o, int64_t n) {
    OPS_IVDEP for (int64_t i = 0; i < n; i++) o[i] = x[i] / d;
}

/* o = exp(x - max) / Σ exp(x - max). A NaN anywhere makes the row NaN, as in numpy, whatever
 * the max makes of it: its exp enters the sum that divides every element. */
static void SFX(ops_softmax)(const float *x, float *o, int64_t n) {
    float m = x[0];
    int64_t i = 0;
    float acc[16] = {0};
#ifdef OPS_F16C
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
        float lanes[8];
        _mm256_storeu_ps(lanes, vm);
        for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    i = 0;
#ifdef OPS_F16C
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vs0 = _mm256_setzero_ps(), vs1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m256 e0 = SFX(ops_exp8)(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        const __m256 e1 = SFX(ops_exp8)(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
        _mm256_storeu_ps(o + i, e0);
        _mm256_storeu_ps(o + i + 8, e1);
        vs0 = _mm256_add_ps(vs0, e0);
        vs1 = _mm256_add_ps(vs1, e1);
    }
    _mm256_storeu_ps(acc, vs0);
    _mm256_storeu_ps(acc + 8, vs1);
#endif
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            const float e = SFX(ops_exp)(x[i + j] - m);
            o[i + j] = e;
            acc[j] += e;
        }
    for (int j = 0; i < n; i++, j++) {
        const float e = SFX(ops_exp)(x[i] - m);
        o[i] = e;
        acc[j] += e;
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    const float s = acc[0];
    OPS_IVDEP for (i = 0; i < n; i++) o[i] /= s;
}

/* o = silu(x) = x / (1 + e^-x), or the tanh GELU 0.5·x·(1 + tanh(y)) written as its equal
 * x / (1 + e^(-2y)), y = 0.7978845608·x·(1 + 0.044715·x²) (no cancellation near y = 0). */
static inline float SFX(ops_gate1)(int kind, float v) {
    if (kind == OPS_SILU) return v / (1.0f + SFX(ops_exp)(-v));
    const float y = 0.7978845608f * v * (1.0f + 0.044715f * v * v);
    return v / (1.0f + SFX(ops_exp)(-2.0f * y));
}

static void SFX(ops_gate)(int kind, const float *x, float *o, int64_t n) {
    int64_t i = 0;
#ifdef OPS_F16C
    const __m256 one = _mm256_set1_ps(1.0f);
    if (kind == OPS_SILU) {
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            const __m256 e = SFX(ops_exp8)(_mm256_sub_ps(_mm256_setzero_ps(), v));
            _mm256_storeu_ps(o + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
        }
    } else {
        const __m256 c = _mm256_set1_ps(-2.0f * 0.7978845608f), a = _mm256_set1_ps(0.044715f);
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            const __m256 t = _mm256_fmadd_ps(_mm256_mul_ps(a, v), v, one);
            const __m256 e = SFX(ops_exp8)(_mm256_mul_ps(_mm256_mul_ps(c, v), t));
            _mm256_storeu_ps(o + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
        }
    }
#endif
    for (; i < n; i++) o[i] = SFX(ops_gate1)(kind, x[i]);
}

/* o = f(x) for the unary ops (OPS_SCALE ... OPS_EXP; a, b: scale's s, clamp's lo and hi), as
 * numpy computes them: relu is max(x, 0) with NaN kept, clamp max(min(x, hi), lo). */
static void SFX(ops_unary)(int kind, const float *x, float a, float b, float *o, int64_t n) {
    int64_t i = 0;
    switch (kind) {
    case OPS_SCALE: OPS_IVDEP for (; i < n; i++) o[i] = x[i] * a; return;
    case OPS_CLAMP:
        OPS_IVDEP for (; i < n; i++) {
            const float v = x[i] < b || x[i] != x[i] ? x[i] : b;
            o[i] = v > a || v != v ? v : a;
        }
        return;
    case OPS_NEG: OPS_IVDEP for (; i < n; i++) o[i] = -x[i]; return;
    case OPS_SQR: OPS_IVDEP for (; i < n; i++) o[i] = x[i] * x[i]; return;
    case OPS_SQRT: OPS_IVDEP for (; i < n; i++) o[i] = sqrtf(x[i]); return;
    case OPS_RELU: OPS_IVDEP for (; i < n; i++) o[i] = x[i] > 0.0f || x[i] != x[i] ? x[i] : 0.0f;
        return;
    case OPS_SILU_1: SFX(ops_gate)(OPS_SILU, x, o, n); return;
    case OPS_GELU_1: SFX(ops_gate)(OPS_GELU, x, o, n); return;
    default: break; /* sigmoid, exp */
    }
#ifdef OPS_F16C
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 y = kind == OPS_EXP
                             ? SFX(ops_exp8)(v)
                             : _mm256_div_ps(one, _mm256_add_ps(one, SFX(ops_exp8)(
                                                                         _mm256_sub_ps(
                                                                             _mm256_setzero_ps(), v))));
        _mm256_storeu_ps(o + i, y);
    }
#endif
    for (; i < n; i++)
        o[i] = kind == OPS_EXP ? SFX(ops_exp)(x[i]) : 1.0f / (1.0f + SFX(ops_exp)(-x[i]));
}

/* Rotate the first n_rot values of a row of d: pairs (x[2i], x[2i+1]) (mode 0) or
 * (x[i], x[i + n_rot/2]) (mode 2) by cos[i], sin[i]; copy the rest. */
static void SFX(ops_rope)(int mode, const float *x, const float *c,
                          const float *s, float *o, int64_t n_rot, int64_t d) {
    const int64_t h = n_rot / 2;
    if (mode == 0) {
        OPS_IVDEP for (int64_t i = 0; i < h; i++) {
            const float a = x[2 * i], b = x[2 * i + 1];
            o[2 * i] = a * c[i] - b * s[i];
            o[2 * i + 1] = a * s[i] + b * c[i];
        }
    } else {
        const float *xb = x + h;
        float *ob = o + h;
        OPS_IVDEP for (int64_t i = 0; i < h; i++) {
            const float a = x[i], b = xb[i];
            o[i] = a * c[i] - b * s[i];
            ob[i] = a * s[i] + b * c[i];
        }
    }
    if (o != x)
        for (int64_t i = n_rot; i < d; i++) o[i] = x[i];
}

/* Packed F16 <-> F32 rows, exactly as numpy converts (ops_f32_to_f16_1 in _native_ops.c). */
static void SFX(ops_f16_to_f32)(const uint16_t *x, float *o, int64_t n) {
    int64_t i = 0;
#ifdef OPS_F16C
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(o + i, v);
        /* F16C quiets signalling NaNs; numpy keeps their bits: redo those lanes. */
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
            for (int j = 0; j < 8; j++) o[i + j] = half_to_float(x[i + j]);
    }
#endif
    for (; i < n; i++) o[i] = half_to_float(x[i]);
}

static void SFX(ops_f32_to_f16)(const float *x, uint16_t *o, int64_t n) {
    int64_t i = 0;
#ifdef OPS_F16C
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        _mm_storeu_si128((__m128i *)(o + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* F16C quiets NaNs; numpy truncates their payload instead: redo those lanes. */
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
            for (int j = 0; j < 8; j++) o[i + j] = ops_f32_to_f16_1(x[i + j]);
    }
#endif
    for (; i < n; i++) o[i] = ops_f32_to_f16_1(x[i]);
}

static void SFX(ops_f32_to_bf16)(const float *x, uint16_t *o, int64_t n) {
    OPS_IVDEP for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        const uint32_t nan = (b >> 16) | 0x40u;
        o[i] = (uint16_t)((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
    }
}

static void SFX(ops_bf16_to_f32)(const uint16_t *x, float *o, int64_t n) {
    OPS_IVDEP for (int64_t i = 0; i < n; i++) {
        const uint32_t b = (uint32_t)x[i] << 16;
        memcpy(&o[i], &b, 4);
    }
}

static const ops_kernels SFX(OPS_KERNELS) = {
    SFX(ops_binary),     SFX(ops_sumsq),       SFX(ops_div1),          SFX(ops_softmax),
    SFX(ops_gate),       SFX(ops_rope),        SFX(ops_f16_to_f32),    SFX(ops_f32_to_f16),
    SFX(ops_bf16_to_f32), SFX(ops_f32_to_bf16), SFX(ops_unary),
};
