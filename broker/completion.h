/* Completions to clients (completion.c): the slot's status and output length
 * with shm_done_gen last, the completion-ring entry, and the wake-up of a
 * sleeping waiter; ring entries and wake-ups are batched per client per pass. */
#ifndef BB_BROKER_COMPLETION_H
#define BB_BROKER_COMPLETION_H

#include <stdbool.h>
#include <stdint.h>

struct bb__client;
struct bb__model;
struct bb__req;
struct bb__stamps;
struct bb__worker;
struct io_uring;

/* Wake the client's sleeping waiters, if any, after publishing (any thread).
 * On a thread that named a wake ring, the wake-up is queued there and goes
 * out when that ring is next submitted. */
void bb__wake_client(struct bb__client *cl);
/* The same where the caller put a seq_cst fence between its publishing and
 * this call: one fence for the clients of a whole batch. */
void bb__wake_client_fenced(struct bb__client *cl);
/* Store the count of completion-ring entries dropped since the last call in
 * the client's shm_cq_overflow (the worker's heartbeat, every client). */
void bb__completion_tell_drops(struct bb__client *c);
/* This thread's ring for wake-ups (NULL: a futex system call each). */
void bb__wake_ring_use(struct io_uring *ring);
/* Submit this thread's ring now if it holds anything (a no-op without one). */
void bb__wake_ring_flush(void);
/* Dispatcher: publish, then queue a completion-ring entry and a wake-up; both
 * go out in bb__completion_flush at the end of the pass. */
void bb__answer(struct bb__client *cl, uint32_t slot, uint32_t gen, int status, uint32_t out_len);
/* Publish the completion-ring entries and send the wake-ups of every client
 * this pass answered: one release store and one wake-up per client. */
void bb__completion_flush(struct bb__worker *w);

/* Home side: hand a completion of client c's slot back to the worker that
 * serves c: BB__RET_CQ (a completion-ring entry), BB__RET_WAKE (wake its
 * waiters), BB__RET_PUT (the request's reference on the session). */
void bb__completion_return(struct bb__worker *home, struct bb__client *c, uint32_t slot,
                           unsigned flags);
/* Client side of the same, on c's own worker. */
void bb__completion_returned(struct bb__client *c, uint32_t slot, unsigned flags);
/* Home side: the same with BB__RET_CQ | BB__RET_PUT for each of a batch's n
 * entries (bb__batch_run published and woke them), a group's skipped. One
 * call a batch: this is on every request's path. */
struct bb__entry;
void bb__completion_return_batch(struct bb__worker *home, const struct bb__entry *ents,
                                 uint32_t n);

/* Home side: answer request r with status (and out_len bytes of output
 * already in its buffer), count it (status 0: its phases are cut at the
 * stamps t of the batch that computed it, profile: whether to time them),
 * and give it back to its client's worker. r must not be touched
 * afterwards: its client may resubmit it at once. */
void bb__finish(struct bb__model *m, struct bb__req *r, int status, uint32_t out_len,
                const struct bb__stamps *t, bool profile);

/* Complete one queued request outside a batch (expired, canceled, shut
 * down); r has been unlinked from every queue. */
void bb__complete_one(struct bb__model *m, struct bb__req *r, int status);
/* The same for a request whose client is gone: nobody is left to answer. */
void bb__complete_dropped(struct bb__model *m, struct bb__req *r);

#endif
