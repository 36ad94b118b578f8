/* io_uring submissions: an SQE is always available (a full queue is
 * submitted first; with a polling thread, waited on until it takes some),
 * then one prep and the user_data. */
#include "uring.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "log.h"

static struct io_uring_sqe *get_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        io_uring_submit(ring);
        /* With a polling thread: asleep until it takes one. The wait may
         * end with the queue still full (it returned 0 with no room under
         * load, and the assertion below ended the broker), so wait again. */
        while (!(sqe = io_uring_get_sqe(ring)) && (ring->flags & IORING_SETUP_SQPOLL))
            io_uring_sqring_wait(ring);
    }
    bb_assert(sqe, "the submission queue has room after a submit");
    return sqe;
}

void bb__uring_poll(struct io_uring *ring, int fd, unsigned mask, int multishot, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    if (multishot)
        io_uring_prep_poll_multishot(sqe, fd, mask);
    else
        io_uring_prep_poll_add(sqe, fd, mask);
    io_uring_sqe_set_data64(sqe, ud);
}

void bb__uring_read(struct io_uring *ring, int fd, void *buf, unsigned len, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_read(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data64(sqe, ud);
}

void bb__uring_write(struct io_uring *ring, int fd, const void *buf, unsigned len, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_write(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data64(sqe, ud);
}

void bb__uring_accept(struct io_uring *ring, int fd, uint64_t ud)
{
    /* One connection per accept, re-armed once the dispatcher has handled
     * it: a multishot accept pulls connections off the listen backlog as
     * fast as anyone makes them, so a peer that connects in a loop queued
     * thousands of accepted descriptors (and their completions) ahead of
     * everyone else. One at a time, the kernel's backlog bounds them and
     * makes the flooder wait in connect() like everybody else. */
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud);
}

#define BB__IORING_OP_FUTEX_WAIT 51
#define BB__FUTEX2_SIZE_U32 0x02 /* and not FUTEX2_PRIVATE: the word is shared */

void bb__uring_futex_wait(struct io_uring *ring, _Atomic uint32_t *word, uint32_t val, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_rw(BB__IORING_OP_FUTEX_WAIT, sqe, BB__FUTEX2_SIZE_U32, (void *)word, 0, val);
    sqe->rw_flags = 0; /* futex_flags */
    sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
    io_uring_sqe_set_data64(sqe, ud);
}

#define BB__IORING_OP_FUTEX_WAKE 52

void bb__uring_futex_wake(struct io_uring *ring, _Atomic uint32_t *word)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_rw(BB__IORING_OP_FUTEX_WAKE, sqe, BB__FUTEX2_SIZE_U32, (void *)word, 0, INT_MAX);
    sqe->rw_flags = 0; /* futex_flags */
    sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS; /* a failure only posts a completion */
    io_uring_sqe_set_data64(sqe, 0);
}

int bb__uring_has_futex(struct io_uring *ring)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(ring);
    int ok = p && io_uring_opcode_supported(p, BB__IORING_OP_FUTEX_WAIT) &&
             io_uring_opcode_supported(p, BB__IORING_OP_FUTEX_WAKE);
    io_uring_free_probe(p);
    return ok;
}

void bb__uring_cancel(struct io_uring *ring, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(ring);
    io_uring_prep_cancel64(sqe, ud, 0);
    io_uring_sqe_set_data64(sqe, bb__ud_make(BB__UD_CANCEL, 0, 0));
}
