/* Hostile and crashing peers: a client that scribbles over its whole segment,
 * a client killed with requests in flight, a broker killed under a waiting
 * client (and restarted on the same socket), and peers whose credentials are
 * refused. The broker must keep serving everybody else; clients must learn
 * of a dead broker in bounded time. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h"
#include "harness.h"
#include "test_util.h"

static struct bbt_broker B, B2;

TestSuite(robust, .fini = bbt_cleanup_all, .timeout = 120);

#define START(b, ...) BBT_START_OK(b, __VA_ARGS__)

static bool broker_alive(struct bbt_broker *b)
{
    int st;
    return b->pid > 0 && waitpid(b->pid, &st, WNOHANG) == 0;
}

/* bb_connect, again every 10 ms for up to 5 s while places are taken (a
 * connection the broker is still letting go of counts a moment longer). */
static int connect_when_free(bb_client **c)
{
    int rc = BB_EMAXCLIENTS;
    for (int i = 0; i < 500 && rc != 0; i++)
        if ((rc = bb_connect(B.sock, NULL, c)) != 0)
            bbt_msleep(10);
    return rc;
}

/* ---- The well-behaved client: pipelined, verified requests ---- */

struct worker_result {
    uint64_t done, bad;
    char msg[200];
};

/* Keeps 8 requests in flight until `stop` says so and at least min_reqs are
 * done; every answer is byte-compared. */
static void good_client(bb_model *m, uint64_t min_reqs, volatile int *stop, uint64_t id_base,
                        struct worker_result *res)
{
    enum { DEPTH = 8, MAXLEN = 700 };
    bb_request *r[DEPTH];
    uint64_t id[DEPTH];
    uint64_t next = id_base;
    for (int i = 0; i < DEPTH; i++) {
        int rc = bb_request_new(m, MAXLEN, MAXLEN, &r[i]);
        if (rc < 0) {
            snprintf(res->msg, sizeof res->msg, "bb_request_new: %s", bb_strerror(rc));
            res->bad++;
            return;
        }
        id[i] = next++;
        size_t len = 1 + id[i] % MAXLEN;
        bbt_fill(bb_request_input(r[i]), len, id[i]);
        bb_request_set_input_len(r[i], len);
        bb_submit(r[i], NULL);
    }
    uint64_t end = bbt_now_ns() + 60000000000ull;
    while ((res->done < min_reqs || !*stop) && bbt_now_ns() < end) {
        for (int i = 0; i < DEPTH; i++) {
            int rc = bb_wait(r[i], 10000000000ll);
            size_t want = 1 + id[i] % MAXLEN, n = 0;
            const void *out = rc == 0 ? bb_request_output(r[i], &n) : NULL;
            if (rc != 0 || !out || n != want || !bbt_check(out, n, id[i])) {
                if (!res->bad)
                    snprintf(res->msg, sizeof res->msg,
                             "request %llu: wait %s, status %s, len %zu (want %zu)",
                             (unsigned long long)id[i], bb_errname(rc),
                             bb_errname(bb_request_status(r[i])), n, want);
                res->bad++;
                if (rc != 0)
                    return;
            }
            res->done++;
            id[i] = next++;
            size_t len = 1 + id[i] % MAXLEN;
            bbt_fill(bb_request_input(r[i]), len, id[i]);
            bb_request_set_input_len(r[i], len);
            rc = bb_submit(r[i], NULL);
            if (rc < 0) {
                snprintf(res->msg, sizeof res->msg, "bb_submit: %s", bb_strerror(rc));
                res->bad++;
                return;
            }
        }
    }
    for (int i = 0; i < DEPTH; i++) {
        bb_wait(r[i], 10000000000ll);
        bb_request_free(r[i]);
    }
}

/* ---- Vandal: a client that overwrites its own segment ---- */

static void ring_doorbell(bb_client *c)
{
    bb__client_ring(c);
}

/* mode 0: the whole segment, random bytes, over and over.
 * mode 1: plausible ring counters, random descriptors and slot entries, so
 *         that the broker's descriptor validation (not just the ring check)
 *         sees garbage; then the whole segment as in mode 0. */
static int vandal(const char *sock, int mode, int wfd)
{
    bb_client *c;
    if (bb_connect(sock, NULL, &c) < 0)
        return 2;
    bb_model *m;
    if (bb_model_open(c, "echo", &m) < 0)
        return 3;
    /* A few honest requests first, so that the broker holds state for us. */
    bb_request *r[4];
    for (int i = 0; i < 4; i++) {
        if (bb_request_new(m, 64, 64, &r[i]) < 0)
            return 4;
        memset(bb_request_input(r[i]), i, 64);
        bb_submit(r[i], NULL);
    }
    char go = 1;
    if (write(wfd, &go, 1) != 1)
        return 5;
    uint64_t s = (uint64_t)getpid() * 7919u + (uint64_t)mode;
    uint64_t end = bbt_now_ns() + 800000000ull;
    if (mode == 1) {
        uint32_t tail = atomic_load(&c->sq_reserve);
        while (bbt_now_ns() < end) {
            for (int k = 0; k < 64; k++) {
                uint32_t slot = (uint32_t)(bbt_rand(&s) % c->nslots);
                uint64_t *d = (uint64_t *)&c->slots[slot];
                for (int j = 0; j < 8; j++)
                    d[j] = bbt_rand(&s);
                /* Half of them name a real model, to get past the first check. */
                if (k & 1)
                    c->slots[slot].model_id = m->id;
                if (k & 2)
                    c->slots[slot].in_off = c->hdr->heap_off + bbt_rand(&s) % (c->size);
                uint32_t e = slot | ((bbt_rand(&s) & 7) == 0 ? BB_SQE_CANCEL : 0);
                /* A right lap mostly (the broker reads it), else garbage. */
                e |= (k & 4) ? (uint32_t)bbt_rand(&s) & BB_SQE_LAP_MASK
                             : BB_SQE_LAP(tail, c->sq_lg);
                uint32_t head = atomic_load(&c->sq->shm_head);
                if (tail - head >= c->sq_mask)
                    break; /* stay plausible: do not lap the broker */
                atomic_store_explicit(&c->sq_entries[tail & c->sq_mask], e, memory_order_release);
                tail++;
            }
            ring_doorbell(c);
            bbt_msleep(1);
        }
        end = bbt_now_ns() + 400000000ull;
    }
    while (bbt_now_ns() < end) {
        uint64_t *p = (uint64_t *)c->base;
        for (size_t i = 0; i < c->size / 8; i++)
            p[i] = bbt_rand(&s);
        ring_doorbell(c);
        bbt_msleep(5);
    }
    /* Stay attached a little longer, silent, then leave without a word. */
    bbt_msleep(200);
    return 0;
}

