/* Views of a struct bb_shm_ring: single-producer/single-consumer (the
 * completion ring), and the submission ring's consumer (bb__sq, below).
 *
 * Counters run free as u32 and are masked on use. Each side keeps a private
 * cached copy of the peer's counter and reloads it (acquire) only when the
 * cached value says the ring is full or empty. The side that does not trust
 * its peer (the broker) checks every loaded counter for plausibility: a peer
 * that claims more than `cap` entries is corrupt. */
#ifndef BB_RING_INTERNAL_H
#define BB_RING_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "batchbroker/protocol.h"

struct bb__ring {
    struct bb_shm_ring *shm;
    uint32_t *entries;
    uint32_t mask;
    uint32_t local;       /* our own counter (tail if we produce, head if we consume) */
    uint32_t peer_cached; /* last value loaded from the peer's counter */
};

static inline void bb__ring_attach(struct bb__ring *r, void *base, uint32_t cap, int producer)
{
    r->shm = (struct bb_shm_ring *)base;
    r->entries = (uint32_t *)((char *)base + BB_SHM_RING_HDR_SIZE);
    r->mask = cap - 1;
    if (producer) {
        r->local = atomic_load_explicit(&r->shm->shm_tail, memory_order_relaxed);
        r->peer_cached = atomic_load_explicit(&r->shm->shm_head, memory_order_acquire);
    } else {
        r->local = atomic_load_explicit(&r->shm->shm_head, memory_order_relaxed);
        r->peer_cached = atomic_load_explicit(&r->shm->shm_tail, memory_order_acquire);
    }
}

/* Consumer: entries available, or -1 if the producer's tail is implausible.
 * The acquire load of shm_tail pairs with the producer's release store. */
static inline int64_t bb__ring_available(struct bb__ring *r)
{
    uint32_t n = r->peer_cached - r->local;
    if (n == 0) {
        r->peer_cached = atomic_load_explicit(&r->shm->shm_tail, memory_order_acquire);
        n = r->peer_cached - r->local;
    }
    if (n > r->mask + 1)
        return -1;
    return n;
}

/* Consumer: entry i (0-based from head) of those available. */
static inline uint32_t bb__ring_peek(const struct bb__ring *r, uint32_t i)
{
    return r->entries[(r->local + i) & r->mask];
}

/* Consumer: release n entries; the release store pairs with the producer's
 * acquire load of shm_head before it reuses them. */
static inline void bb__ring_consume(struct bb__ring *r, uint32_t n)
{
    r->local += n;
    atomic_store_explicit(&r->shm->shm_head, r->local, memory_order_release);
}

/* Producer: free entries, or -1 if the consumer's head is implausible. */
static inline int64_t bb__ring_space(struct bb__ring *r)
{
    uint32_t cap = r->mask + 1;
    uint32_t used = r->local - r->peer_cached;
    if (used > cap)
        used = cap + 1; /* force a reload below */
    if (used >= cap) {
        r->peer_cached = atomic_load_explicit(&r->shm->shm_head, memory_order_acquire);
        used = r->local - r->peer_cached;
        if (used > cap)
            return -1;
    }
    return cap - used;
}

/* Producer: free entries, or -1, for a producer about to hold need entries
 * unpublished. bb__ring_space reloads the consumer's head only when the
 * cached copy says the ring is full; one that adds several entries before
 * it publishes must not take a stale "almost full" for full, so this
 * reloads whenever the cached copy shows fewer than need free, once: a ring
 * that stays full (a consumer that never reads) costs one load a call. */
static inline int64_t bb__ring_space_for(struct bb__ring *r, uint32_t need)
{
    uint32_t cap = r->mask + 1;
    uint32_t used = r->local - r->peer_cached;
    if (used > cap || cap - used < need) {
        r->peer_cached = atomic_load_explicit(&r->shm->shm_head, memory_order_acquire);
        used = r->local - r->peer_cached;
        if (used > cap)
            return -1;
    }
    return cap - used;
}

/* Producer: write entry i (0-based from the tail) before publishing. */
static inline void bb__ring_put(struct bb__ring *r, uint32_t i, uint32_t v)
{
    r->entries[(r->local + i) & r->mask] = v;
}

/* Producer: publish n written entries with one release store. */
static inline void bb__ring_publish(struct bb__ring *r, uint32_t n)
{
    r->local += n;
    atomic_store_explicit(&r->shm->shm_tail, r->local, memory_order_release);
}

/* The submission ring's consumer (the broker): entries carry their lap
 * (protocol.h), there is no tail to trust. */
struct bb__sq {
    struct bb_shm_ring *shm;
    _Atomic uint32_t *entries;
    uint32_t mask, lg;
    uint32_t head;        /* ours; published as shm_head */
};

static inline void bb__sq_attach(struct bb__sq *q, void *base, uint32_t cap)
{
    q->shm = (struct bb_shm_ring *)base;
    q->entries = (_Atomic uint32_t *)((char *)base + BB_SHM_RING_HDR_SIZE);
    q->mask = cap - 1;
    q->lg = (uint32_t)__builtin_ctz(cap);
    q->head = atomic_load_explicit(&q->shm->shm_head, memory_order_relaxed);
}

/* How many entries, up to max, are ready at the head, in order. The acquire
 * loads pair with the producers' release stores of the entries. */
static inline uint32_t bb__sq_ready(const struct bb__sq *q, uint32_t max)
{
    uint32_t n = 0;
    while (n < max) {
        uint32_t pos = q->head + n;
        uint32_t e = atomic_load_explicit(&q->entries[pos & q->mask], memory_order_acquire);
        if ((e & BB_SQE_LAP_MASK) != BB_SQE_LAP(pos, q->lg))
            break;
        n++;
    }
    return n;
}

/* Entry i (from the head) of those ready. */
static inline uint32_t bb__sq_peek(const struct bb__sq *q, uint32_t i)
{
    return atomic_load_explicit(&q->entries[(q->head + i) & q->mask], memory_order_relaxed);
}

/* Release n entries to the producers. */
static inline void bb__sq_consume(struct bb__sq *q, uint32_t n)
{
    q->head += n;
    atomic_store_explicit(&q->shm->shm_head, q->head, memory_order_release);
}

#endif
