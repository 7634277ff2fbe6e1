/* The persistent worker pool (see parallel.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "parallel.h"

enum {
    /* Waking a sleeping thread costs tens of microseconds on a virtual machine, a spinning one
       well under one: a worker keeps polling for this many rounds (100 - 250 us) before it sleeps. */
    SPIN_ROUNDS = 1 << 14,
    /* A polling worker yields its core every this many rounds (a few microseconds): when the
       system runs it on the caller's core (other processes hold the rest), the caller, not the
       worker's polling, gets that core. Without them, a worker that has run a whole job keeps
       the caller off its core for the rest of its polling, then sleeps, and the next run's
       wake-up preempts the caller again (Intel Xeon VM, both cores busy with other processes:
       ResNet-50's stem at batch 1 on 2 threads 1.11 - 1.14x faster with the yields). */
    YIELD_ROUNDS = 1 << 8,
    /* Elementary operations worth handing to one more thread (~10 us of work). */
    MIN_COST_PER_WORKER = 1 << 16,
    /* bp_parallel_run_measured: jobs up to this cost (~0.3 ms of work on one thread) are timed
       both ways in the first 2 * PROBES of every PROBE_PERIOD calls (3 % of them) and run the
       faster way in the others; a job's slot is one of TIMED_JOB_PROBES from its hash */
    MEASURED_COST_MAX = 1 << 25,
    PROBES = 4,
    /* the caller alone is chosen only when faster by 1 / ALONE_MARGIN of the spread time: spread
       probes that another process slows would otherwise choose it wrongly, at up to 1.6x the
       time (a 96 -> 576 1x1 layer at 14x14: 210 us alone, 133 us spread), where spreading
       wrongly costs at most the margin */
    ALONE_MARGIN = 8,
    PROBE_PERIOD = 256,
    TIMED_JOB_SLOTS = 128,
    TIMED_JOB_PROBES = 4
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void bp_wait_until_at_least(_Atomic int *counter, int target) {
    for (int spins = 0; atomic_load_explicit(counter, memory_order_acquire) < target; spins++) {
        if (spins < SPIN_ROUNDS) cpu_relax();
        else sched_yield(); /* a worker the system has descheduled: let it run */
    }
}

void bp_progress_add(bp_progress *p, int items) { atomic_fetch_add_explicit(&p->done, items, memory_order_release); }

void bp_progress_wait(bp_progress *p, int count) { bp_wait_until_at_least(&p->done, count); }

/* One mailbox per worker thread: the caller fills in the job, opens it (`open`: the run's
   number), then bumps `posted` to wake the worker. A job is run by whoever closes it first: its
   worker, or the caller once done with its own share (a worker still asleep, or descheduled by
   another process, would otherwise keep the caller waiting for a share it could run itself). So a
   share must never wait for another share to start: it may wait only for shared items that a
   running thread has claimed (bp_progress). */
typedef struct {
    _Atomic unsigned long posted;
    _Atomic unsigned long open; /* the run whose job is waiting here, 0 when taken */
    pthread_cond_t wake;        /* the worker sleeps on it (with sleep_lock) */
    bp_worker_fn fn;
    void *arg;
    int index, count;
} mailbox;

/* The pool's counters (bnns_portable_pool_*). */
static _Atomic long runs_started, threads_used, runs_alone_busy, taken_over, polling_yields;

long bnns_portable_pool_parallel_runs(void) { return atomic_load(&runs_started); }
long bnns_portable_pool_threads_used(void) { return atomic_load(&threads_used); }
long bnns_portable_pool_busy_runs(void) { return atomic_load(&runs_alone_busy); }
long bnns_portable_pool_taken_over(void) { return atomic_load(&taken_over); }
long bnns_portable_pool_polling_yields(void) { return atomic_load(&polling_yields); }

static mailbox boxes[BP_MAX_WORKERS - 1];
static int started; /* worker threads running (guarded by start_lock) */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_flag in_use = ATOMIC_FLAG_INIT;
static _Atomic int finished; /* jobs of the current run finished */
static bool atfork_registered;

/* Run the job waiting in m, if it is still open; true if this thread ran it. */
static bool run_if_open(mailbox *m) {
    unsigned long run = atomic_load_explicit(&m->open, memory_order_acquire);
    if (run == 0 || !atomic_compare_exchange_strong_explicit(&m->open, &run, 0, memory_order_acquire,
                                                             memory_order_relaxed))
        return false;
    m->fn(m->arg, m->index, m->count);
    atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    return true;
}

