#ifndef DDPTRAIN_PREFETCH_H
#define DDPTRAIN_PREFETCH_H

/// A hint to bring the cache line holding p into every cache level before it is read
/// (Swift has no prefetch of its own). Any address will do: a prefetch never faults.
/// The streaming passes over activations read several short rows at once (channel planes
/// of 7x7 to 28x28, 4 rows of a channel side by side), which the hardware prefetcher
/// picks up late: a hint some 512 bytes ahead took 10-12% off those passes
/// (docs/PERFORMANCE.md, round eight).
static inline void ddptrain_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

#endif