static void vandal_test(int mode)
{
    START(&B, "model.echo.max_batch_size=16", "model.echo.max_wait_us=100");
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        _exit(vandal(B.sock, mode, pfd[1]));
    }
    close(pfd[1]);
    char go = 0;
    cr_assert_eq(read(pfd[0], &go, 1), 1, "the vandal never got going");
    close(pfd[0]);

    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    volatile int stop = 0;
    struct worker_result res = {0};
    /* The good client runs while the vandal does; check the vandal between
     * rounds of 2,000 requests. */
    uint64_t base = 1;
    int vst = -2;
    for (int round = 0; round < 200; round++) {
        struct worker_result part = {0};
        stop = 1;
        good_client(m, 2000, &stop, base, &part);
        base += part.done + 100;
        res.done += part.done;
        if (part.bad && !res.bad)
            memcpy(res.msg, part.msg, sizeof res.msg);
        res.bad += part.bad;
        if (part.bad)
            break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            vst = st;
            break;
        }
    }
    if (vst == -2)
        vst = bbt_waitpid_bounded(pid, 10000);
    cr_assert(vst >= 0 && WIFEXITED(vst) && WEXITSTATUS(vst) == 0,
              "the vandal did not run to its end (status %#x)", vst);
    cr_assert_eq(res.bad, 0, "the good client lost answers: %s", res.msg);
    cr_assert(res.done >= 2000, "only %llu requests done", (unsigned long long)res.done);
    cr_assert(broker_alive(&B), "the broker died (status %#x)", B.exit_status);
    /* And it still serves this client and new ones. */
    char out[8];
    size_t n;
    cr_assert_eq(bb_infer(m, "after", 5, out, sizeof out, &n, NULL, 5000000000ll), 0);
    bb_disconnect(c);
    bbt_fresh_client_works(&B);
    cr_assert(broker_alive(&B));
    int bst = bbt_broker_stop(&B);
    cr_assert(bst >= 0 && WIFEXITED(bst) && WEXITSTATUS(bst) == 0,
              "the broker did not shut down cleanly on SIGTERM (status %#x)", bst);
}

Test(robust, client_overwrites_whole_segment)
{
    vandal_test(0);
}

Test(robust, client_writes_garbage_descriptors)
{
    vandal_test(1);
}

/* ---- A client killed with requests in flight ---- */

static int victim(const char *sock, int wfd)
{
    bb_client *c;
    if (bb_connect(sock, NULL, &c) < 0)
        return 2;
    bb_model *m;
    if (bb_model_open(c, "slow", &m) < 0)
        return 3;
    for (int i = 0; i < 20; i++) {
        bb_request *r;
        if (bb_request_new(m, 128, 128, &r) < 0)
            return 4;
        memset(bb_request_input(r), i, 128);
        if (bb_submit(r, NULL) < 0)
            return 5;
    }
    char go = 1;
    if (write(wfd, &go, 1) != 1)
        return 6;
    for (;;)
        pause();
}

Test(robust, client_sigkilled_with_requests_in_flight)
{
    START(&B, "model.slow.backend=synthetic", "model.slow.param.batch_us=100000",
          "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=1",
          "model.slow.max_wait_us=0");
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        _exit(victim(B.sock, pfd[1]));
    }
    close(pfd[1]);
    char go = 0;
    cr_assert_eq(read(pfd[0], &go, 1), 1, "the victim never submitted");
    close(pfd[0]);

    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    struct bb_model_stats st = bbt_stats_of(m);
    for (int i = 0; i < 200 && st.queued < 10; i++) {
        bbt_msleep(5);
        st = bbt_stats_of(m);
    }
    cr_assert(st.queued >= 10, "the victim's requests are queued (queued %u)", st.queued);
    /* Our own request waits behind the victim's 2 s of work. */
    bb_request *mine;
    cr_assert_eq(bb_request_new(m, 128, 128, &mine), 0);
    bbt_fill(bb_request_input(mine), 128, 77);
    cr_assert_eq(bb_submit(mine, NULL), 0);

    cr_assert_eq(kill(pid, SIGKILL), 0);
    int wst = bbt_waitpid_bounded(pid, 5000);
    cr_assert(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);

    /* Its queued requests go away: queued returns to 0 (bounded poll). */
    int polls = 0;
    do {
        bbt_msleep(10);
        st = bbt_stats_of(m);
    } while (st.queued != 0 && ++polls < 500);
    cr_assert_eq(st.queued, 0, "the dead client's requests stay queued (%u)", st.queued);
    /* We are unaffected: our request completes normally. */
    cr_assert_eq(bb_wait(mine, 10000000000ll), 0);
    cr_assert_eq(bb_request_status(mine), 0, "got %s", bb_errname(bb_request_status(mine)));
    size_t n;
    const void *out = bb_request_output(mine, &n);
    cr_assert(out && n == 128 && bbt_check(out, 128, 77));
    cr_assert(broker_alive(&B));
    bb_disconnect(c);
    bbt_fresh_client_works(&B);
}

