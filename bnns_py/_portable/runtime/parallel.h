/* bnns-py portable backend: a persistent worker pool for the convolution loops.

   Worker threads start on first use and then wait for work, spinning briefly before they sleep,
   so back-to-back layer calls do not pay a thread start or a futex wake-up each. One caller uses
   the pool at a time; a concurrent (or nested) caller runs its work alone on its own thread. A
   forked child starts with an empty pool. */
#ifndef BNNS_PORTABLE_PARALLEL_H
#define BNNS_PORTABLE_PARALLEL_H

#include <stddef.h>

/* The most threads a call can use (the calling thread included). */
#define BP_MAX_WORKERS 64

/* Work done by one of `workers` threads; the caller is worker 0. */
typedef void (*bp_worker_fn)(void *arg, int worker, int workers);

/* Run fn on up to `workers` threads and return when every one has finished. fn must split its
   work by (worker, workers) alone: it may be called as (0, 1) with all the work. */
void bp_parallel_run(int workers, bp_worker_fn fn, void *arg);

/* bp_parallel_run for a job of `cost` elementary operations, run on the calling thread alone
   instead when that has lately been faster for jobs of this fn and cost. On a virtual machine two
   threads of a small job can take longer than one (the host may put both virtual CPUs on one
   physical core, or share them with other guests, for seconds at a time), so the pool times such
   jobs both ways now and then. */
void bp_parallel_run_measured(int workers, size_t cost, bp_worker_fn fn, void *arg);

/* Wait until *counter, which other running threads raise, reaches target: spinning briefly, then
   yielding the core (a thread the system has descheduled then gets to run). */
void bp_wait_until_at_least(_Atomic int *counter, int target);

/* Items of shared work done so far, by any of the threads of one bp_parallel_run call: a thread
   that needs the first `count` of them waits for those only, not for every thread to arrive (a
   thread that starts late, or the system deschedules, holds up no one but those that need its
   items). Every item must be claimed by a thread that is running before anyone waits for it: a
   share may never start (its worker's job taken over by the caller after its own). Zero-initialize. */
typedef struct {
    _Atomic int done;
} bp_progress;

void bp_progress_add(bp_progress *p, int items);
void bp_progress_wait(bp_progress *p, int count);

/* Work on items [begin, end). */
typedef void (*bp_range_fn)(void *arg, size_t begin, size_t end);

/* Split items [0, n) into contiguous ranges, one per worker. `cost` is the total work in
   elementary operations: small jobs run on the calling thread alone. */
void bp_parallel_for(int threads, size_t n, size_t cost, bp_range_fn fn, void *arg);

/* How many workers a job of `cost` elementary operations deserves (1 when it is too small to pay
   for waking another thread), at most `threads`. */
int bp_workers_for(int threads, size_t cost);

/* Items [*begin, *end) of n for one worker. */
void bp_split(size_t n, int worker, int workers, size_t *begin, size_t *end);

#endif
