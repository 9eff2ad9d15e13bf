/* Fused attention, one work item (included once per instruction set by _attention.c).
 *
 * The including file defines SFX(name) (a per-target suffix), VW (floats per vector: 16, 8 or
 * 1) and the vector layer below it needs (vf, V_LOAD, V_FMA, V_EXP, ...), after switching the
 * target with #pragma GCC target. A work item is one KV head, one tile of query tokens and one
 * slice of the history; it walks the slice in blocks of ATT_BLOCK cells with an online softmax
 * (running max m, running sum l, unnormalised output acc per query row), so no score matrix
 * larger than rows x ATT_BLOCK exists. Each block of K and V is decoded to F32 once into L1/L2
 * scratch and shared by all rows of the item (the g query heads of the KV head, times the tile's
 * tokens): the F16 history is read in place, once per item, never converted as a whole.
 */

/* dst[0 .. n) = the F32 values of n elements at src, es bytes apart. */
static void SFX(att_to_f32)(const uint8_t *src, int type, ptrdiff_t es, int64_t n, float *dst) {
    int64_t i = 0;
    if (type == ATT_F32) {
        if (es == 4) {
            memcpy(dst, src, (size_t)n * 4);
            return;
        }
        for (; i < n; i++) memcpy(dst + i, src + i * es, 4);
        return;
    }
    if (type == ATT_F16) {
#if VW > 1
        if (es == 2)
            for (; i + VW <= n; i += VW) V_STORE(dst + i, V_LOAD_F16(src + 2 * i));
#endif
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + i * es, 2);
            dst[i] = SFX(att_half)(h);
        }
        return;
    }
    for (; i < n; i++) { /* BF16: the upper half of an F32 */
        uint16_t h;
        memcpy(&h, src + i * es, 2);
        const uint32_t u = (uint32_t)h << 16;
        memcpy(dst + i, &u, 4);
    }
}

static inline float SFX(att_max)(const float *x, int64_t n) {
    int64_t i = 0;
    float best = -INFINITY;
#if VW > 1
    if (n >= VW) {
        vf vb = V_LOAD(x);
        for (i = VW; i + VW <= n; i += VW) vb = V_MAX(vb, V_LOAD(x + i));
        best = V_HMAX(vb);
    }
#endif
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

/* x[i] = exp(x[i] - shift) for i < n; return the sum. */
static inline float SFX(att_exp_sum)(float *x, int64_t n, float shift) {
    int64_t i = 0;
    float total = 0.0f;
#if VW > 1
    const vf vs = V_SET1(shift);
    vf vt = V_ZERO();
    for (; i + VW <= n; i += VW) {
        const vf e = V_EXP(V_SUB(V_LOAD(x + i), vs));
        V_STORE(x + i, e);
        vt = V_ADD(vt, e);
    }
    total = V_HSUM(vt);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - shift);
        total += x[i];
    }
    return total;
}

/* s[jj] = q . k_jj over dp (a multiple of VW, zero-padded) for the rows listed; rows of q are
 * dp apart, k rows dp apart, s rows ATT_BLOCK apart. Four rows share each key load. */
static void SFX(att_scores)(const float *q, const float *k, float *s, const int32_t *rows,
                            int64_t n_rows, int64_t nk, int64_t dp) {
    for (int64_t jj = 0; jj < nk; jj++) {
        const float *kr = k + jj * dp;
        int64_t a = 0;
        for (; a + 4 <= n_rows; a += 4) {
            const float *q0 = q + rows[a] * dp, *q1 = q + rows[a + 1] * dp;
            const float *q2 = q + rows[a + 2] * dp, *q3 = q + rows[a + 3] * dp;
            vf s0 = V_ZERO(), s1 = V_ZERO(), s2 = V_ZERO(), s3 = V_ZERO();
            for (int64_t d = 0; d < dp; d += VW) {
                const vf kv = V_LOAD(kr + d);
                s0 = V_FMA(V_LOAD(q0 + d), kv, s0);
                s1 = V_FMA(V_LOAD(q1 + d), kv, s1);
                s2 = V_FMA(V_LOAD(q2 + d), kv, s2);
                s3 = V_FMA(V_LOAD(q3 + d), kv, s3);
            }
            float out[4];
            V_HSUM4(s0, s1, s2, s3, out);
            for (int i = 0; i < 4; i++) s[rows[a + i] * ATT_BLOCK + jj] = out[i];
        }
        for (; a < n_rows; a++) {
            const float *q0 = q + rows[a] * dp;
            vf s0 = V_ZERO();
            for (int64_t d = 0; d < dp; d += VW) s0 = V_FMA(V_LOAD(q0 + d), V_LOAD(kr + d), s0);
            s[rows[a] * ATT_BLOCK + jj] = V_HSUM(s0);
        }
    }
}

