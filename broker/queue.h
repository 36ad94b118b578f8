/* A model's queues (queue.c): per priority level a heap of rounds in dispatch
 * order and an arrival-order list, and one heap of every request with a
 * deadline.
 * Touched by the model's dispatcher only. */
#ifndef BB_BROKER_QUEUE_H
#define BB_BROKER_QUEUE_H

#include <stdbool.h>
#include <stdint.h>

#include "request.h"

/* A binary heap's order (queue.c says each): a level's dispatch order, own
 * deadlines first, then fair-queueing tag; the same with the tag first (a
 * deadline orders only its client's round); deadline order. The level
 * orders index the request's pos, the deadline order its dl_pos. */
enum { BB__ORDER_LEVEL, BB__ORDER_DEADLINE, BB__ORDER_FAIR_FIRST };

/* A binary heap of requests, in order `which` (BB__ORDER_*). */
struct bb__heap {
    struct bb__req **v;
    uint32_t n, cap;
    int which;
    bool edf;                 /* level order: own deadlines first */
};

struct bb__queues {
    struct bb__heap levels[4];     /* CRITICAL..LOW */
    struct bb__heap deadlines;     /* every queued or grouped request with a deadline */
    struct bb__req *fifo_head[4], *fifo_tail[4];
    uint32_t queued;               /* in the level heaps */
    uint32_t grouped;              /* dedup members riding on a queued twin */
    uint64_t seq;
    uint64_t vtime[4];             /* fair-queueing virtual time per level */
    uint64_t level_bytes[4];       /* input + output bytes queued per level */
    uint32_t level_n[4];           /* requests queued per level (a heap holds rounds) */
    bool fairness;                 /* else the arrival sequence orders a level */
};

/* Room for cap requests; edf: own deadlines order a level (priorities on);
 * fairness: fair-queueing tags do (else arrival); tags_first: the tags come
 * before own deadlines (BB__ORDER_FAIR_FIRST), else after (strategy =
 * deadline). */
int bb__queues_init(struct bb__queues *q, uint32_t cap, bool edf, bool fairness, bool tags_first);
/* Grow to cap (never shrinks). Returns 0, or -1 with the capacity reached in
 * *have (the smallest of the heaps). */
int bb__queues_reserve(struct bb__queues *q, uint32_t cap, uint32_t *have);
void bb__queues_fini(struct bb__queues *q);

/* Queue r. join: the head of the round r belongs to (same client, level and
 * tags), or NULL; if it is still a head in this queue r goes behind it,
 * else r becomes a head itself. Returns true when r is a head. */
bool bb__queue_push(struct bb__queues *q, struct bb__req *r, struct bb__req *join);
struct bb__req *bb__queue_top(struct bb__queues *q, int level);
void bb__queue_remove(struct bb__queues *q, struct bb__req *r);
struct bb__req *bb__level_oldest(struct bb__queues *q, int level);
/* Take requests off the top of a level, in dispatch order, into out: at most
 * room, each while its bytes fit *bytes_left (which it then lowers) or while
 * nothing is taken yet when `any_first`. A round goes in one heap operation,
 * not one per request. Returns how many; they are still in the deadline heap. */
uint32_t bb__queue_take_top(struct bb__queues *q, int level, uint32_t room, uint64_t *bytes_left,
                            bool any_first, struct bb__req **out);
/* Empty a level at once (heap order, not sorted): out gets its requests,
 * still in the deadline heap. Returns how many. */
uint32_t bb__queue_take_level(struct bb__queues *q, int level, struct bb__req **out);

void bb__deadline_push(struct bb__queues *q, struct bb__req *r);
void bb__deadline_remove(struct bb__queues *q, struct bb__req *r);
struct bb__req *bb__deadline_top(struct bb__queues *q);

#endif