/* bb_disconnect with requests pending: the broker reclaims them as well. */
Test(robust, disconnect_with_requests_pending)
{
    START(&B, "model.slow.backend=synthetic", "model.slow.param.batch_us=100000",
          "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=1",
          "model.slow.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    for (int i = 0; i < 20; i++) {
        bb_request *r;
        cr_assert_eq(bb_request_new(m, 128, 128, &r), 0);
        cr_assert_eq(bb_submit(r, NULL), 0);
    }
    /* Let the broker take them in first: submissions still in the ring when
     * it sees the hang-up may be dropped unseen, which would prove nothing. */
    struct bb_model_stats st;
    for (int i = 0; i < 500; i++) {
        st = bbt_stats_of(m);
        if (st.submitted == 20 && st.queued >= 10)
            break;
        bbt_msleep(2);
    }
    cr_assert(st.submitted == 20 && st.queued >= 10, "queued %u", st.queued);
    bb_disconnect(c);
    bb_client *c2 = bbt_connect_ok(&B, NULL);
    bb_model *m2 = bbt_open_ok(c2, "slow");
    int polls = 0;
    do {
        bbt_msleep(10);
        st = bbt_stats_of(m2);
    } while (st.queued != 0 && ++polls < 500);
    cr_assert_eq(st.queued, 0, "abandoned requests stay queued (%u)", st.queued);
    char out[8];
    size_t n;
    cr_assert_eq(bb_infer(m2, "abc", 3, out, sizeof out, &n, NULL, 10000000000ll), 0);
    bb_disconnect(c2);
}

/* ---- The broker killed under a waiting client ---- */

struct waiter {
    bb_request *r;
    int rc;
    uint64_t returned_ns;
};

static void *wait_thread(void *arg)
{
    struct waiter *w = arg;
    w->rc = bb_wait(w->r, -1);
    w->returned_ns = bbt_now_ns();
    return NULL;
}

