/* io_uring submissions of the dispatcher and the user_data they carry
 * (uring.c): operation type, session table index and the index's
 * generation, so that a completion that outlives its session is recognised
 * and dropped. */
#ifndef BB_BROKER_URING_H
#define BB_BROKER_URING_H

#include <liburing.h>
#include <stdatomic.h>
#include <stdint.h>

enum { BB__UD_ACCEPT = 1, BB__UD_WAKE, BB__UD_SOCK, BB__UD_DOORBELL, BB__UD_PIDFD, BB__UD_CANCEL,
       BB__UD_BELL, BB__UD_NOTIFY };

static inline uint64_t bb__ud_make(int type, uint32_t idx, uint32_t gen)
{
    return ((uint64_t)type << 56) | ((uint64_t)(gen & 0xffffffff) << 24) | (idx & 0xffffff);
}
static inline int bb__ud_type(uint64_t ud) { return (int)(ud >> 56); }
static inline uint32_t bb__ud_gen(uint64_t ud) { return (uint32_t)(ud >> 24); }
static inline uint32_t bb__ud_idx(uint64_t ud) { return (uint32_t)(ud & 0xffffff); }

void bb__uring_poll(struct io_uring *ring, int fd, unsigned mask, int multishot, uint64_t ud);
void bb__uring_read(struct io_uring *ring, int fd, void *buf, unsigned len, uint64_t ud);
/* buf must stay valid until the completion. */
void bb__uring_write(struct io_uring *ring, int fd, const void *buf, unsigned len, uint64_t ud);
void bb__uring_accept(struct io_uring *ring, int fd, uint64_t ud);
/* Wait (shared futex, 32 bits) until *word != val or a FUTEX_WAKE. liburing
 * 2.3 has no helper: the SQE is made by hand (IORING_OP_FUTEX_WAIT, Linux 6.7). */
void bb__uring_futex_wait(struct io_uring *ring, _Atomic uint32_t *word, uint32_t val, uint64_t ud);
/* Wake every waiter of a shared futex word (IORING_OP_FUTEX_WAKE, made by
 * hand too). No completion unless it fails; a failure's carries user_data 0. */
void bb__uring_futex_wake(struct io_uring *ring, _Atomic uint32_t *word);
/* True if the kernel has io_uring futex operations (wait and wake). */
int bb__uring_has_futex(struct io_uring *ring);
/* Cancel the operation tagged ud; its own completion is tagged BB__UD_CANCEL. */
void bb__uring_cancel(struct io_uring *ring, uint64_t ud);

#endif
