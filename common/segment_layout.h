/* The layout of a client segment (protocol.h), computed in one place: the
 * broker lays a new segment out with it, and the client recomputes it from
 * the header's nslots and segment_size and refuses a header that disagrees. */
#ifndef BB_SEGMENT_LAYOUT_H
#define BB_SEGMENT_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "batchbroker/protocol.h"

#define BB__MIN_HEAP_BYTES (1u << 20)

struct bb__layout {
    uint32_t nslots;            /* power of two, <= BB_MAX_SLOTS */
    uint32_t sq_entries;        /* 4 * nslots: bounds stale cancels (protocol.md) */
    uint32_t cq_entries;        /* nslots */
    uint64_t sq_off, cq_off, slots_off, heap_off;
    uint64_t size;              /* whole segment, a multiple of 4096 */
};

static inline uint64_t bb__align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Lay out a segment of nslots slots. want_size is the size asked for; the
 * result is at least large enough for the rings, the slots and a heap of
 * BB__MIN_HEAP_BYTES. Rings start on 128-byte boundaries, the heap on a page. */
static inline void bb__layout_compute(uint32_t nslots, uint64_t want_size, struct bb__layout *l)
{
    l->nslots = nslots;
    l->sq_entries = 4 * nslots;
    l->cq_entries = nslots;
    l->sq_off = BB_SHM_HEADER_SIZE;
    l->cq_off = bb__align_up(l->sq_off + BB_SHM_RING_HDR_SIZE + 4ull * l->sq_entries, 128);
    l->slots_off = bb__align_up(l->cq_off + BB_SHM_RING_HDR_SIZE + 4ull * l->cq_entries, 128);
    l->heap_off = bb__align_up(l->slots_off + (uint64_t)BB_SHM_SLOT_SIZE * nslots, 4096);
    uint64_t size = want_size;
    if (size < l->heap_off + BB__MIN_HEAP_BYTES)
        size = l->heap_off + BB__MIN_HEAP_BYTES;
    l->size = bb__align_up(size, 4096);
}

/* True if a header describes exactly the layout bb__layout_compute gives for
 * its nslots and segment_size, and that size is the mapping's. */
static inline bool bb__layout_matches(const struct bb_shm_header *h, uint64_t mapped_size)
{
    uint32_t n = h->nslots;
    if (n == 0 || (n & (n - 1)) || n > BB_MAX_SLOTS || h->segment_size != mapped_size)
        return false;
    struct bb__layout l;
    bb__layout_compute(n, h->segment_size, &l);
    return l.size == h->segment_size && h->sq_entries == l.sq_entries &&
           h->cq_entries == l.cq_entries && h->sq_off == l.sq_off && h->cq_off == l.cq_off &&
           h->slots_off == l.slots_off && h->heap_off == l.heap_off &&
           h->heap_size == l.size - l.heap_off;
}

#endif
