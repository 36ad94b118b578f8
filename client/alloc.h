/* Buddy allocator for the client's part of its segment (request buffers).
 * Metadata is process-private except the free-list links, which live inside
 * the free blocks themselves; the broker never reads any of it. Not
 * thread-safe: the client serialises calls. */
#ifndef BB_CLIENT_ALLOC_H
#define BB_CLIENT_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#define BB_BUDDY_MIN_SHIFT 6 /* 64-byte blocks: one cache line */
#define BB_BUDDY_MAX_ORDER 31

struct bb__buddy {
    char *base;
    uint32_t nblocks;       /* min-size blocks in the heap */
    uint8_t *state;         /* per block: 0, FREE|order, or USED|order */
    uint32_t free_head[BB_BUDDY_MAX_ORDER + 1];
};

int bb__buddy_init(struct bb__buddy *b, void *base, size_t size);
void bb__buddy_fini(struct bb__buddy *b);
/* Returns the byte offset from base, or -1 when no block is large enough. */
int64_t bb__buddy_alloc(struct bb__buddy *b, size_t size);
void bb__buddy_free(struct bb__buddy *b, uint64_t off);

#endif
