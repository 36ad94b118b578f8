#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Atomic int bb__log_level = BB_LOG_INFO;

void bb__log(int level, const char *file, int line, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    /* ISO 8601 in UTC: sortable, and unambiguous across days and time zones. */
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ batchbroker[%d] %s %s:%d: %s\n",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, (int)getpid(), names[level < 0 ? 0 : level > 3 ? 3 : level],
            base ? base + 1 : file, line, msg);
}

/* ---- Rate limiting (log.h) ---- */

static _Atomic(struct bb__log_limit *) limit_sites;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Open a new window if the current one has ended; whoever wins the race
 * reports what the old one held back. */
static void limit_roll(struct bb__log_limit *l, uint64_t now)
{
    uint64_t start = atomic_load_explicit(&l->window_ns, memory_order_relaxed);
    if (now - start < BB__LOG_WINDOW_NS ||
        !atomic_compare_exchange_strong_explicit(&l->window_ns, &start, now,
                                                 memory_order_relaxed, memory_order_relaxed))
        return;
    uint32_t held = atomic_exchange_explicit(&l->suppressed, 0, memory_order_relaxed);
    atomic_store_explicit(&l->lines, 0, memory_order_relaxed);
    if (held && l->level <= atomic_load_explicit(&bb__log_level, memory_order_relaxed))
        bb__log(l->level, l->file, l->line,
                "(rate limit) %u more lines from here were not logged in the last %.1f s", held,
                (double)(now - start) / 1e9);
}

bool bb__log_limit_take(struct bb__log_limit *l, int level, const char *file, int line)
{
    if (!atomic_exchange_explicit(&l->registered, 1, memory_order_acq_rel)) {
        l->file = file;
        l->line = line;
        l->level = level;
        atomic_store_explicit(&l->window_ns, mono_ns(), memory_order_relaxed);
        struct bb__log_limit *head = atomic_load_explicit(&limit_sites, memory_order_relaxed);
        do
            l->next = head;
        while (!atomic_compare_exchange_weak_explicit(&limit_sites, &head, l,
                                                      memory_order_release,
                                                      memory_order_relaxed));
    }
    limit_roll(l, mono_ns());
    if (atomic_fetch_add_explicit(&l->lines, 1, memory_order_relaxed) < BB__LOG_BURST)
        return true;
    atomic_fetch_add_explicit(&l->suppressed, 1, memory_order_relaxed);
    return false;
}

void bb__log_limit_flush(uint64_t now_ns)
{
    /* Acquire pairs with the release that published each site. */
    for (struct bb__log_limit *l = atomic_load_explicit(&limit_sites, memory_order_acquire); l;
         l = l->next)
        if (atomic_load_explicit(&l->suppressed, memory_order_relaxed))
            limit_roll(l, now_ns);
}
