/* Admission against a real broker (broker/admission.c, control.c): what one
 * admitted peer may hold. Sessions per uid (with a share of max_clients kept
 * for other uids) and per process, the handshake and operator idle
 * timeouts, slots and segment memory per uid, the broker's private memory
 * per slot, and the sessions of a uid that a reload removes.
 *
 * Tests that need a second user fork a child that becomes nobody (65534);
 * they skip when not run as root. Each test starts its own broker. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchbroker/protocol.h"
#include "harness.h"
#include "test_util.h"

#define NOBODY 65534

static struct bbt_broker B;

TestSuite(admission, .fini = bbt_cleanup_all, .timeout = 120);

/* Open operator sessions until the broker refuses one (at most max): the
 * count held, the held fds in fds[], the refusal's status in *refusal. */
static int hold_operator_sessions(int *fds, int max, int *refusal)
{
    int held = 0;
    *refusal = 0;
    while (held < max) {
        int fd = bbt_raw_connect(B.sock);
        if (fd < 0) {
            *refusal = BB_EDISCONNECTED;
            break;
        }
        int st = bbt_raw_hello(fd, BB_HELLO_OPERATOR, 0);
        if (st != 0) {
            close(fd);
            *refusal = st;
            break;
        }
        fds[held++] = fd;
    }
    return held;
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static pid_t fork_child(void)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    return pid;
}

/* In a forked child: become nobody. setuid clears the parent-death signal,
 * so it is set again: a child must not outlive a failed test. */
static bool become_nobody(void)
{
    if (setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
        return false;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    return true;
}

/* Fork a child that runs as nobody and reports through a pipe: returns 0 in
 * the child, with the pipe's write end in *fd (exit 100 if it cannot switch),
 * and the pid in the parent, with the read end in *fd. */
static pid_t fork_nobody(int *fd)
{
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        close(pfd[0]);
        if (!become_nobody())
            _exit(100);
        *fd = pfd[1];
        return 0;
    }
    close(pfd[1]);
    *fd = pfd[0];
    return pid;
}

static int child_status(pid_t pid)
{
    int st = bbt_waitpid_bounded(pid, 30000);
    cr_assert(st >= 0 && WIFEXITED(st), "child status %#x", st);
    return WEXITSTATUS(st);
}

/* ---- Memory a HELLO costs the broker ---- */

/* A HELLO asking for 65,536 slots used to make the broker allocate and touch
 * a 160-byte record per slot up front (~10 MB of private memory per client).
 * The records now come in small chunks when a slot is first used: four such
 * clients cost the broker well under a MiB of private memory each. */
Test(admission, many_slots_cost_no_private_memory_up_front)
{
    /* max_uid_slots above the 4 x 65536 slots (and the fresh client's, whose
     * session may not be reaped yet). */
    BBT_START_OK(&B, "broker.max_inflight=65536", "broker.max_uid_slots=1048576");
    bbt_fresh_client_works(&B);
    long before = bb__proc_status_kb(B.pid, "RssAnon");
    cr_assert_gt(before, 0);
    struct bb_client_opts o = {.max_inflight = 65536};
    bb_client *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = bbt_connect_ok(&B, &o);
    long after = bb__proc_status_kb(B.pid, "RssAnon");
    cr_assert_lt(after - before, 4 * 1024,
                 "4 clients of 65536 slots cost the broker %ld KiB of private memory",
                 after - before);
    /* And the slots work: one far up the table. */
    bb_model *m = bbt_open_ok(c[3], "echo");
    bb_request *r[600];
    for (int i = 0; i < 600; i++)
        cr_assert_eq(bb_request_new(m, 8, 8, &r[i]), 0);
    memcpy(bb_request_input(r[599]), "highslot", 8);
    cr_assert_eq(bb_submit(r[599], NULL), 0);
    cr_assert_eq(bb_wait(r[599], 10000000000ll), 0);
    size_t n;
    const char *out = bb_request_output(r[599], &n);
    cr_assert(out && n == 8 && memcmp(out, "highslot", 8) == 0);
    for (int i = 0; i < 4; i++)
        bb_disconnect(c[i]);
}

/* ---- Slots and segment memory per uid ---- */

