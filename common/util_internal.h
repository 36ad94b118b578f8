/* Small helpers shared by the client library and the broker. */
#ifndef BB_UTIL_INTERNAL_H
#define BB_UTIL_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t bb__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPUs this process may run on. */
static inline int bb__ncpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return 1;
    return CPU_COUNT(&set);
}

static inline void bb__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A spinner's sched_yield, timed (the broker's dispatchers and executors,
 * bb_wait). Where a CPU-bound task shares this CPU (a busy host), Linux's
 * scheduler lets it run up to a whole time slice (EEVDF: 0.75 ms times
 * 1 + log2 of the CPUs, so 1.5 to 3 ms) before the yielder comes back, and
 * a spin that yields then costs far more than sleeping would. A yield is
 * lost when it comes back later than the spin budget plus BB__SPIN_LOST_NS,
 * longer than a co-operative neighbour holds the CPU (another spinner of
 * the broker or a client, a client's submission): the neighbour is
 * CPU-bound, or the broker's own executor running a long batch on this
 * CPU, and a spin there takes the CPU it needs. One now and then happens
 * on any host (an idle 2-vCPU VM: about one a second); two within
 * BB__SPIN_PAIR_NS mark the CPU as contended, and the thread then sleeps at
 * once, without spinning, for BB__SPIN_CALM_NS before it tries again. */
#define BB__SPIN_LOST_NS 500000ull
#define BB__SPIN_PAIR_NS 100000000ull
#define BB__SPIN_CALM_NS 1000000000ull
struct bb__spin_guard {
    uint64_t calm_after; /* no spinning before */
    uint64_t last_lost;  /* the last lost yield */
};

static inline bool bb__spin_calm(const struct bb__spin_guard *g, uint64_t now)
{
    return now >= g->calm_after;
}

/* The rule over one yield that ran from t0 to t1; returns t1. */
static inline uint64_t bb__spin_note(struct bb__spin_guard *g, uint64_t spin_ns, uint64_t t0,
                                     uint64_t t1)
{
    if (t1 - t0 > spin_ns + BB__SPIN_LOST_NS) {
        if (g->last_lost && t1 - g->last_lost < BB__SPIN_PAIR_NS)
            g->calm_after = t1 + BB__SPIN_CALM_NS;
        g->last_lost = t1;
    }
    return t1;
}

/* A yield from t0, a clock reading just taken (a caller that has one saves
 * a read). Returns the time after the yield. */
static inline uint64_t bb__spin_yield(uint64_t spin_ns, struct bb__spin_guard *g, uint64_t t0)
{
    sched_yield();
    return bb__spin_note(g, spin_ns, t0, bb__now_ns());
}

/* Shared (not FUTEX_PRIVATE) futex operations: the word lives in memory that
 * two processes map. Returns 0 or -errno. */
static inline int bb__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp, NULL, 0);
    return rc < 0 ? -errno : 0;
}

static inline void bb__futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

#endif
