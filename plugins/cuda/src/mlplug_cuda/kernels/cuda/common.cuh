// Shared helpers of the CUDA C kernels (included into each source; no CUDA headers needed, so
// NVRTC compiles them with nothing but its built-ins).


typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// IEEE half (stored as 16 bits) to float.
__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Little-endian F16 at an unaligned byte address (block scales sit at any offset).
__device__ __forceinline__ float f16_at(const u8* p) {
    return half_to_float((u16)(p[0] | (p[1] << 8)));
}

// Four signed 8-bit products summed into c (sm_61+).
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