Test(robust, broker_sigkilled_client_sees_disconnect)
{
    START(&B, "model.slow.backend=synthetic", "model.slow.param.batch_us=5000000",
          "model.slow.param.mode=sleep", "model.slow.instances=1", "model.slow.max_batch_size=1",
          "model.slow.max_wait_us=0");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "slow");
    bb_request *r, *queued;
    cr_assert_eq(bb_request_new(m, 16, 16, &r), 0);
    cr_assert_eq(bb_request_new(m, 16, 16, &queued), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    cr_assert_eq(bb_submit(queued, NULL), 0);
    struct waiter w = {.r = r, .rc = 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
    /* Past its spin the waiter sleeps on the futex and says so in the header. */
    for (int i = 0; i < 5000 && atomic_load(&c->hdr->shm_sleepers) == 0; i++)
        bbt_msleep(1);
    cr_assert_gt(atomic_load(&c->hdr->shm_sleepers), 0, "the waiter never went to sleep");
    cr_assert_eq(w.rc, 1, "bb_wait returned early: %s", bb_errname(w.rc));
    uint64_t killed = bbt_now_ns();
    int st = bbt_broker_kill(&B, SIGKILL);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    /* Bounded join: 5 s, far above the 1 s the design promises. */
    uint64_t end = bbt_now_ns() + 5000000000ull;
    while (w.rc == 1 && bbt_now_ns() < end)
        bbt_msleep(5);
    cr_assert_neq(w.rc, 1, "bb_wait still blocked 5 s after the broker died");
    pthread_join(th, NULL);
    cr_assert_eq(w.rc, BB_EDISCONNECTED, "bb_wait returned %s", bb_errname(w.rc));
    double secs = (double)(w.returned_ns - killed) / 1e9;
    cr_assert(secs < 1.5, "bb_wait took %.3f s to notice the dead broker", secs);
    /* Every other pending request reads as disconnected too; nothing new goes out. */
    cr_assert_eq(bb_wait(queued, 1000000000ll), BB_EDISCONNECTED);
    cr_assert_eq(bb_request_status(queued), BB_EDISCONNECTED);
    cr_assert_eq(bb_request_status(r), BB_EDISCONNECTED);
    bb_request *r2;
    int rc = bb_request_new(m, 16, 16, &r2);
    if (rc == 0) {
        rc = bb_submit(r2, NULL);
        cr_assert_eq(rc, BB_EDISCONNECTED, "bb_submit to a dead broker: %s", bb_errname(rc));
    } else {
        cr_assert_eq(rc, BB_EDISCONNECTED);
    }
    char out[8];
    rc = bb_infer(m, "x", 1, out, sizeof out, NULL, NULL, 1000000000ll);
    cr_assert_eq(rc, BB_EDISCONNECTED, "bb_infer to a dead broker: %s", bb_errname(rc));
    struct bb_model_stats ms;
    cr_assert_eq(bb_model_stats(m, &ms), BB_EDISCONNECTED);
    bb_request_free(r);
    bb_request_free(queued);
    bb_disconnect(c);

    /* A new broker on the same path (its stale socket file still there). */
    cr_assert_eq(access(B.sock, F_OK), 0, "the killed broker left its socket file");
    const char *ov[] = {NULL};
    cr_assert_eq(bbt_broker_start_at(&B2, B.sock, NULL, ov), 0, "restart on %s", B.sock);
    bbt_fresh_client_works(&B2);
    bbt_broker_stop(&B2);
}

/* ---- Credentials ---- */

/* The broker refuses a peer at accept, possibly before the peer's HELLO
 * arrives; the client must still read the refusal (BB_EPERM), not report
 * the closed socket. A race: one lucky connect proves nothing, hence loops. */
#define EPERM_TRIES 50

/* Only uid 12345 may attach; we (root or not) are refused. */
Test(robust, uid_not_allowed_gets_eperm)
{
    START(&B, "broker.allowed_uids=12345");
    int counts[32] = {0};
    for (int i = 0; i < EPERM_TRIES; i++) {
        bb_client *c = (bb_client *)0x1;
        int rc = bb_connect(B.sock, NULL, &c);
        cr_assert_null(c);
        counts[rc <= 0 && rc > -32 ? -rc : 31]++;
        if (i & 1)
            bbt_msleep(1);
    }
    cr_assert_eq(counts[-BB_EPERM], EPERM_TRIES,
                 "uid %u: %d of %d connects got BB_EPERM, %d BB_EDISCONNECTED, %d success",
                 (unsigned)getuid(), counts[-BB_EPERM], EPERM_TRIES, counts[-BB_EDISCONNECTED],
                 counts[0]);
    /* Refusing peers does not disturb the broker. */
    cr_assert(broker_alive(&B));
}

/* A real other user: as root, fork a child that becomes nobody (65534) while
 * the broker allows only root. */
Test(robust, other_user_gets_eperm)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    START(&B, "broker.allowed_uids=0");
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) < 0 || setuid(65534) < 0)
            _exit(100);
        for (int i = 0; i < EPERM_TRIES; i++) {
            bb_client *c;
            int rc = bb_connect(B.sock, NULL, &c);
            if (rc != BB_EPERM)
                _exit(10 - rc); /* 10: success; 11..25: the code we got instead */
        }
        _exit(0);
    }
    int st = bbt_waitpid_bounded(pid, 10000);
    cr_assert(st >= 0 && WIFEXITED(st), "child status %#x", st);
    cr_assert_neq(WEXITSTATUS(st), 100, "setuid(65534) failed");
    cr_assert_eq(WEXITSTATUS(st), 0, "uid 65534 got %s instead of BB_EPERM",
                 WEXITSTATUS(st) == 10 ? "success" : bb_errname(10 - WEXITSTATUS(st)));
    /* Root itself is still admitted. */
    bbt_fresh_client_works(&B);
}

/* Pinning the batch target changes every client's batching: a client of
 * another (admitted) uid may not; root may. */
Test(robust, pin_needs_an_operator)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    START(&B, "broker.allowed_uids=0,65534");
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) < 0 || setuid(65534) < 0)
            _exit(100);
        bb_client *c;
        bb_model *m;
        if (bb_connect(B.sock, NULL, &c) < 0 || bb_model_open(c, "echo", &m) < 0)
            _exit(101);
        int rc = bb_model_pin(m, 4);
        bb_disconnect(c);
        _exit(rc == BB_EPERM ? 0 : 102);
    }
    int st = bbt_waitpid_bounded(pid, 10000);
    cr_assert(st >= 0 && WIFEXITED(st), "child status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 0, "child exit %d (100: setuid, 101: connect, 102: pin "
                 "was not refused)", WEXITSTATUS(st));
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    cr_assert_eq(bb_model_pin(m, 4), 0, "root may pin");
    struct bb_model_stats s = bbt_stats_of(m);
    cr_assert_eq(s.batch_target, 4);
    cr_assert_eq(bb_model_pin(m, 0), 0);
    bb_disconnect(c);
}

/* The control socket is untrusted input too: garbage before HELLO, a HELLO
 * of the wrong size or version, unknown or truncated messages after it. Each
 * offender is dropped; the broker keeps serving everyone else. */
static int raw_connect(const char *path)
{
    int fd = bbt_raw_connect(path);
    cr_assert(fd >= 0, "connect %s", path);
    return fd;
}

/* The broker closes the connection: recv sees EOF (after any reply). */
static bool dropped(int fd)
{
    return bbt_dropped(fd, 5000);
}

