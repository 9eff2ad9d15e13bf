/* IEEE half to float in portable C, shared by the product (_native.c) and attention
 * (_attention.c) kernels of the extension: exact for normals, subnormals (rescaled by a power
 * of two), infinities and NaNs. The AVX2/AVX-512 builds use F16C instead. */
#ifndef MLPLUG_NATIVE_HALF_H
#define MLPLUG_NATIVE_HALF_H

#include <stdint.h>
#include <string.h>

static inline float half_to_float(uint16_t h) {
    const uint32_t em = (uint32_t)(h & 0x7fff) << 13;
    uint32_t bits;
    float f;
    if (em >= (0x7c00u << 13)) {
        bits = em | 0x7f800000u;
        memcpy(&f, &bits, 4);
    } else {
        memcpy(&f, &em, 4);
        f *= 0x1p112f;
    }
    memcpy(&bits, &f, 4);
    bits |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &bits, 4);
    return f;
}

#endif
