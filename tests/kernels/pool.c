/* Tester of the worker pool (runtime/parallel.c): many runs of 2 to 8 threads (more threads than
   CPUs, so that workers are often descheduled) of a job split by worker index, each item of which
   must be done exactly once whoever runs a share, and of a job whose shares wait for items any of
   them makes; then runs posted to sleeping workers with nothing for
   the caller to do, whose shares the caller often takes over (bnns_portable_pool_taken_over counts
   them: printed, not required, as it depends on how quickly a worker wakes); then a small job run
   through bp_parallel_run_measured, which every 256 calls times it alone and spread a few times
   each (so some of any 256 calls in a row run alone, some spread), and a large one, always spread.

   Exit status: 0 all passed, 1 a failure (printed). Build: meson -Dkernel_tests=true. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h" /* bnns.h, bnns_portable.h */
#include "parallel.h"

enum { ITEMS = 4099, RUNS = 3000, MAX_THREADS = 8, SLEEPY_RUNS = 50, PROGRESS_ITEMS = 37 };
/* parallel.c's PROBE_PERIOD and PROBES: calls in a row, and the probes of each way among them */
enum { MEASURED_CALLS = 256, MEASURED_PROBES = 4 };

typedef struct {
    unsigned char done[ITEMS];
} split_job;

static void split_share(void *arg, int worker, int workers) {
    split_job *j = arg;
    size_t begin, end;
    bp_split(ITEMS, worker, workers, &begin, &end);
    for (size_t i = begin; i < end; i++) j->done[i]++;
}

/* Items claimed by whichever share comes first, each counted made once written; every share then
   waits for all of them and sums what was written: a share taken over (or started late) claims
   none and still sees them all. */
typedef struct {
    _Atomic int claimed;
    bp_progress made;
    int value[PROGRESS_ITEMS], seen[MAX_THREADS];
} progress_job;

static void progress_share(void *arg, int worker, int workers) {
    (void)workers;
    progress_job *j = arg;
    for (int i; (i = __atomic_fetch_add(&j->claimed, 1, __ATOMIC_RELAXED)) < PROGRESS_ITEMS;) {
        j->value[i] = i + 1;
        bp_progress_add(&j->made, 1);
    }
    bp_progress_wait(&j->made, PROGRESS_ITEMS);
    int sum = 0;
    for (int i = 0; i < PROGRESS_ITEMS; i++) sum += j->value[i];
    j->seen[worker] = sum;
}

/* The caller's share is empty: a sleeping worker is still waking up when the caller looks. */
static void helpers_only(void *arg, int worker, int workers) {
    (void)workers;
    if (worker > 0) __atomic_fetch_add((int *)arg, 1, __ATOMIC_RELAXED);
}

static int check_split(int run, int threads) {
    static split_job j;
    memset(&j, 0, sizeof j);
    bp_parallel_run(threads, split_share, &j);
    for (size_t i = 0; i < ITEMS; i++)
        if (j.done[i] != 1) {
            printf("split run %d, %d threads: item %zu done %d times\n", run, threads, i, j.done[i]);
            return 1;
        }
    return 0;
}

static int check_progress(int run, int threads) {
    progress_job j;
    memset(&j, 0, sizeof j);
    bp_parallel_run(threads, progress_share, &j);
    int workers = 0;
    while (workers < MAX_THREADS && j.seen[workers] != 0) workers++;
    for (int w = 0; w < workers; w++)
        if (j.seen[w] != PROGRESS_ITEMS * (PROGRESS_ITEMS + 1) / 2) {
            printf("progress run %d, %d threads: share %d saw %d\n", run, threads, w, j.seen[w]);
            return 1;
        }
    return workers == 0;
}

/* `calls` runs of split_share through bp_parallel_run_measured at `cost`, each item done exactly
   once; the pool's parallel runs among them must be within [min_spread, max_spread]. */
static int check_measured(size_t cost, int calls, int min_spread, int max_spread) {
    static split_job j;
    long runs = bnns_portable_pool_parallel_runs();
    for (int call = 0; call < calls; call++) {
        memset(&j, 0, sizeof j);
        bp_parallel_run_measured(2, cost, split_share, &j);
        for (size_t i = 0; i < ITEMS; i++)
            if (j.done[i] != 1) {
                printf("measured run %d, cost %zu: item %zu done %d times\n", call, cost, i, j.done[i]);
                return 1;
            }
    }
    runs = bnns_portable_pool_parallel_runs() - runs;
    if (runs < min_spread || runs > max_spread) {
        printf("measured runs, cost %zu: %ld of %d spread, expected %d to %d\n", cost, runs, calls, min_spread,
               max_spread);
        return 1;
    }
    return 0;
}

int main(void) {
    int failures = 0;
    for (int run = 0; run < RUNS && failures == 0; run++) {
        int threads = 2 + run % (MAX_THREADS - 1);
        failures += check_split(run, threads) + check_progress(run, threads);
    }
    long taken = bnns_portable_pool_taken_over();
    int shares = 0;
    for (int run = 0; run < SLEEPY_RUNS; run++) {
        struct timespec pause = {0, 5 * 1000 * 1000}; /* 5 ms: the workers stop spinning and sleep */
        nanosleep(&pause, NULL);
        bp_parallel_run(2, helpers_only, &shares);
    }
    taken = bnns_portable_pool_taken_over() - taken;
    if (shares != SLEEPY_RUNS) {
        printf("runs with an empty caller share: %d of %d worker shares ran\n", shares, SLEEPY_RUNS);
        failures++;
    }
    failures += check_measured(1 << 20, MEASURED_CALLS, MEASURED_PROBES, MEASURED_CALLS - MEASURED_PROBES);
    failures += check_measured((size_t)1 << 30, MEASURED_CALLS, MEASURED_CALLS, MEASURED_CALLS);
    printf("pool: %d runs split by worker and %d waiting for shared items (2-%d threads), "
           "%ld of %d shares of sleeping workers taken over, %ld in all; %d measured runs each of a small and a "
           "large job; %d failures\n",
           RUNS, RUNS, MAX_THREADS, taken, SLEEPY_RUNS, bnns_portable_pool_taken_over(), MEASURED_CALLS, failures);
    return failures ? 1 : 0;
}