/* acc_r[0 .. dvp) += sum_jj p_r[jj] v[jj] for the rows listed (dvp a multiple of 2·VW). */
static void SFX(att_mix)(const float *p, const float *v, float *acc, const int32_t *rows,
                         int64_t n_rows, int64_t nk, int64_t dvp) {
    int64_t a = 0;
    for (; a + 4 <= n_rows; a += 4) {
        const float *p0 = p + rows[a] * ATT_BLOCK, *p1 = p + rows[a + 1] * ATT_BLOCK;
        const float *p2 = p + rows[a + 2] * ATT_BLOCK, *p3 = p + rows[a + 3] * ATT_BLOCK;
        float *a0 = acc + rows[a] * dvp, *a1 = acc + rows[a + 1] * dvp;
        float *a2 = acc + rows[a + 2] * dvp, *a3 = acc + rows[a + 3] * dvp;
        for (int64_t d = 0; d < dvp; d += 2 * VW) {
            vf x0 = V_LOAD(a0 + d), y0 = V_LOAD(a0 + d + VW);
            vf x1 = V_LOAD(a1 + d), y1 = V_LOAD(a1 + d + VW);
            vf x2 = V_LOAD(a2 + d), y2 = V_LOAD(a2 + d + VW);
            vf x3 = V_LOAD(a3 + d), y3 = V_LOAD(a3 + d + VW);
            for (int64_t jj = 0; jj < nk; jj++) {
                const vf vx = V_LOAD(v + jj * dvp + d), vy = V_LOAD(v + jj * dvp + d + VW);
                vf w = V_SET1(p0[jj]);
                x0 = V_FMA(w, vx, x0);
                y0 = V_FMA(w, vy, y0);
                w = V_SET1(p1[jj]);
                x1 = V_FMA(w, vx, x1);
                y1 = V_FMA(w, vy, y1);
                w = V_SET1(p2[jj]);
                x2 = V_FMA(w, vx, x2);
                y2 = V_FMA(w, vy, y2);
                w = V_SET1(p3[jj]);
                x3 = V_FMA(w, vx, x3);
                y3 = V_FMA(w, vy, y3);
            }
            V_STORE(a0 + d, x0);
            V_STORE(a0 + d + VW, y0);
            V_STORE(a1 + d, x1);
            V_STORE(a1 + d + VW, y1);
            V_STORE(a2 + d, x2);
            V_STORE(a2 + d + VW, y2);
            V_STORE(a3 + d, x3);
            V_STORE(a3 + d + VW, y3);
        }
    }
    for (; a < n_rows; a++) {
        const float *p0 = p + rows[a] * ATT_BLOCK;
        float *a0 = acc + rows[a] * dvp;
        for (int64_t d = 0; d < dvp; d += 2 * VW) {
            vf x0 = V_LOAD(a0 + d), y0 = V_LOAD(a0 + d + VW);
            for (int64_t jj = 0; jj < nk; jj++) {
                const vf w = V_SET1(p0[jj]);
                x0 = V_FMA(w, V_LOAD(v + jj * dvp + d), x0);
                y0 = V_FMA(w, V_LOAD(v + jj * dvp + d + VW), y0);
            }
            V_STORE(a0 + d, x0);
            V_STORE(a0 + d + VW, y0);
        }
    }
}

/* The same for a value cache stored transposed ([L, Dv, Hkv]: each d a run over the cells):
 * acc_r[d] += p_r . vt_d, one dot product per (row, d) over the block's cells, each run of vt
 * decoded once into tmp (zero-padded to whole vectors; the rows of p are zero there too).
 * Used for up to ATT_MIX_T_ROWS rows (a decode step): transposing the block into rows costs a
 * scattered store per value, which took most of a decode step's attention time; with more rows
 * sharing the block (a prompt tile) the transposition and att_mix's broadcasts are cheaper than
 * a horizontal sum per (row, d). */