Test(robust, hostile_control_messages)
{
    START(&B, NULL);
    uint64_t seed = 12345;
    /* Random bytes instead of HELLO, of several sizes. */
    for (int round = 0; round < 20; round++) {
        int fd = raw_connect(B.sock);
        unsigned char junk[600];
        size_t len = 1 + (size_t)(bbt_rand(&seed) % sizeof junk);
        for (size_t i = 0; i < len; i++)
            junk[i] = (unsigned char)bbt_rand(&seed);
        ssize_t sent = send(fd, junk, len, MSG_NOSIGNAL);
        (void)sent;
        cr_assert(dropped(fd), "round %d: a garbage first message did not end the session", round);
        close(fd);
    }
    /* A HELLO of the wrong version is refused with BB_EPROTO, then dropped. */
    int fd = raw_connect(B.sock);
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = (BB_ABI_MAJOR + 1) << 16};
    cr_assert_eq(send(fd, &hello, sizeof hello, MSG_NOSIGNAL), (ssize_t)sizeof hello);
    struct bb_msg_hello_reply rep;
    cr_assert_eq(recv(fd, &rep, sizeof rep, 0), (ssize_t)sizeof rep);
    cr_assert_eq(rep.h.status, BB_EPROTO);
    cr_assert(dropped(fd));
    close(fd);
    /* A HELLO asking for what this broker does not do, an unknown flag or a
     * non-zero reserved word: refused with BB_EPROTO, then dropped. */
    for (int k = 0; k < 2; k++) {
        fd = raw_connect(B.sock);
        struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION};
        if (k == 0)
            h.flags = 1u << 31;
        else
            h.reserved = 1;
        cr_assert_eq(send(fd, &h, sizeof h, MSG_NOSIGNAL), (ssize_t)sizeof h);
        cr_assert_eq(recv(fd, &rep, sizeof rep, 0), (ssize_t)sizeof rep, "HELLO %d got no reply", k);
        cr_assert_eq(rep.h.status, BB_EPROTO, "HELLO %d: status %d", k, rep.h.status);
        cr_assert(dropped(fd), "HELLO %d: session not ended", k);
        close(fd);
    }
    /* After a good operator HELLO: an unknown type, then a truncated STATS. */
    const struct bb_msg_hdr bad[] = {{.type = 999}, {.type = BB_MSG_STATS}};
    const size_t bad_len[] = {sizeof bad[0], sizeof bad[1]};
    for (int k = 0; k < 2; k++) {
        fd = raw_connect(B.sock);
        hello.version = BB_SHM_VERSION;
        hello.flags = BB_HELLO_OPERATOR;
        cr_assert_eq(send(fd, &hello, sizeof hello, MSG_NOSIGNAL), (ssize_t)sizeof hello);
        cr_assert_eq(recv(fd, &rep, sizeof rep, 0), (ssize_t)sizeof rep);
        cr_assert_eq(rep.h.status, 0);
        cr_assert_eq(send(fd, &bad[k], bad_len[k], MSG_NOSIGNAL), (ssize_t)bad_len[k]);
        cr_assert(dropped(fd), "message %d did not end the session", k);
        close(fd);
    }
    cr_assert(broker_alive(&B));
    bbt_fresh_client_works(&B);
}

/* A client may say nothing between its HELLO and the reply: a second HELLO
 * there, while the registration thread has the segment of the first (v1echo
 * registers client memory) or while it is answered inline (echo only),
 * ends the session, and nothing of the first is charged twice or lost. */
Test(robust, a_second_hello_before_the_reply)
{
    for (int registering = 0; registering < 2; registering++) {
        const char *cfg = registering ? "[model.echo]\nbackend = echo\n"
                                        "[model.v1]\nbackend = " BB_TEST_PLUGIN_DIR
                                        "/bb_backend_v1echo.so\ninstances = 1\n"
                                      : "[model.echo]\nbackend = echo\n";
        cr_assert_eq(bbt_broker_start(&B, cfg, NULL), 0, "broker did not start");
        for (int round = 0; round < 20; round++) {
            int fd = raw_connect(B.sock);
            struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                     .version = BB_SHM_VERSION, .cpu = -1, .max_inflight = 1};
            for (int k = 0; k < 2; k++)
                cr_assert_eq(send(fd, &h, sizeof h, MSG_NOSIGNAL), (ssize_t)sizeof h);
            cr_assert(dropped(fd), "round %d: a second HELLO did not end the session", round);
            close(fd);
        }
        cr_assert(broker_alive(&B));
        bbt_fresh_client_works(&B);
        /* The broker asserts that a uid without sessions holds no segment
         * (admission.c): charged twice, it would abort by now. */
        cr_assert_eq(bbt_broker_stop(&B), 0);
    }
}

/* Descriptors in flight to a peer that never reads them count against the
 * broker's uid and keep their memory even after the broker lets go: an
 * operator that asks for metrics again and again without reading gets a few
 * replies, then loses the session. */
Test(robust, unread_metrics_replies_end_the_session)
{
    START(&B, NULL);
    int fd = raw_connect(B.sock);
    cr_assert_eq(bbt_raw_hello(fd, BB_HELLO_OPERATOR, 0), 0);
    const struct bb_msg_metrics req = {.h = {.type = BB_MSG_METRICS}, .format = BB_METRICS_DUMP};
    for (int i = 0; i < 50; i++)
        if (send(fd, &req, sizeof req, MSG_NOSIGNAL) != (ssize_t)sizeof req)
            break; /* dropped already */
    /* Read nothing until the broker has hung up (or 10 s have passed). */
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    for (int i = 0; i < 100 && !(p.revents & (POLLRDHUP | POLLHUP)); i++)
        poll(&p, 1, 100);
    int replies = 0, fds = 0, resets = 0;
    for (;;) {
        struct bb_msg_metrics_reply rep;
        char cbuf[CMSG_SPACE(4 * sizeof(int))];
        struct iovec io = {.iov_base = &rep, .iov_len = sizeof rep};
        struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        /* The broker left requests unread: a reset first, then the replies. */
        if (n < 0 && errno == ECONNRESET && resets++ == 0)
            continue;
        if (n <= 0)
            break;
        replies++;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            int got;
            memcpy(&got, CMSG_DATA(cm), sizeof got);
            close(got);
            fds++;
        }
    }
    close(fd);
    cr_assert(p.revents & (POLLRDHUP | POLLHUP), "the session outlived %d unread replies", replies);
    cr_assert_gt(fds, 0, "not even the first reply came");
    cr_assert_leq(fds, 10, "%d descriptors sent to a peer that read none of them", fds);
    cr_assert(broker_alive(&B));
    bbt_fresh_client_works(&B);
}

