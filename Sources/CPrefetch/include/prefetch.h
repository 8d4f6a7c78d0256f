#ifndef DDPTRAIN_PREFETCH_H
#define DDPTRAIN_PREFETCH_H

/// A hint to bring the cache line holding p into every cache level before it is read
/// (Swift has no prefetch of its own). Any address will do: a prefetch never faults.
/// The streaming passes over activations read several short rows at once (channel planes
/// of 7x7 to 28x28, 4 rows of a channel side by side), which the hardware prefetcher
/// picks up late: a hint some 512 bytes ahead took 10-12% off those passes
/// (docs/PERFORMANCE.md, round eight).
static inline void ddptrain_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

/// Stores 4 floats (p 16-byte aligned) past the caches, without first reading their line in:
/// a copy into a buffer read back only after much else has been (unflattenOutput's whole-batch
/// outputs). Elsewhere, a plain copy.
#if defined(__SSE__)
#include <xmmintrin.h>
static inline void ddptrain_stream4(float *p, const float *src) { _mm_stream_ps(p, _mm_loadu_ps(src)); }
/// Orders the streaming stores before everything after.
static inline void ddptrain_stream_fence(void) { _mm_sfence(); }
#else
static inline void ddptrain_stream4(float *p, const float *src) { for (int i = 0; i < 4; i++) p[i] = src[i]; }
static inline void ddptrain_stream_fence(void) {}
#endif

#endif
