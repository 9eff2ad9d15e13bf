// Fused attention for decode, flash-decoding style: the key/value history (F16, read directly
// from the KV cache through its strides) is cut into splits of `split` positions; one warp per
// (split, head, token) computes the split's running max m, sum l and unnormalised value mix acc
// with an online softmax; attn_combine merges the splits (rescaling by exp(m_s - max m)).
// Query and output are F32 [D, H, T]; key [Dk, Hkv, L] and value [Dv, Hkv, L] (standard layout)
// are F16, the optional mask [L, Tm] is F16. Strides are in elements; dim 0 is packed.
// Lane i holds value components i, i + 32, ... (D <= 32 * MAX_DV_PER_LANE).
// The numpy twin is mlplug_cuda.kernels.attention.flash_decode_twin.
#define MAX_DV_PER_LANE 8
#define NEG_INF __int_as_float(0xff800000)

extern "C" __global__ void attn_partial(const float* q, long long q_h, long long q_t,
                                        const u16* k, long long k_h, long long k_j,
                                        const u16* v, long long v_h, long long v_j,
                                        const u16* mask, long long mask_t, int has_mask,
                                        int Dk, int Dv, int H, int Hkv, int L, int split,
                                        float scale, float* part_m, float* part_l,
                                        float* part_acc) {
    const int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z, lane = threadIdx.x;
    const int nsplit = gridDim.x;
    const int kv = h / (H / Hkv);
    const float* qv = q + t * q_t + h * q_h;
    float m = NEG_INF, l = 0.0f;
    float acc[MAX_DV_PER_LANE];
    for (int i = 0; i < MAX_DV_PER_LANE; ++i) acc[i] = 0.0f;
    const int j1 = min(L, (s + 1) * split);
    for (int j = s * split; j < j1; ++j) {
        const u16* kj = k + kv * k_h + (long long)j * k_j;
        float dot = 0.0f;
        for (int d = lane; d < Dk; d += 32) dot += qv[d] * half_to_float(kj[d]);
        float score = warp_sum(dot) * scale;
        if (has_mask) score += half_to_float(mask[(long long)t * mask_t + j]);
        if (score == NEG_INF) continue;  // contributes exp(-inf) = 0
        const float m_new = fmaxf(m, score);
        const float corr = expf(m - m_new);
        const float p = expf(score - m_new);
        l = l * corr + p;
        const u16* vj = v + kv * v_h + (long long)j * v_j;
        for (int i = 0; i < MAX_DV_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < Dv) acc[i] = acc[i] * corr + p * half_to_float(vj[d]);
        }
        m = m_new;
    }
    const long long at = ((long long)t * H + h) * nsplit + s;
    if (lane == 0) {
        part_m[at] = m;
        part_l[at] = l;
    }
    for (int i = 0; i < MAX_DV_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < Dv) part_acc[at * Dv + d] = acc[i];
    }
}

extern "C" __global__ void attn_combine(const float* part_m, const float* part_l,
                                        const float* part_acc, int nsplit, int Dv, int H,
                                        float* out, long long out_h, long long out_t) {
    const int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x;
    const long long base = ((long long)t * H + h) * nsplit;
    float mx = NEG_INF;
    for (int s = 0; s < nsplit; ++s) mx = fmaxf(mx, part_m[base + s]);
    float total = 0.0f;
    for (int s = 0; s < nsplit; ++s)
        if (part_m[base + s] != NEG_INF) total += part_l[base + s] * expf(part_m[base + s] - mx);
    float* o = out + t * out_t + h * out_h;
    for (int d = lane; d < Dv; d += 32) {
        float mix = 0.0f;
        for (int s = 0; s < nsplit; ++s)
            if (part_m[base + s] != NEG_INF)
                mix += part_acc[(base + s) * Dv + d] * expf(part_m[base + s] - mx);
        o[d] = mix / total;  // every score masked: 0 / 0 = NaN, as softmax over -inf gives
    }
}