/* A process that says HELLO, leaves the socket to a child and exits before
 * reading the reply leaves that reply's descriptors and segment referenced
 * from the child's socket. The session lives on, counted against its uid,
 * until the child closes the socket: with max_clients_per_uid = 3 and two
 * such sessions, a third client gets in and a fourth is refused (it used
 * to get in, the two dropped when their processes exited, and a loop of
 * such processes pinned memory and descriptors without bound). */
Test(robust, a_session_left_to_a_child_still_counts)
{
    START(&B, "broker.max_clients_per_uid=3");
    int release[2];
    cr_assert_eq(pipe(release), 0);
    for (int k = 0; k < 2; k++) {
        fflush(NULL);
        pid_t p = fork();
        cr_assert_geq(p, 0);
        if (p == 0) {
            close(release[1]);
            int fd = bbt_raw_connect(B.sock);
            struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                     .version = BB_SHM_VERSION, .cpu = -1, .max_inflight = 1};
            if (fd < 0 || send(fd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h)
                _exit(1);
            struct pollfd rp = {.fd = fd, .events = POLLIN};
            if (poll(&rp, 1, 10000) != 1) /* the reply is there, unread */
                _exit(2);
            if (fork() == 0) { /* holds the socket until the test closes the pipe */
                char x;
                ssize_t n = read(release[0], &x, 1);
                _exit(n < 0);
            }
            _exit(0);
        }
        int st = bbt_waitpid_bounded(p, 10000);
        cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    }
    close(release[0]);
    bbt_msleep(300); /* the broker sees both exits */
    bb_client *third = NULL, *fourth = NULL;
    int rc = connect_when_free(&third);
    cr_assert_eq(rc, 0, "the third client: %s", bb_errname(rc));
    cr_assert_eq(bb_connect(B.sock, NULL, &fourth), BB_EMAXCLIENTS,
                 "the two sessions held by children no longer count");
    close(release[1]); /* the children close their sockets */
    rc = connect_when_free(&fourth);
    cr_assert_eq(rc, 0, "the sessions outlived their sockets: %s", bb_errname(rc));
    bb_disconnect(fourth);
    bb_disconnect(third);
    cr_assert(broker_alive(&B));
}

/* The other half of the rule above: once the child has read the reply, the
 * session of the process that exited ends (docs/caveats.md), the child's
 * socket sees the hang-up. It used to live on whenever every other session
 * of its worker was attached: the heartbeat looked at it only while one was
 * not. */
Test(robust, a_session_left_to_a_child_ends_once_its_reply_is_read)
{
    START(&B, NULL);
    int result[2];
    cr_assert_eq(pipe(result), 0);
    fflush(NULL);
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        close(result[0]);
        int fd = bbt_raw_connect(B.sock);
        struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .cpu = -1, .max_inflight = 1};
        if (fd < 0 || send(fd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h)
            _exit(1);
        struct pollfd rp = {.fd = fd, .events = POLLIN};
        if (poll(&rp, 1, 10000) != 1) /* the reply is there, unread */
            _exit(2);
        if (fork() == 0) {
            bbt_msleep(300); /* the broker sees its parent exit */
            struct bb_msg_hello_reply rep;
            char cbuf[CMSG_SPACE(4 * sizeof(int))];
            struct iovec io = {.iov_base = &rep, .iov_len = sizeof rep};
            struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
                                .msg_controllen = sizeof cbuf};
            char verdict = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) > 0 ? 'k' : 'r';
            if (verdict == 'k') { /* read: now the broker must let go within 5 s */
                struct pollfd hp = {.fd = fd, .events = POLLRDHUP};
                for (int i = 0; i < 50 && !(hp.revents & (POLLRDHUP | POLLHUP)); i++)
                    poll(&hp, 1, 100);
                verdict = hp.revents & (POLLRDHUP | POLLHUP) ? 'd' : 'k';
            }
            ssize_t n = write(result[1], &verdict, 1);
            _exit(n != 1);
        }
        _exit(0);
    }
    close(result[1]);
    int st = bbt_waitpid_bounded(p, 10000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    char verdict = 0;
    cr_assert_eq(read(result[0], &verdict, 1), 1, "the holder never reported");
    close(result[0]);
    cr_assert_neq(verdict, 'r', "the HELLO reply was not there to read");
    cr_assert_eq(verdict, 'd', "the session outlived its process after its reply was read");
    cr_assert(broker_alive(&B));
    bbt_fresh_client_works(&B);
}

/* A bare connection whose HELLO was answered (status 0, peeked at) and
 * whose reply, with its descriptors, is left unread; -1 if refused 500
 * times (a place the broker is still letting go of counts a moment). */