static void *worker_main(void *p) {
    mailbox *m = p;
    unsigned long taken = 0;
    for (;;) {
        unsigned long posted;
        int spins = 0;
        while ((posted = atomic_load_explicit(&m->posted, memory_order_acquire)) == taken) {
            if (++spins < SPIN_ROUNDS) {
                if (spins % YIELD_ROUNDS == 0) {
                    atomic_fetch_add_explicit(&polling_yields, 1, memory_order_relaxed);
                    sched_yield();
                } else {
                    cpu_relax();
                }
                continue;
            }
            pthread_mutex_lock(&sleep_lock);
            while (atomic_load_explicit(&m->posted, memory_order_acquire) == taken)
                pthread_cond_wait(&m->wake, &sleep_lock);
            pthread_mutex_unlock(&sleep_lock);
        }
        taken = posted;
        run_if_open(m);
    }
    return NULL;
}

/* The child of a fork has only the forking thread: forget the parent's workers. */
static void reset_in_child(void) {
    started = 0;
    for (int i = 0; i < BP_MAX_WORKERS - 1; i++) {
        atomic_store(&boxes[i].posted, 0);
        atomic_store(&boxes[i].open, 0);
    }
    atomic_flag_clear(&in_use);
    pthread_mutex_init(&start_lock, NULL);
    pthread_mutex_init(&sleep_lock, NULL); /* the mailboxes' conditions: when workers start again */
}

/* The workers run this library's code for as long as the process lives (polling or asleep), so
   the library stays loaded: unloaded under a polling worker (Python's exit closes it), the
   worker would crash the process. */
static void keep_library_loaded(void) {
    Dl_info info;
    if (dladdr((void *)&worker_main, &info) != 0 && info.dli_fname != NULL)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
}

/* Start workers up to `want` (the calling thread excluded); returns how many are running. */
static int ensure_workers(int want) {
    pthread_mutex_lock(&start_lock);
    if (!atfork_registered) atfork_registered = pthread_atfork(NULL, NULL, reset_in_child) == 0;
    if (started == 0 && want > 0) keep_library_loaded();
    while (started < want) {
        pthread_attr_t attr;
        pthread_t id;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_cond_init(&boxes[started].wake, NULL);
        int rc = pthread_create(&id, &attr, worker_main, &boxes[started]);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        started++;
    }
    int have = started;
    pthread_mutex_unlock(&start_lock);
    return have;
}

