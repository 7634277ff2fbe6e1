/* Fork-join over item ranges with short-lived POSIX threads (see parallel.h). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdbool.h>

#include "parallel.h"

enum {
    MAX_THREADS = 64,
    /* Creating and joining a thread costs some tens of microseconds: give each thread at least
       this much work (elementary operations, ~a few hundred microseconds). */
    MIN_COST_PER_THREAD = 1 << 19
};

typedef struct {
    bp_range_fn fn;
    void *arg;
    size_t begin, end;
} job;

static void *run_job(void *p) {
    job *j = p;
    j->fn(j->arg, j->begin, j->end);
    return NULL;
}

void bp_parallel_for(int threads, size_t n, size_t cost, bp_range_fn fn, void *arg) {
    if (n == 0) return;
    size_t t = threads > 1 ? (size_t)threads : 1;
    if (t > MAX_THREADS) t = MAX_THREADS;
    if (t > n) t = n;
    size_t by_cost = cost / MIN_COST_PER_THREAD;
    if (t > by_cost) t = by_cost;
    if (t <= 1) {
        fn(arg, 0, n);
        return;
    }
    job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    bool started[MAX_THREADS];
    for (size_t i = 0; i < t; i++) {
        jobs[i] = (job){fn, arg, n * i / t, n * (i + 1) / t};
        started[i] = false;
    }
    for (size_t i = 1; i < t; i++) started[i] = pthread_create(&ids[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (size_t i = 1; i < t; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        else run_job(&jobs[i]);
    }
}
