/* bnns-py portable backend: a fork-join helper for the non-GEMM loops (im2col, col2im, depthwise,
   bias + activation). Worker threads are created for the call and joined before it returns: no
   pool, no global state, nothing to go stale across fork(). */
#ifndef BNNS_PORTABLE_PARALLEL_H
#define BNNS_PORTABLE_PARALLEL_H

#include <stddef.h>

/* Work on items [begin, end). */
typedef void (*bp_range_fn)(void *arg, size_t begin, size_t end);

/* Split items [0, n) into at most `threads` contiguous ranges and run fn on each, the calling
   thread taking the first. `cost` is the total work in roughly elementary operations: ranges are
   only handed to extra threads when each gets enough work to pay for creating a thread. If a
   thread cannot be created its range runs on the calling thread. */
void bp_parallel_for(int threads, size_t n, size_t cost, bp_range_fn fn, void *arg);

#endif