static int hello_reply_unread(const char *sock)
{
    for (int i = 0; i < 500; i++) {
        int fd = bbt_raw_connect(sock);
        struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .cpu = -1, .max_inflight = 1};
        struct bb_msg_hello_reply rep;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (fd >= 0 && send(fd, &h, sizeof h, MSG_NOSIGNAL) == (ssize_t)sizeof h &&
            poll(&p, 1, 10000) == 1 &&
            recv(fd, &rep, sizeof rep, MSG_PEEK | MSG_DONTWAIT) >= (ssize_t)sizeof rep.h &&
            rep.h.status == 0)
            return fd;
        if (fd >= 0)
            close(fd);
        bbt_msleep(10);
    }
    return -1;
}

/* A session the broker ends while its peer has not read the HELLO reply
 * (here for a message it does not know, sent after the reply arrived)
 * leaves that reply's descriptors (segment, worker page, eventfds) in the
 * peer's socket, charged to the broker's uid (RLIMIT_NOFILE: at the limit
 * every HELLO reply fails), and the segment's pages referenced. Until the
 * peer reads or closes, the session still counts against its uid: with
 * max_clients_per_uid = 3 and three such peers, a fourth client is refused.
 * It used to get in: a dropped session cost its uid nothing, and a loop of
 * such peers pinned descriptors and memory without bound. */
Test(robust, a_dropped_session_with_its_reply_unread_still_counts)
{
    START(&B, "broker.max_clients_per_uid=3");
    int fds[3];
    for (int k = 0; k < 3; k++) {
        fds[k] = hello_reply_unread(B.sock);
        cr_assert_geq(fds[k], 0, "peer %d was never admitted", k);
        const struct bb_msg_hdr junk = {.type = 0x7777};
        cr_assert_eq(send(fds[k], &junk, sizeof junk, MSG_NOSIGNAL), (ssize_t)sizeof junk);
        struct pollfd p = {.fd = fds[k], .events = POLLRDHUP};
        for (int i = 0; i < 100 && !(p.revents & (POLLRDHUP | POLLHUP)); i++)
            poll(&p, 1, 100);
        cr_assert(p.revents & (POLLRDHUP | POLLHUP), "peer %d was not dropped", k);
    }
    bbt_msleep(300); /* the broker has swept whatever it lets go of */
    bb_client *fourth = NULL;
    int rc = bb_connect(B.sock, NULL, &fourth);
    if (rc == 0)
        bb_disconnect(fourth);
    cr_assert_eq(rc, BB_EMAXCLIENTS, "three dropped sessions with replies unread no longer count");
    /* One peer reads its reply (and closes the descriptors): its place is
     * free again, the other two still count. */
    struct bb_msg_hello_reply rep;
    char cbuf[CMSG_SPACE(4 * sizeof(int))];
    struct iovec io = {.iov_base = &rep, .iov_len = sizeof rep};
    struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    cr_assert_gt(recvmsg(fds[0], &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC), 0);
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
            int got;
            memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof got);
            close(got);
        }
    rc = connect_when_free(&fourth);
    cr_assert_eq(rc, 0, "a peer that read its reply still holds its place: %s", bb_errname(rc));
    bb_client *fifth = NULL;
    rc = bb_connect(B.sock, NULL, &fifth);
    if (rc == 0)
        bb_disconnect(fifth);
    cr_assert_eq(rc, BB_EMAXCLIENTS, "the two peers that read nothing no longer count");
    for (int k = 0; k < 3; k++)
        close(fds[k]);
    rc = connect_when_free(&fifth);
    cr_assert_eq(rc, 0, "the sessions outlived their sockets: %s", bb_errname(rc));
    bb_disconnect(fifth);
    bb_disconnect(fourth);
    cr_assert(broker_alive(&B));
}

/* A lingering session (above) whose peer left its own socket in a message
 * the broker had not read when it ended the session: the socket the peer
 * closes lives on in the broker's queue, and so do the replies on it, the
 * session's reason to linger. The broker discards what it has not read when
 * it ends a session, and the place comes free once the peer has closed. */
Test(robust, a_peer_that_sent_its_own_socket_still_lets_go)
{
    START(&B, "broker.max_clients_per_uid=2");
    int fd = hello_reply_unread(B.sock);
    cr_assert_geq(fd, 0, "the peer was never admitted");
    /* Both messages queued before the broker reads either. */
    cr_assert_eq(kill(B.pid, SIGSTOP), 0);
    const struct bb_msg_hdr junk = {.type = 0x7777};
    cr_assert_eq(send(fd, &junk, sizeof junk, MSG_NOSIGNAL), (ssize_t)sizeof junk);
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec io = {.iov_base = (void *)&junk, .iov_len = sizeof junk};
    struct msghdr mh = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    cr_assert_eq(kill(B.pid, SIGCONT), 0);
    cr_assert_eq(n, (ssize_t)sizeof junk);
    struct pollfd p = {.fd = fd, .events = POLLRDHUP}; /* the reply stays unread */
    for (int i = 0; i < 50 && !(p.revents & (POLLRDHUP | POLLHUP)); i++)
        poll(&p, 1, 100);
    cr_assert(p.revents & (POLLRDHUP | POLLHUP), "the session was not ended");
    close(fd);
    bb_client *a = NULL, *b = NULL;
    int rc = connect_when_free(&a);
    cr_assert_eq(rc, 0, "%s", bb_errname(rc));
    rc = connect_when_free(&b);
    cr_assert_eq(rc, 0, "the session lingers after its peer closed: %s", bb_errname(rc));
    bb_disconnect(b);
    bb_disconnect(a);
    cr_assert(broker_alive(&B));
}