static int connect_with(uint32_t slots, size_t seg, bb_client **c)
{
    struct bb_client_opts o = {.max_inflight = slots, .segment_bytes = seg};
    return bb_connect(B.sock, &o, c);
}

/* Retry while a session the broker has not reaped yet (the harness's
 * start-up probe, a client that just left) still holds the uid's budget. */
static int connect_eventually(uint32_t slots, size_t seg, bb_client **c)
{
    int rc = BB_ENOMEM;
    for (int i = 0; i < 1000 && rc == BB_ENOMEM; i++) {
        rc = connect_with(slots, seg, c);
        if (rc == BB_ENOMEM)
            bbt_msleep(5);
    }
    return rc;
}

Test(admission, slots_per_uid_are_bounded)
{
    BBT_START_OK(&B, "broker.max_uid_slots=4096");
    bb_client *a, *b, *x;
    cr_assert_eq(connect_eventually(2048, 0, &a), 0);
    cr_assert_eq(connect_eventually(2048, 0, &b), 0);
    int rc = connect_with(1024, 0, &x);
    cr_assert_eq(rc, BB_ENOMEM, "a third client past max_uid_slots: %s", bb_errname(rc));
    bb_disconnect(a);
    cr_assert_eq(connect_eventually(1024, 0, &x), 0, "the slots of a client that left return");
    bb_disconnect(b);
    bb_disconnect(x);
}

Test(admission, segment_memory_per_uid_is_bounded)
{
    BBT_START_OK(&B, "broker.max_uid_segment_mb=100");
    bb_client *a, *x;
    cr_assert_eq(connect_eventually(0, 64u << 20, &a), 0);
    int rc = connect_with(0, 64u << 20, &x);
    cr_assert_eq(rc, BB_ENOMEM, "a second 64 MiB segment within 100 MiB: %s", bb_errname(rc));
    cr_assert_eq(connect_eventually(0, 16u << 20, &x), 0, "a smaller one fits");
    bb_disconnect(x);
    bb_disconnect(a);
}

/* ---- Sessions per process and per uid ---- */

Test(admission, sessions_per_process_are_bounded)
{
    BBT_START_OK(&B, "broker.max_clients_per_pid=4");
    int fds[8], refusal;
    /* The harness's probe session may still be counted for a moment. */
    int held = 0;
    for (int i = 0; i < 1000 && held < 4; i++) {
        close_all(fds, held);
        held = hold_operator_sessions(fds, 8, &refusal);
        if (held < 4)
            bbt_msleep(5);
    }
    cr_assert_eq(held, 4, "held %d sessions", held);
    cr_assert_eq(refusal, BB_EMAXCLIENTS, "the fifth: %s", bb_errname(refusal));
    /* Another process is not affected. */
    pid_t pid = fork_child();
    if (pid == 0) {
        bb_client *c;
        int rc = bb_connect(B.sock, NULL, &c);
        _exit(rc == 0 ? 0 : 10 - rc);
    }
    cr_assert_eq(child_status(pid), 0, "another process was refused");
    close_all(fds, held);
}

/* A child that forks pid `want` (root, through ns_last_pid) and runs
 * bb_connect there: the child's pid, or -1 when another process took that
 * pid first every time. The exit status says 0 for attached, else 10 - rc. */
static pid_t fork_as_pid(pid_t want)
{
    for (int i = 0; i < 50; i++) {
        FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
        if (!f)
            return -1;
        fprintf(f, "%d", (int)want - 1);
        fclose(f);
        pid_t pid = fork_child();
        if (pid == 0) {
            if (getpid() != want)
                _exit(99);
            bb_client *c;
            int rc = bb_connect(B.sock, NULL, &c);
            _exit(rc == 0 ? 0 : 10 - rc);
        }
        if (pid == want)
            return pid;
        bbt_waitpid_bounded(pid, 5000);
    }
    return -1;
}

/* A process that said HELLO twice, left both sockets to a child and exited
 * before reading the replies keeps both sessions (robustness.c says why),
 * charged to its uid. Not to its pid any more: the pid is free, and the next
 * process that gets it (here made so through ns_last_pid) is a stranger
 * that used to be refused with max_clients_per_pid reached. */
