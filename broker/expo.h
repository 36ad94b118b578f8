/* The Prometheus text page of the broker's metrics (expo.c). */
#ifndef BB_BROKER_EXPO_H
#define BB_BROKER_EXPO_H

#include <stddef.h>

struct bb__broker;

/* Render the page (text/plain; version=0.0.4), from any thread. Returns a
 * malloc'ed buffer of *len bytes (not NUL-terminated for the caller's use,
 * though it is), or NULL when memory is short. */
char *bb__expo_page(const struct bb__broker *b, size_t *len);

#endif