static void SFX(att_mix_t)(const att_problem *pb, int64_t hk, int64_t jb, int64_t nk,
                           const float *p, float *acc, const int32_t *rows, int64_t n_rows,
                           int64_t dvp, float *tmp) {
    const int64_t nkp = (nk + VW - 1) / VW * VW;
    for (int64_t d = 0; d < pb->dv; d++) {
        const uint8_t *src = pb->v.base + hk * pb->v.nb2 + d * pb->v.nb1 + jb * pb->v.nb0;
        SFX(att_to_f32)(src, pb->v.type, pb->v.nb0, nk, tmp);
        for (int64_t jj = nk; jj < nkp; jj++) tmp[jj] = 0.0f;
        int64_t a = 0;
        for (; a + 4 <= n_rows; a += 4) {
            const float *p0 = p + rows[a] * ATT_BLOCK, *p1 = p + rows[a + 1] * ATT_BLOCK;
            const float *p2 = p + rows[a + 2] * ATT_BLOCK, *p3 = p + rows[a + 3] * ATT_BLOCK;
            vf s0 = V_ZERO(), s1 = V_ZERO(), s2 = V_ZERO(), s3 = V_ZERO();
            for (int64_t jj = 0; jj < nkp; jj += VW) {
                const vf x = V_LOAD(tmp + jj);
                s0 = V_FMA(V_LOAD(p0 + jj), x, s0);
                s1 = V_FMA(V_LOAD(p1 + jj), x, s1);
                s2 = V_FMA(V_LOAD(p2 + jj), x, s2);
                s3 = V_FMA(V_LOAD(p3 + jj), x, s3);
            }
            float out[4];
            V_HSUM4(s0, s1, s2, s3, out);
            for (int i = 0; i < 4; i++) acc[rows[a + i] * dvp + d] += out[i];
        }
        for (; a < n_rows; a++) {
            const float *p0 = p + rows[a] * ATT_BLOCK;
            vf s0 = V_ZERO();
            for (int64_t jj = 0; jj < nkp; jj += VW) s0 = V_FMA(V_LOAD(p0 + jj), V_LOAD(tmp + jj), s0);
            acc[rows[a] * dvp + d] += V_HSUM(s0);
        }
    }
}