Test(admission, an_exited_process_leaves_its_pid_to_the_next)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to choose a pid (ns_last_pid)");
    BBT_START_OK(&B, "broker.max_clients_per_pid=2");
    int release[2], ready[2];
    cr_assert_eq(pipe(release), 0);
    cr_assert_eq(pipe(ready), 0);
    pid_t p = fork_child();
    if (p == 0) {
        close(release[1]);
        close(ready[0]);
        for (int k = 0; k < 2; k++) {
            int fd = bbt_raw_connect(B.sock);
            struct bb_msg_hello h = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                     .version = BB_SHM_VERSION, .cpu = -1, .max_inflight = 1};
            struct bb_msg_hdr rep;
            if (fd < 0 || send(fd, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h ||
                recv(fd, &rep, sizeof rep, MSG_PEEK) != (ssize_t)sizeof rep || rep.status != 0)
                _exit(1); /* the reply is there, unread */
        }
        if (fork() == 0) { /* holds both sockets until the test closes the pipe */
            char x;
            prctl(PR_SET_PDEATHSIG, 0);
            ssize_t n = write(ready[1], "x", 1);
            n = read(release[0], &x, 1);
            _exit(n < 0);
        }
        _exit(0);
    }
    close(ready[1]);
    char x;
    cr_assert_eq(read(ready[0], &x, 1), 1, "the holder never started");
    close(ready[0]);
    cr_assert_eq(child_status(p), 0, "the first process could not attach twice");
    bbt_msleep(300); /* the broker sees the exit */
    pid_t q = fork_as_pid(p);
    if (q < 0) {
        close(release[1]);
        cr_skip_test("pid %d was taken by another process each time", (int)p);
    }
    int code = child_status(q);
    close(release[1]);
    cr_assert_eq(code, 0, "the process that got pid %d was refused: %s", (int)p,
                 bb_errname(10 - code));
}

/* One uid may hold max_clients_per_uid sessions; by default that leaves an
 * eighth of max_clients (here 2 of 16) to other uids. */
Test(admission, one_uid_cannot_take_every_place)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    BBT_START_OK(&B, "broker.allowed_uids=0,65534", "broker.max_clients=16");
    int pfd;
    pid_t pid = fork_nobody(&pfd);
    if (pid == 0) {
        int fds[32], refusal;
        int held = hold_operator_sessions(fds, 32, &refusal);
        char rep[2] = {(char)held, (char)-refusal};
        if (write(pfd, rep, 2) != 2)
            _exit(101);
        pause(); /* hold them until killed */
        _exit(0);
    }
    char rep[2];
    cr_assert_eq(read(pfd, rep, 2), 2, "the other uid never reported");
    close(pfd);
    cr_assert_eq(rep[0], 14, "uid 65534 held %d of 16 places", rep[0]);
    cr_assert_eq(-rep[1], BB_EMAXCLIENTS, "its refusal: %s", bb_errname(-rep[1]));
    /* Root still gets in, twice (once the harness's probe session, which
     * may still hold a place for a moment, is gone). */
    bb_client *a = NULL, *b = NULL;
    int rc = BB_EMAXCLIENTS;
    for (int i = 0; i < 1000 && rc == BB_EMAXCLIENTS; i++) {
        if (!a)
            rc = bb_connect(B.sock, NULL, &a);
        if (a)
            rc = bb_connect(B.sock, NULL, &b);
        if (rc == BB_EMAXCLIENTS)
            bbt_msleep(5);
    }
    cr_assert_eq(rc, 0, "root was locked out: %s", bb_errname(rc));
    bb_disconnect(a);
    bb_disconnect(b);
    kill(pid, SIGKILL);
    bbt_waitpid_bounded(pid, 5000);
}

/* ---- Timeouts ---- */

/* Every connection must say HELLO within hello_timeout_ms; an operator
 * session that sends nothing for operator_idle_timeout_ms is dropped too. An
 * attached client holds a segment and is bounded by the limits above
 * instead: it may stay idle. */
