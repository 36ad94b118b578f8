/* Broker logging: level, file:line and a message, to stderr. */
#ifndef BB_BROKER_LOG_H
#define BB_BROKER_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { BB_LOG_ERROR = 0, BB_LOG_WARN = 1, BB_LOG_INFO = 2, BB_LOG_DEBUG = 3 };
extern _Atomic int bb__log_level; /* reload writes it while every thread logs */

void bb__log(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define bb_log(level, ...)                                                      \
    do {                                                                        \
        if ((level) <= atomic_load_explicit(&bb__log_level, memory_order_relaxed)) bb__log((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define bb_error(...) bb_log(BB_LOG_ERROR, __VA_ARGS__)
#define bb_warn(...) bb_log(BB_LOG_WARN, __VA_ARGS__)
#define bb_info(...) bb_log(BB_LOG_INFO, __VA_ARGS__)
#define bb_debug(...) bb_log(BB_LOG_DEBUG, __VA_ARGS__)

/* Rate-limited logging for what a peer can trigger at will (refused
 * connections, clients coming and going, failing batches): per call site at
 * most BB__LOG_BURST lines per BB__LOG_WINDOW_NS; what is held back is
 * counted and reported in one line from the same site when its window ends
 * (bb__log_limit_flush, from the heartbeat, or the site's next line). Safe
 * from any thread; never on the request path. */
#define BB__LOG_BURST 10u
#define BB__LOG_WINDOW_NS 5000000000ull

struct bb__log_limit {
    const char *file;
    int line, level;
    _Atomic uint64_t window_ns;     /* start of the current window (CLOCK_MONOTONIC) */
    _Atomic uint32_t lines;         /* taken in this window */
    _Atomic uint32_t suppressed;    /* held back in this window */
    _Atomic int registered;
    struct bb__log_limit *next;     /* every site that ever logged, for the flush */
};

/* May the site log one more line now? Counts it held back if not. */
bool bb__log_limit_take(struct bb__log_limit *l, int level, const char *file, int line);
/* Report what each site held back in a window that has ended by now_ns. */
void bb__log_limit_flush(uint64_t now_ns);

/* The same with a limit of the caller's (lim: a struct bb__log_limit *),
 * for a site whose level varies: one limit a level. */
#define bb_log_limited_by(lim, level, ...)                                          \
    do {                                                                              \
        if ((level) <= atomic_load_explicit(&bb__log_level, memory_order_relaxed) && \
            bb__log_limit_take((lim), (level), __FILE__, __LINE__))                   \
            bb__log((level), __FILE__, __LINE__, __VA_ARGS__);                        \
    } while (0)
#define bb_log_limited(level, ...)                                                   \
    do {                                                                              \
        static struct bb__log_limit bb__lim_;                                         \
        bb_log_limited_by(&bb__lim_, (level), __VA_ARGS__);                           \
    } while (0)
#define bb_warn_limited(...) bb_log_limited(BB_LOG_WARN, __VA_ARGS__)
#define bb_info_limited(...) bb_log_limited(BB_LOG_INFO, __VA_ARGS__)
#define bb_debug_limited(...) bb_log_limited(BB_LOG_DEBUG, __VA_ARGS__)

/* An assertion that names the invariant it guards. */
#define bb_assert(cond, invariant)                                              \
    do {                                                                        \
        if (!(cond)) {                                                          \
            bb__log(BB_LOG_ERROR, __FILE__, __LINE__, "assertion failed: %s (%s)", \
                    #cond, invariant);                                          \
            abort();                                                            \
        }                                                                       \
    } while (0)

#endif
