/* A client's segment (segment.c): a sealed memfd laid out by
 * common/segment_layout.h, its header written with the version word last. */
#ifndef BB_BROKER_SEGMENT_H
#define BB_BROKER_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "segment_layout.h"

/* Create, size, seal and map a segment of nslots slots and about want_bytes
 * (clamped to what the layout needs). Returns 0 with the mapping in *base,
 * the layout in *lay and the memfd in *memfd, or a negative BB_E* code. */
int bb__segment_create(uint32_t client_id, uint32_t nslots, uint64_t want_bytes, char **base,
                       struct bb__layout *lay, int *memfd);

/* Create the worker page (protocol.h) of worker id on NUMA node (-1: none),
 * mapped writable in *page; *fd is the memfd, sealed so that clients can only
 * map it read-only. Returns 0 or a negative BB_E* code. */
int bb__worker_page_create(uint32_t id, int node, uint32_t flags, struct bb_shm_worker **page,
                           int *fd);

#endif