/* ---- Churn ---- */

/* Clients that come and go (cleanly, or abandoning requests) leave nothing
 * behind in the broker: its descriptor count returns to where it was. */
Test(robust, client_churn_leaks_no_descriptors)
{
    START(&B, "model.echo.max_wait_us=0");
    /* The baseline is taken once the broker has closed a client's
     * descriptors (socket, pidfd, notify, and a doorbell eventfd without the
     * futex doorbell), all in one pass: no session is left. */
    bb_client *probe = bbt_connect_ok(&B, NULL);
    int with_one = bb__proc_count_fds(B.pid);
    bb_disconnect(probe);
    int before = with_one;
    for (int i = 0; i < 1000 && before > with_one - 3; i++) {
        bbt_msleep(2);
        before = bb__proc_count_fds(B.pid);
    }
    cr_assert(before > 0 && before <= with_one - 3, "the probe's session never ended (%d, %d)",
              with_one, before);
    for (int i = 0; i < 150; i++) {
        /* A session the broker has not reaped yet still counts against
         * max_clients_per_pid (64) for a moment: on a loaded machine, with
         * two workers (its end crosses a mailbox), this loop can outrun the
         * reaping. */
        bb_client *c = NULL;
        int rc = BB_EMAXCLIENTS;
        for (int k = 0; k < 5000 && rc == BB_EMAXCLIENTS; k++)
            if ((rc = bb_connect(B.sock, NULL, &c)) == BB_EMAXCLIENTS)
                bbt_msleep(1);
        cr_assert_eq(rc, 0, "bb_connect: %s", bb_strerror(rc));
        bb_model *m = bbt_open_ok(c, "echo");
        bb_request *r;
        cr_assert_eq(bb_request_new(m, 32, 32, &r), 0);
        memset(bb_request_input(r), i, 32);
        cr_assert_eq(bb_submit(r, NULL), 0);
        if (i % 2 == 0)
            cr_assert_eq(bb_wait(r, 5000000000ll), 0);
        bb_disconnect(c); /* odd ones abandon a request that may be in flight */
    }
    int after = -1;
    for (int i = 0; i < 200; i++) {
        bbt_msleep(10);
        after = bb__proc_count_fds(B.pid);
        if (after <= before)
            break;
    }
    cr_assert(after <= before, "broker descriptors: %d before, %d after 150 clients", before,
              after);
    bbt_fresh_client_works(&B);
}

/* max_clients: one more client is refused at once with its own code
 * (BB_EMAXCLIENTS, not a model's BB_EBUSY), and admitted again once a slot
 * frees up. Subject to the same refusal race as the EPERM tests above (the
 * refusal may read as BB_EDISCONNECTED). One uid takes every place here,
 * which by default it may not (test_admission.c). */
Test(robust, max_clients_refuses_extra_client)
{
    START(&B, "broker.max_clients=2", "broker.max_clients_per_uid=2");
    bb_client *a = NULL, *b = NULL, *x = NULL;
    /* The harness's probe connection may still be counted for a moment. */
    int rc = connect_when_free(&a);
    cr_assert_eq(rc, 0);
    rc = connect_when_free(&b);
    cr_assert_eq(rc, 0);
    for (int i = 0; i < 20; i++) {
        rc = bb_connect(B.sock, NULL, &x);
        cr_assert_eq(rc, BB_EMAXCLIENTS, "third client, try %d: %s", i, bb_errname(rc));
    }
    cr_assert_str_eq(bb_errname(BB_EMAXCLIENTS), "BB_EMAXCLIENTS");
    cr_assert(strstr(bb_strerror(BB_EMAXCLIENTS), "max_clients"));
    bb_disconnect(a);
    rc = connect_when_free(&x);
    cr_assert_eq(rc, 0, "a freed client slot is reused: %s", bb_errname(rc));
    bb_disconnect(x);
    bb_disconnect(b);
}

/* The worker page is shared by every client of a worker: no client may write
 * it. Its memfd is sealed against new writable mappings, so neither a
 * writable mapping of the page nor making the client's read-only one
 * writable works. */
Test(robust, worker_page_is_read_only)
{
    START(&B, NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    cr_assert_neq(mprotect(c->wpage, BB_SHM_WORKER_SIZE, PROT_READ | PROT_WRITE), 0,
                  "the worker page became writable");
    cr_assert_eq(errno, EACCES);
    /* A new writable shared mapping of the same memfd, found in /proc. */
    char link[300], target[256];
    int refused = 0, found = 0;
    DIR *d = opendir("/proc/self/map_files");
    cr_assert_not_null(d);
    for (struct dirent *e; (e = readdir(d));) {
        snprintf(link, sizeof link, "/proc/self/map_files/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = 0;
        if (!strstr(target, "batchbroker-worker-"))
            continue;
        found++;
        int fd = open(link, O_RDWR);
        void *p = fd < 0 ? MAP_FAILED
                         : mmap(NULL, BB_SHM_WORKER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        refused += p == MAP_FAILED;
        if (p != MAP_FAILED)
            munmap(p, BB_SHM_WORKER_SIZE);
        if (fd >= 0)
            close(fd);
    }
    closedir(d);
    cr_assert_gt(found, 0, "the worker page mapping was not found");
    cr_assert_eq(refused, found, "a writable mapping of the worker page was allowed");
    bb_disconnect(c);
}