void bp_parallel_run(int workers, bp_worker_fn fn, void *arg) {
    if (workers > BP_MAX_WORKERS) workers = BP_MAX_WORKERS;
    if (workers <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (atomic_flag_test_and_set_explicit(&in_use, memory_order_acquire)) {
        atomic_fetch_add_explicit(&runs_alone_busy, 1, memory_order_relaxed);
        fn(arg, 0, 1);
        return;
    }
    int helpers = ensure_workers(workers - 1);
    if (helpers > workers - 1) helpers = workers - 1;
    if (helpers == 0) {
        atomic_flag_clear_explicit(&in_use, memory_order_release);
        fn(arg, 0, 1);
        return;
    }
    workers = helpers + 1;
    unsigned long run = (unsigned long)atomic_fetch_add_explicit(&runs_started, 1, memory_order_relaxed) + 1;
    atomic_fetch_add_explicit(&threads_used, workers, memory_order_relaxed);
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    for (int i = 0; i < helpers; i++) {
        boxes[i].fn = fn;
        boxes[i].arg = arg;
        boxes[i].index = i + 1;
        boxes[i].count = workers;
        atomic_store_explicit(&boxes[i].open, run, memory_order_release);
        atomic_fetch_add_explicit(&boxes[i].posted, 1, memory_order_release);
    }
    /* wake this run's workers that sleep (a spinning one has already seen its mailbox; the
       others sleep on) */
    pthread_mutex_lock(&sleep_lock);
    for (int i = 0; i < helpers; i++) pthread_cond_signal(&boxes[i].wake);
    pthread_mutex_unlock(&sleep_lock);
    fn(arg, 0, workers);
    for (int i = 0; i < helpers; i++)
        if (run_if_open(&boxes[i])) atomic_fetch_add_explicit(&taken_over, 1, memory_order_relaxed);
    bp_wait_until_at_least(&finished, helpers);
    atomic_flag_clear_explicit(&in_use, memory_order_release);
}

/* A small job's record for bp_parallel_run_measured: jobs of one (fn, cost) share a slot. */
typedef struct {
    _Atomic uintptr_t key; /* 0: free */
    _Atomic unsigned calls;
    /* this period's probes on the caller alone [0] and spread [1]: their time in all, the slowest */
    _Atomic long total_ns[2], slowest_ns[2];
} job_timing;

static job_timing timings[TIMED_JOB_SLOTS];

static uintptr_t job_key(bp_worker_fn fn, size_t cost) {
    return ((uintptr_t)fn ^ (uintptr_t)cost * 0x9E3779B97F4A7C15u) | 1; /* never 0 (free) */
}

/* The slot of a job: its own, else a free one, else the first of its probe sequence (whose record
   starts over). Slots are claimed without a lock: two jobs that race for one merely mix their
   times for a period. */
static job_timing *timing_of(uintptr_t key) {
    size_t first = (size_t)(key >> 7) % TIMED_JOB_SLOTS;
    for (size_t i = 0; i < TIMED_JOB_PROBES; i++) {
        job_timing *t = &timings[(first + i) % TIMED_JOB_SLOTS];
        uintptr_t have = atomic_load_explicit(&t->key, memory_order_relaxed);
        if (have == key) return t;
        if (have == 0 && atomic_compare_exchange_strong_explicit(&t->key, &have, key, memory_order_relaxed,
                                                                 memory_order_relaxed))
            return t;
    }
    job_timing *t = &timings[first];
    atomic_store_explicit(&t->key, key, memory_order_relaxed);
    atomic_store_explicit(&t->calls, 0, memory_order_relaxed);
    return t;
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* The probes of one way, the slowest left out (a thread waking up, a core taken for a moment). */
static long probed_ns(job_timing *t, int spread) {
    return atomic_load_explicit(&t->total_ns[spread], memory_order_relaxed) -
           atomic_load_explicit(&t->slowest_ns[spread], memory_order_relaxed);
}

void bp_parallel_run_measured(int workers, size_t cost, bp_worker_fn fn, void *arg) {
    if (workers <= 1 || cost > MEASURED_COST_MAX) {
        bp_parallel_run(workers, fn, arg);
        return;
    }
    job_timing *t = timing_of(job_key(fn, cost));
    unsigned call = atomic_fetch_add_explicit(&t->calls, 1, memory_order_relaxed) % PROBE_PERIOD;
    if (call >= 2 * PROBES) {
        bool alone_pays = probed_ns(t, 0) < probed_ns(t, 1) - probed_ns(t, 1) / ALONE_MARGIN;
        bp_parallel_run(alone_pays ? 1 : workers, fn, arg);
        return;
    }
    int spread = call >= PROBES; /* PROBES calls alone, then PROBES spread */
    long start = now_ns();
    bp_parallel_run(spread ? workers : 1, fn, arg);
    long took = now_ns() - start;
    if (call % PROBES == 0) {
        atomic_store_explicit(&t->total_ns[spread], took, memory_order_relaxed);
        atomic_store_explicit(&t->slowest_ns[spread], took, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&t->total_ns[spread], took, memory_order_relaxed);
    if (took > atomic_load_explicit(&t->slowest_ns[spread], memory_order_relaxed))
        atomic_store_explicit(&t->slowest_ns[spread], took, memory_order_relaxed);
}

int bp_workers_for(int threads, size_t cost) {
    size_t by_cost = cost / MIN_COST_PER_WORKER;
    if (by_cost < 1) by_cost = 1;
    int t = threads < 1 ? 1 : threads;
    if (t > BP_MAX_WORKERS) t = BP_MAX_WORKERS;
    return by_cost < (size_t)t ? (int)by_cost : t;
}

void bp_split(size_t n, int worker, int workers, size_t *begin, size_t *end) {
    *begin = n * (size_t)worker / (size_t)workers;
    *end = n * (size_t)(worker + 1) / (size_t)workers;
}

typedef struct {
    size_t n;
    bp_range_fn fn;
    void *arg;
} range_job;

static void run_range(void *p, int worker, int workers) {
    const range_job *j = p;
    size_t b, e;
    bp_split(j->n, worker, workers, &b, &e);
    if (b < e) j->fn(j->arg, b, e);
}

void bp_parallel_for(int threads, size_t n, size_t cost, bp_range_fn fn, void *arg) {
    if (n == 0) return;
    int workers = bp_workers_for(threads, cost);
    if ((size_t)workers > n) workers = (int)n;
    range_job j = {n, fn, arg};
    bp_parallel_run(workers, run_range, &j);
}
