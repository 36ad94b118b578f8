/* Whether this kernel runs the broker's wake_offload_ms: an io_uring with a
 * polling thread (IORING_SETUP_SQPOLL) and the futex operations (Linux 6.7+,
 * the opcodes broker/uring.c makes by hand). Exits 0 if so, else prints why
 * and exits 77, which the suites' _waker variants pass on to ctest as a skip
 * (tests/CMakeLists.txt). */
#include <liburing.h>
#include <stdio.h>
#include <string.h>

#define OP_FUTEX_WAIT 51
#define OP_FUTEX_WAKE 52

int main(void)
{
    struct io_uring ring;
    struct io_uring_params p = {.flags = IORING_SETUP_SQPOLL, .sq_thread_idle = 1};
    int rc = io_uring_queue_init_params(8, &ring, &p);
    if (rc < 0) {
        printf("skipped: wake_offload_ms needs io_uring SQPOLL: %s\n", strerror(-rc));
        return 77;
    }
    struct io_uring_probe *pr = io_uring_get_probe_ring(&ring);
    int ok = pr && io_uring_opcode_supported(pr, OP_FUTEX_WAIT) &&
             io_uring_opcode_supported(pr, OP_FUTEX_WAKE);
    io_uring_free_probe(pr);
    io_uring_queue_exit(&ring);
    if (!ok) {
        printf("skipped: wake_offload_ms needs io_uring futex operations (Linux 6.7+)\n");
        return 77;
    }
    return 0;
}
