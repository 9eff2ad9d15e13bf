// Quantised matrix-vector products for decode, the scheme of ggml-cuda's mmvq:
//   1. quantize_q8_1: the activation columns y (F32, K per column) become 8-bit blocks of 32
//      (scale dy = max|y| / 127, q = roundf(y / dy)) plus the sum of q per 16 elements;
//   2. mmvq_<type>: one warp per weight row; each lane takes 32-element chunks of the row, packs
//      the weight's integer codes four at a time and multiplies them with the activation bytes
//      with dp4a; per 16 elements the integer sum is scaled by the weight's sub-block scale d and
//      the activation's dy, and the sub-block min m (value = d * code - m) is applied through the
//      activation sums. Up to MAX_COLS activation columns share one pass over the weights.
// The per-type code/scale functions mirror mlplug_cuda.kernels.quant.CODES (the numpy twin).
#define MAX_COLS 8

extern "C" __global__ void quantize_q8_1(const float* y, int K, int ncols, i8* qy, float* dy,
                                         int* sy16) {
    const int chunk = blockIdx.x;  // one warp per 32 elements of one column
    const int col = blockIdx.y;
    const int lane = threadIdx.x;
    if (col >= ncols || chunk * 32 >= K) return;
    const long long at = (long long)col * K + chunk * 32 + lane;
    const float x = y[at];
    const float amax = warp_max(fabsf(x));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : (int)roundf(x / d);
    qy[at] = (i8)q;
    float s = (float)q;
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);  // per 16 lanes
    if (lane == 0) dy[(long long)col * (K / 32) + chunk] = d;
    if ((lane & 15) == 0) sy16[(long long)col * (K / 16) + chunk * 2 + (lane >> 4)] = (int)s;
}

// out[col * out_stride + row] = sum_k W[row, k] * y[col, k], W rows of packed blocks.
template <typename T>
__device__ void mmvq(const u8* W, long long row_bytes, int nrows, int K, const i8* qy,
                     const float* dy, const int* sy16, float* out, int ncols, long long out_stride) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= nrows) return;
    float acc[MAX_COLS];
    for (int c = 0; c < MAX_COLS; ++c) acc[c] = 0.0f;
    const u8* wrow = W + (long long)row * row_bytes;
    const int chunks = K / 32;
    for (int chunk = lane; chunk < chunks; chunk += 32) {
        const int e0 = chunk * 32;
        const u8* blk = wrow + (long long)(e0 / T::B) * T::S;
        const int w = e0 % T::B;
        for (int h = 0; h < 2; ++h) {
            float d, m;
            T::scale(blk, (w + 16 * h) / T::SUB, d, m);
            int packed[4];
            for (int g = 0; g < 4; ++g) {
                const int e = w + 16 * h + 4 * g;
                packed[g] = (T::code(blk, e) & 255) | ((T::code(blk, e + 1) & 255) << 8) |
                            ((T::code(blk, e + 2) & 255) << 16) | ((T::code(blk, e + 3) & 255) << 24);
            }
            for (int c = 0; c < ncols && c < MAX_COLS; ++c) {
                const int* yq = (const int*)(qy + (long long)c * K + e0 + 16 * h);
                int isum = 0;
                for (int g = 0; g < 4; ++g) isum = dp4a(packed[g], yq[g], isum);
                const float ys = dy[(long long)c * chunks + chunk];
                acc[c] += ys * (d * (float)isum - m * (float)sy16[(long long)c * (K / 16) + 2 * chunk + h]);
            }
        }
    }
    for (int c = 0; c < ncols && c < MAX_COLS; ++c) {
        const float total = warp_sum(acc[c]);
        if (lane == 0) out[(long long)c * out_stride + row] = total;
    }
}

#define MMVQ_KERNEL(NAME, TYPE)                                                                  \
    extern "C" __global__ void NAME(const u8* W, long long row_bytes, int nrows, int K,          \
                                    const i8* qy, const float* dy, const int* sy16, float* out,  \
                                    int ncols, long long out_stride) {                           \
        mmvq<TYPE>(W, row_bytes, nrows, K, qy, dy, sy16, out, ncols, out_stride);                \
    }

MMVQ_KERNEL(mmvq_q4_0, Q4_0)
MMVQ_KERNEL(mmvq_q4_1, Q4_1)
MMVQ_KERNEL(mmvq_q5_0, Q5_0)
MMVQ_KERNEL(mmvq_q5_1, Q5_1)
MMVQ_KERNEL(mmvq_q8_0, Q8_0)
MMVQ_KERNEL(mmvq_q2_k, Q2_K)
MMVQ_KERNEL(mmvq_q3_k, Q3_K)
MMVQ_KERNEL(mmvq_q4_k, Q4_K)
MMVQ_KERNEL(mmvq_q5_k, Q5_K)
MMVQ_KERNEL(mmvq_q6_k, Q6_K)