Test(admission, handshake_and_operator_idle_timeouts)
{
    BBT_START_OK(&B, "broker.hello_timeout_ms=200", "broker.operator_idle_timeout_ms=300");
    int silent = bbt_raw_connect(B.sock);
    cr_assert_geq(silent, 0);
    int op = bbt_raw_connect(B.sock);
    cr_assert_eq(bbt_raw_hello(op, BB_HELLO_OPERATOR, 0), 0);
    bb_client *idle = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(idle, "echo");
    cr_assert(bbt_dropped(silent, 10000), "a connection without HELLO was kept");
    cr_assert(bbt_dropped(op, 10000), "an idle operator session was kept");
    close(silent);
    close(op);
    char out[8];
    size_t n;
    cr_assert_eq(bb_infer(m, "idle", 4, out, sizeof out, &n, NULL, 10000000000ll), 0,
                 "an idle attached client was dropped");
    bb_disconnect(idle);
    /* An operator that keeps talking stays. */
    op = bbt_raw_connect(B.sock);
    cr_assert_eq(bbt_raw_hello(op, BB_HELLO_OPERATOR, 0), 0);
    for (int i = 0; i < 10; i++) {
        struct bb_msg_stats req = {.h = {.type = BB_MSG_STATS}};
        struct bb_msg_stats_reply rep;
        cr_assert_eq(send(op, &req, sizeof req, MSG_NOSIGNAL), (ssize_t)sizeof req);
        cr_assert_eq(recv(op, &rep, sizeof rep, 0), (ssize_t)sizeof rep, "dropped at %d", i);
        bbt_msleep(100);
    }
    close(op);
}

/* ---- Reload ---- */

/* A uid that a SIGHUP reload removes from allowed_uids loses its sessions at
 * once, attached clients and operators alike; others keep theirs. */
Test(admission, reload_ends_sessions_of_a_removed_uid)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to another uid");
    const char *slow = "[model.slow]\nbackend = synthetic\nparam.batch_us = 3000000\n"
                       "param.mode = sleep\ninstances = 1\nmax_batch_size = 1\nmax_wait_us = 0\n";
    char text[512];
    snprintf(text, sizeof text, "[broker]\nallowed_uids = 0, 65534\n%s", slow);
    struct bbt_start so = {.config_text = text, .log = true,
                           .overrides = (const char *const[]){"broker.log_level=info", NULL}};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0);
    int pfd;
    pid_t pid = fork_nobody(&pfd);
    if (pid == 0) {
        bb_client *c;
        bb_model *m;
        bb_request *r;
        if (bb_connect(B.sock, NULL, &c) != 0 || bb_model_open(c, "slow", &m) != 0 ||
            bb_request_new(m, 8, 8, &r) != 0 || bb_submit(r, NULL) != 0)
            _exit(101);
        int op = bbt_raw_connect(B.sock);
        if (op < 0 || bbt_raw_hello(op, BB_HELLO_OPERATOR, 0) != 0)
            _exit(102);
        if (write(pfd, "x", 1) != 1)
            _exit(103);
        int rc = bb_wait(r, 15000000000ll);
        if (rc != BB_EDISCONNECTED)
            _exit(110 - rc); /* 110: it completed; 114: timed out */
        _exit(bbt_dropped(op, 10000) ? 0 : 104);
    }
    char go;
    cr_assert_eq(read(pfd, &go, 1), 1, "uid 65534 never attached");
    close(pfd);
    bb_client *mine = bbt_connect_ok(&B, NULL);
    FILE *f = fopen(B.cfg, "w");
    cr_assert_not_null(f);
    fprintf(f, "[broker]\nallowed_uids = 0\n%s", slow);
    fclose(f);
    cr_assert_eq(kill(B.pid, SIGHUP), 0);
    int code = child_status(pid);
    cr_assert_eq(code, 0, "child exit %d (100: setuid, 101: attach, 102: operator, 104: operator "
                 "kept, 110: request completed, 114: still attached)", code);
    cr_assert_geq(bbt_log_wait(&B, "no longer allowed", 2, 5000), 2, "the broker logged no "
                  "revocation");
    /* Root's client is untouched. */
    bb_model *m = bbt_open_ok(mine, "slow");
    struct bb_model_stats st = bbt_stats_of(m);
    cr_assert_eq(st.queued, 0, "the revoked client's request is gone");
    bb_disconnect(mine);
}