static void SFX(att_item)(const att_problem *pb, int64_t item, float *scratch) {
    const int64_t g = pb->heads / pb->kv_heads, dkp = pb->dkp, dvp = pb->dvp;
    const int64_t split = item % pb->n_split, tile = (item / pb->n_split) % pb->n_tiles;
    const int64_t hk = item / pb->n_split / pb->n_tiles;
    const int64_t t0 = tile * pb->tile_tokens;
    const int64_t nt = pb->tokens - t0 < pb->tile_tokens ? pb->tokens - t0 : pb->tile_tokens;
    const int64_t n_rows = nt * g;
    const int64_t j_begin = split * pb->split_len;
    const int64_t j_end = j_begin + pb->split_len < pb->length ? j_begin + pb->split_len
                                                                : pb->length;
    att_scratch sc;
    att_carve(pb, scratch, &sc);

    /* Query rows r = tl·g + i (token t0 + tl, head hk·g + i), scaled once here. */
    for (int64_t tl = 0; tl < nt; tl++)
        for (int64_t i = 0; i < g; i++) {
            float *row = sc.q + (tl * g + i) * dkp;
            const uint8_t *src = pb->q.base + (hk * g + i) * pb->q.nb1 + (t0 + tl) * pb->q.nb2;
            SFX(att_to_f32)(src, ATT_F32, pb->q.nb0, pb->dk, row);
            for (int64_t d = 0; d < pb->dk; d++) row[d] *= pb->scale;
        }
    for (int64_t r = 0; r < n_rows; r++) {
        sc.m[r] = -INFINITY;
        sc.l[r] = 0.0f;
        memset(sc.acc + r * dvp, 0, (size_t)dvp * sizeof(float));
    }

    for (int64_t jb = j_begin; jb < j_end; jb += ATT_BLOCK) {
        const int64_t nk = j_end - jb < ATT_BLOCK ? j_end - jb : ATT_BLOCK;
        /* Tokens that see at least one cell of the block; a causal prompt skips about half. */
        int64_t n_active = 0;
        for (int64_t tl = 0; tl < nt; tl++) {
            int seen = 1;
            if (pb->has_mask) {
                float *mrow = sc.mask + tl * ATT_BLOCK;
                const uint8_t *src = pb->m.base + (t0 + tl) * pb->m.nb1 + jb * pb->m.nb0;
                SFX(att_to_f32)(src, pb->m.type, pb->m.nb0, nk, mrow);
                seen = 0;
                for (int64_t jj = 0; jj < nk; jj++) seen |= mrow[jj] != -INFINITY;
            }
            if (seen)
                for (int64_t i = 0; i < g; i++) sc.rows[n_active++] = (int32_t)(tl * g + i);
        }
        if (n_active == 0) continue;

        for (int64_t jj = 0; jj < nk; jj++) {
            const uint8_t *src = pb->k.base + hk * pb->k.nb1 + (jb + jj) * pb->k.nb2;
            SFX(att_to_f32)(src, pb->k.type, pb->k.nb0, pb->dk, sc.k + jj * dkp);
        }
        if (!pb->permuted_v) /* [Dv, Hkv, L]: rows of values, decoded here (permuted: below) */
            for (int64_t jj = 0; jj < nk; jj++) {
                const uint8_t *src = pb->v.base + hk * pb->v.nb1 + (jb + jj) * pb->v.nb2;
                SFX(att_to_f32)(src, pb->v.type, pb->v.nb0, pb->dv, sc.v + jj * dvp);
            }

        SFX(att_scores)(sc.q, sc.k, sc.s, sc.rows, n_active, nk, dkp);

        /* Online softmax: rows with no visible cell in this block are left as they are. */
        int64_t n_mix = 0;
        for (int64_t a = 0; a < n_active; a++) {
            const int32_t r = sc.rows[a];
            float *s = sc.s + r * ATT_BLOCK;
            if (pb->has_mask) {
                const float *mrow = sc.mask + (r / g) * ATT_BLOCK;
                for (int64_t jj = 0; jj < nk; jj++) s[jj] += mrow[jj];
            }
            const float block_max = SFX(att_max)(s, nk);
            if (block_max == -INFINITY) continue;
            const float m_new = block_max > sc.m[r] ? block_max : sc.m[r];
            const float corr = sc.m[r] == -INFINITY ? 0.0f : expf(sc.m[r] - m_new);
            const float total = SFX(att_exp_sum)(s, nk, m_new);
            sc.l[r] = sc.l[r] * corr + total;
            if (corr != 1.0f) {
                float *acc = sc.acc + r * dvp;
                for (int64_t d = 0; d < dvp; d++) acc[d] *= corr;
            }
            sc.m[r] = m_new;
            sc.rows[n_mix++] = r;
            for (int64_t jj = nk; jj < (nk + VW - 1) / VW * VW; jj++) s[jj] = 0.0f;
        }
        if (pb->permuted_v && n_mix <= ATT_MIX_T_ROWS) {
            SFX(att_mix_t)(pb, hk, jb, nk, sc.s, sc.acc, sc.rows, n_mix, dvp, sc.tmp);
            continue;
        }
        if (pb->permuted_v) /* many rows share the block: transposing it into rows pays */
            for (int64_t d = 0; d < pb->dv; d++) {
                const uint8_t *src = pb->v.base + hk * pb->v.nb2 + d * pb->v.nb1 + jb * pb->v.nb0;
                SFX(att_to_f32)(src, pb->v.type, pb->v.nb0, nk, sc.tmp);
                for (int64_t jj = 0; jj < nk; jj++) sc.v[jj * dvp + d] = sc.tmp[jj];
            }
        SFX(att_mix)(sc.s, sc.v, sc.acc, sc.rows, n_mix, nk, dvp);
    }

    /* One slice: normalise into the output. Several: leave (m, l, acc) for the merge. */
    for (int64_t tl = 0; tl < nt; tl++)
        for (int64_t i = 0; i < g; i++) {
            const int64_t r = tl * g + i;
            const float *acc = sc.acc + r * dvp;
            if (pb->n_split == 1) {
                float *out = (float *)(pb->out + (hk * g + i) * pb->o_nb1 + (t0 + tl) * pb->o_nb2);
                /* A row that sees no cell (a padding token) gets zeros (SEMANTICS §8.7: any). */
                const float inv = sc.l[r] > 0.0f ? 1.0f / sc.l[r] : 0.0f;
                for (int64_t d = 0; d < pb->dv; d++) out[d] = acc[d] * inv;
            } else {
                float *part = att_partial(pb, hk, tile, split, r);
                part[0] = sc.m[r];
                part[1] = sc.l[r];
                memcpy(part + 2, acc, (size_t)pb->dv * sizeof(float));
            }
        }
}

/* The including file's parameters (#undef of one it did not define is a no-op), so that the
 * next instruction set can define its own. */
#undef SFX
#undef VW
#undef vf
#undef V_LOAD
#undef V_STORE
#undef V_SET1
#undef V_ZERO
#undef V_FMA
#undef V_ADD
#undef V_SUB
#undef V_MAX
#undef V_HSUM
#undef V_HMAX
#undef V_EXP
#undef V_HSUM4
#undef V_LOAD_F16
