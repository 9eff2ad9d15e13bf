// The integer codes and sub-block scales of each quantised type, as device functions: element
// e of a block has value d * code(e) - m for its sub-block's (d, m) (see scale()). They mirror
// mlplug_cuda.kernels.quant.CODES (the numpy twin), and tests/test_codes_host.py compiles this
// file for the host (g++) to check them against it value by value. Needs f16_at().

struct Q4_0 {
    enum { B = 32, S = 18, SUB = 32 };
    static __device__ int code(const u8* b, int e) {
        return ((b[2 + (e & 15)] >> ((e >> 4) * 4)) & 15) - 8;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b);
        m = 0.0f;
    }
};

struct Q4_1 {
    enum { B = 32, S = 20, SUB = 32 };
    static __device__ int code(const u8* b, int e) { return (b[4 + (e & 15)] >> ((e >> 4) * 4)) & 15; }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b);
        m = -f16_at(b + 2);
    }
};

struct Q5_0 {
    enum { B = 32, S = 22, SUB = 32 };
    static __device__ int code(const u8* b, int e) {
        const int lo = (b[6 + (e & 15)] >> ((e >> 4) * 4)) & 15;
        const int hi = (b[2 + (e >> 3)] >> (e & 7)) & 1;
        return (lo | (hi << 4)) - 16;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b);
        m = 0.0f;
    }
};

struct Q5_1 {
    enum { B = 32, S = 24, SUB = 32 };
    static __device__ int code(const u8* b, int e) {
        const int lo = (b[8 + (e & 15)] >> ((e >> 4) * 4)) & 15;
        const int hi = (b[4 + (e >> 3)] >> (e & 7)) & 1;
        return lo | (hi << 4);
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b);
        m = -f16_at(b + 2);
    }
};

struct Q8_0 {
    enum { B = 32, S = 34, SUB = 32 };
    static __device__ int code(const u8* b, int e) { return (int)(i8)b[2 + e]; }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b);
        m = 0.0f;
    }
};

struct Q2_K {
    enum { B = 256, S = 84, SUB = 16 };
    static __device__ int code(const u8* b, int e) {
        const int r = e & 127;
        return (b[16 + (e >> 7) * 32 + (r & 31)] >> ((r >> 5) * 2)) & 3;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b + 80) * (float)(b[s] & 15);
        m = f16_at(b + 82) * (float)(b[s] >> 4);
    }
};

struct Q3_K {
    enum { B = 256, S = 110, SUB = 16 };
    static __device__ int code(const u8* b, int e) {
        const int r = e & 127;
        const int lo = (b[32 + (e >> 7) * 32 + (r & 31)] >> ((r >> 5) * 2)) & 3;
        const int hi = (b[e & 31] >> (e >> 5)) & 1;
        return (lo | (hi << 2)) - 4;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        const int lo = (b[96 + (s & 7)] >> (4 * (s >> 3))) & 15;
        const int hi = (b[104 + (s & 3)] >> (2 * (s >> 2))) & 3;
        d = f16_at(b + 108) * (float)((lo | (hi << 4)) - 32);
        m = 0.0f;
    }
};

// The 6-bit scales and mins of Q4_K and Q5_K (12 bytes at b + 4), sub-block s of 8.
__device__ __forceinline__ void k_scale_min(const u8* b, int s, float& d, float& m) {
    const u8* p = b + 4;
    int sc, mn;
    if (s < 4) {
        sc = p[s] & 63;
        mn = p[s + 4] & 63;
    } else {
        sc = (p[s + 4] & 15) | ((p[s - 4] >> 6) << 4);
        mn = (p[s + 4] >> 4) | ((p[s] >> 6) << 4);
    }
    d = f16_at(b) * (float)sc;
    m = f16_at(b + 2) * (float)mn;
}

struct Q4_K {
    enum { B = 256, S = 144, SUB = 32 };
    static __device__ int code(const u8* b, int e) {
        return (b[16 + (e >> 6) * 32 + (e & 31)] >> (4 * ((e >> 5) & 1))) & 15;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) { k_scale_min(b, s, d, m); }
};

struct Q5_K {
    enum { B = 256, S = 176, SUB = 32 };
    static __device__ int code(const u8* b, int e) {
        const int lo = (b[48 + (e >> 6) * 32 + (e & 31)] >> (4 * ((e >> 5) & 1))) & 15;
        const int hi = (b[16 + (e & 31)] >> (e >> 5)) & 1;
        return lo | (hi << 4);
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) { k_scale_min(b, s, d, m); }
};

struct Q6_K {
    enum { B = 256, S = 210, SUB = 16 };
    static __device__ int code(const u8* b, int e) {
        const int r = e & 127;
        const int lo = (b[(e >> 7) * 64 + (r & 63)] >> (4 * (r >> 6))) & 15;
        const int hi = (b[128 + (e >> 7) * 32 + (r & 31)] >> (2 * (r >> 5))) & 3;
        return (lo | (hi << 4)) - 32;
    }
    static __device__ void scale(const u8* b, int s, float& d, float& m) {
        d = f16_at(b + 208) * (float)(i8)b[192 + s];
        m = 0.0f;
    }
};
