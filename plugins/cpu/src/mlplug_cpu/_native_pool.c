/* The thread pool of mlplug_cpu._native (interface and contract in _native_pool.h).
 *
 * Hand-written rather than OpenMP: libgomp's workers spin after each parallel region (about
 * 300,000 iterations unless OMP_WAIT_POLICY=passive is set before the library loads), and on a
 * busy two-core machine that spinning competed with BLAS threads and with other processes
 * (issue #12.1: 5.7-30 tok/s with default threads against 89-137 with one thread). Here a
 * worker spins for at most SPIN_NS, yielding, then sleeps on a condition variable; kernels
 * hand out work in chunks from an atomic counter so a descheduled worker only delays its own
 * chunk. Workers are created lazily, up to the largest nth asked for, and survive fork() as
 * "not started" (the child re-creates them).
 */
#include "_native_pool.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#define SPIN_NS 50000 /* 50 us: a decode step issues products back to back from Python */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER; /* one run at a time */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;

static int n_workers;               /* started, guarded by lock */
/* (run number << 16) | threads of that run: one word, so that a worker never pairs one run's
 * number with another run's thread count. Bumped per run; read atomically outside lock. */
static uint64_t state;
static mlplug_task task_fn;
static void *task_arg;
/* Workers that joined the current run, plus CLOSED once the caller has finished its own share:
 * a worker that wakes after that skips the run (its work is done), so the caller never waits
 * for a thread the scheduler has not run yet. */
#define CLOSED (1u << 30)
static unsigned joined;
static unsigned finished;    /* joined workers that have returned (atomic) */
static int sleepers_done;    /* whether the caller sleeps on `done` */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *p) {
    const int ith = (int)(intptr_t)p;
    uint64_t seen = 0;
    for (;;) {
        /* Spin briefly for the next run, then sleep. */
        uint64_t gen = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
        if (gen >> 16 == seen) {
            const uint64_t start = now_ns();
            int spins = 0;
            while ((gen = __atomic_load_n(&state, __ATOMIC_ACQUIRE)) >> 16 == seen) {
                cpu_relax();
                if (++spins % 64 == 0) {
                    if (now_ns() - start > SPIN_NS) break;
                    sched_yield();
                }
            }
            if (gen >> 16 == seen) {
                pthread_mutex_lock(&lock);
                while ((gen = __atomic_load_n(&state, __ATOMIC_ACQUIRE)) >> 16 == seen)
                    pthread_cond_wait(&wake, &lock);
                pthread_mutex_unlock(&lock);
            }
        }
        seen = gen >> 16;
        const int nth = (int)(gen & 0xffff);
        if (ith >= nth) continue; /* not part of this run */
        unsigned j = __atomic_load_n(&joined, __ATOMIC_ACQUIRE);
        do {
            if (j & CLOSED) break;
        } while (!__atomic_compare_exchange_n(&joined, &j, j + 1, 0, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE));
        if (j & CLOSED) continue; /* the caller finished the work without us */
        task_fn(task_arg, ith, nth);
        __atomic_add_fetch(&finished, 1, __ATOMIC_ACQ_REL);
        pthread_mutex_lock(&lock);
        if (sleepers_done) pthread_cond_signal(&done);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void after_fork_child(void) {
    /* Only the forking thread exists in the child: forget the workers and reset the locks. */
    pthread_mutex_init(&run_lock, NULL);
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_cond_init(&done, NULL);
    n_workers = 0;
    state = 0;
    joined = finished = 0;
    sleepers_done = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void install_atfork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* Start workers 1 .. nth-1 that do not exist yet; return how many threads can take part. */
static int ensure_workers(int nth) {
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&lock);
    while (n_workers < nth - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(n_workers + 1));
        pthread_attr_destroy(&attr);
        if (ok != 0) break; /* run with the threads we have */
        n_workers++;
    }
    const int have = n_workers + 1;
    pthread_mutex_unlock(&lock);
    return have < nth ? have : nth;
}

void mlplug_pool_run(int nth, mlplug_task fn, void *arg) {
    if (nth > MLPLUG_POOL_MAX) nth = MLPLUG_POOL_MAX;
    if (nth <= 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&run_lock);
    nth = ensure_workers(nth);
    if (nth <= 1) {
        pthread_mutex_unlock(&run_lock);
        fn(arg, 0, 1);
        return;
    }
    task_fn = fn;
    task_arg = arg;
    __atomic_store_n(&joined, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&finished, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&lock);
    const uint64_t next = ((__atomic_load_n(&state, __ATOMIC_ACQUIRE) >> 16) + 1) << 16;
    __atomic_store_n(&state, next | (uint64_t)nth, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);

    fn(arg, 0, nth);

    /* Close the run, then wait for the workers that joined it: spin briefly (they are usually
     * finishing their last chunk), then sleep. */
    const unsigned count = __atomic_fetch_or(&joined, CLOSED, __ATOMIC_ACQ_REL) & ~CLOSED;
    const uint64_t start = now_ns();
    int spins = 0;
    while (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) != count) {
        cpu_relax();
        if (++spins % 64 == 0) {
            if (now_ns() - start > SPIN_NS) break;
            sched_yield();
        }
    }
    if (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) != count) {
        pthread_mutex_lock(&lock);
        sleepers_done = 1;
        while (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) != count)
            pthread_cond_wait(&done, &lock);
        sleepers_done = 0;
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_unlock(&run_lock);
}

int mlplug_pool_workers(void) {
    pthread_mutex_lock(&lock);
    const int n = n_workers;
    pthread_mutex_unlock(&lock);
    return n;
}
