/* Broker logging: level, file:line and a message, to stderr. */
#ifndef BB_BROKER_LOG_H
#define BB_BROKER_LOG_H

#include <stdio.h>
#include <stdlib.h>

enum { BB_LOG_ERROR = 0, BB_LOG_WARN = 1, BB_LOG_INFO = 2, BB_LOG_DEBUG = 3 };
extern int bb__log_level;

void bb__log(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define bb_log(level, ...)                                                      \
    do {                                                                        \
        if ((level) <= bb__log_level) bb__log((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define bb_error(...) bb_log(BB_LOG_ERROR, __VA_ARGS__)
#define bb_warn(...) bb_log(BB_LOG_WARN, __VA_ARGS__)
#define bb_info(...) bb_log(BB_LOG_INFO, __VA_ARGS__)
#define bb_debug(...) bb_log(BB_LOG_DEBUG, __VA_ARGS__)

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
