/* One thread pool for every native kernel of mlplug_cpu._native (see _native_pool.c).
 *
 * mlplug_pool_run(nth, fn, arg) calls fn(arg, 0, nth) on the calling thread and fn(arg, i, nth)
 * on up to nth - 1 workers, and returns when every call has returned. A worker that has not
 * started by the time the caller's own call returns is left out of the run, so fn MUST take
 * all its work from a shared counter (mlplug_pool_next) and never rely on i to cover a share:
 * a worker that a busy machine has not scheduled then never holds the caller back. Idle workers sleep on a condition variable after
 * a short spin; they never spin while BLAS or Python runs. Not reentrant: fn must not call
 * mlplug_pool_run; concurrent callers are serialised by a mutex.
 */
#ifndef MLPLUG_NATIVE_POOL_H
#define MLPLUG_NATIVE_POOL_H

#include <stdint.h>

#define MLPLUG_POOL_MAX 256

typedef void (*mlplug_task)(void *arg, int ith, int nth);

/* Run fn on nth threads (clamped to 1 .. MLPLUG_POOL_MAX; 1 runs inline). */
void mlplug_pool_run(int nth, mlplug_task fn, void *arg);

/* Take the next chunk index from *counter (atomically; starts at 0). */
static inline int64_t mlplug_pool_next(int64_t *counter) {
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/* Number of worker threads started so far (not counting callers). */
int mlplug_pool_workers(void);

#endif
