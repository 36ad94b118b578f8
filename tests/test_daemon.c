/* The broker as a process among others on the host: its logs under a flood
 * of refused connections, its memory against processes of its own user, and
 * where it puts its socket when none is configured. Tests that need a second
 * user run the broker or a child as nobody (65534) and skip when not root. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "test_util.h"

#define NOBODY 65534

static struct bbt_broker B;

TestSuite(daemon, .fini = bbt_cleanup_all, .timeout = 120);

/* Sum of the counts in the broker's "(rate limit) N more lines" reports. */
static long held_back(const struct bbt_broker *b)
{
    FILE *f = fopen(b->log, "r");
    cr_assert_not_null(f, "no broker log");
    char line[2048];
    long n = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "(rate limit) ");
        if (p)
            n += strtol(p + 13, NULL, 10);
    }
    fclose(f);
    return n;
}

/* A peer that is refused over and over gets a few lines logged and the rest
 * counted, not one line each: 500 connections refused for reason `what` (a
 * log line's text) make at most 10 lines per 5 s window of the limiter (one
 * window unless the machine is very slow), and its reports account for the
 * rest. */
static void refusals_are_bounded(const char *const *overrides, int hold, const char *what)
{
    struct bbt_start so = {.log = true, .overrides = overrides};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0);
    /* The sessions that hold a process at its limit. The harness's own
     * start-up probe (this process too) may still be counted for a moment:
     * a held connection the broker drops is retried. */
    int held[4];
    for (int i = 0, tries = 0; i < hold; tries++) {
        cr_assert_lt(tries, 100, "could not hold %d sessions", hold);
        cr_assert_geq(held[i] = bbt_raw_connect(B.sock), 0);
        if (bbt_dropped(held[i], 100))
            close(held[i]);
        else
            i++;
    }
    int before = bbt_log_count(&B, what);
    uint64_t t0 = bbt_now_ns();
    for (int i = 0; i < 500; i++) {
        int fd = bbt_raw_connect(B.sock);
        cr_assert_geq(fd, 0);
        cr_assert(bbt_dropped(fd, 5000), "refused connection %d was kept", i);
        close(fd);
    }
    uint64_t windows = (bbt_now_ns() - t0) / 5000000000ull + 1;
    int lines = bbt_log_count(&B, what) - before;
    cr_assert_geq(lines, 1, "the refusals were not logged at all");
    cr_assert_leq((uint64_t)lines, 10 * windows, "%d lines for 500 refusals in %llu window(s)",
                  lines, (unsigned long long)windows);
    /* The window that held lines back ends within ~5 s; its report follows. */
    for (int i = 0; i < 1000 && lines + held_back(&B) < 500; i++)
        bbt_msleep(10);
    cr_assert_eq(lines + held_back(&B), 500,
                 "%d lines logged and %ld reported held back, for 500 refusals", lines,
                 held_back(&B));
    for (int i = 0; i < hold; i++)
        close(held[i]);
}

Test(daemon, refusals_are_logged_at_a_bounded_rate)
{
    refusals_are_bounded((const char *const[]){"broker.allowed_uids=12345", NULL}, 0, "not allowed");
}

/* The same for a process at its limit (max_clients_per_pid) that keeps
 * knocking: one uid at a cap must not flood the log either. */
Test(daemon, refusals_at_a_limit_are_logged_at_a_bounded_rate)
{
    refusals_are_bounded((const char *const[]){"broker.max_clients_per_pid=2",
                                               "broker.hello_timeout_ms=600000", NULL},
                         2, "max_clients_per_pid reached");
}

/* The broker maps every client's segment: a process of the broker's own
 * user must not read them through /proc/PID/mem (or attach a debugger).
 * The broker makes itself non-dumpable, which also hands its /proc entries
 * to root. */
Test(daemon, broker_memory_is_closed_to_its_own_user)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to run the broker as another uid");
    struct bbt_start so = {.uid = NOBODY};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0, "broker as nobody (status %#x)",
                 B.exit_status);
    char mem[64];
    snprintf(mem, sizeof mem, "/proc/%d/mem", (int)B.pid);
    struct stat st;
    cr_assert_eq(stat(mem, &st), 0);
    cr_assert_eq(st.st_uid, 0, "%s belongs to uid %u: the broker is dumpable", mem,
                 (unsigned)st.st_uid);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(100);
        int fd = open(mem, O_RDONLY);
        _exit(fd < 0 && errno == EACCES ? 0 : fd >= 0 ? 1 : 2);
    }
    int ws = bbt_waitpid_bounded(pid, 10000);
    cr_assert(ws >= 0 && WIFEXITED(ws), "reader status %#x", ws);
    cr_assert_eq(WEXITSTATUS(ws), 0, "uid %d %s %s", NOBODY,
                 WEXITSTATUS(ws) == 1 ? "opened" : "could not switch to, or failed oddly on", mem);
}

/* ---- The default socket ---- */

/* Without [broker] socket the broker listens in $XDG_RUNTIME_DIR (private to
 * its user), and a client with the same environment finds it with
 * bb_connect(NULL); $BATCHBROKER_SOCKET still wins. */
Test(daemon, default_socket_is_in_the_runtime_dir)
{
    char dir[64];
    bbt_unique_path(dir, sizeof dir, ".run");
    cr_assert_eq(mkdir(dir, 0700), 0);
    char env[140];
    snprintf(env, sizeof env, "XDG_RUNTIME_DIR=%s", dir);
    snprintf(B.sock, sizeof B.sock, "%s/batchbroker.sock", dir);
    struct bbt_start so = {.no_socket_arg = true, .env = (const char *const[]){env, NULL}};
    int rc = bbt_broker_start_ex(&B, &so);
    if (rc < 0)
        rmdir(dir);
    cr_assert_eq(rc, 0, "no broker on %s (status %#x)", B.sock, B.exit_status);
    setenv("XDG_RUNTIME_DIR", dir, 1);
    unsetenv("BATCHBROKER_SOCKET");
    char path[108];
    cr_assert_gt(bb_default_socket(path, sizeof path), 0);
    cr_assert_str_eq(path, B.sock);
    bb_client *c;
    cr_assert_eq(bb_connect(NULL, NULL, &c), 0);
    bb_disconnect(c);
    setenv("BATCHBROKER_SOCKET", "/nowhere/x.sock", 1);
    cr_assert_gt(bb_default_socket(path, sizeof path), 0);
    cr_assert_str_eq(path, "/nowhere/x.sock");
    cr_assert_eq(bb_connect(NULL, NULL, &c), BB_ENOBROKER);
    bbt_broker_stop(&B);
    rmdir(dir);
}

/* dir is /tmp/batchbroker-UID, the default socket's directory of a broker
 * of uid (not root, no XDG_RUNTIME_DIR), and B.sock the socket in it;
 * neither exists. */
static void fresh_default_dir(char *dir, size_t len, uid_t uid)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to run the broker as another uid");
    unsetenv("XDG_RUNTIME_DIR");
    snprintf(dir, len, "/tmp/batchbroker-%u", (unsigned)uid);
    snprintf(B.sock, sizeof B.sock, "%s/batchbroker.sock", dir);
    unlink(B.sock);
    rmdir(dir);
}

/* Start B as uid on its default socket in dir, stat dir (stat's result in
 * *have), stop B and remove dir. Returns what bbt_broker_start_ex did. */
static int run_in_default_dir(const char *dir, uid_t uid, struct stat *st, int *have)
{
    struct bbt_start so = {.no_socket_arg = true, .uid = uid};
    int rc = bbt_broker_start_ex(&B, &so);
    *have = stat(dir, st);
    bbt_broker_stop(&B);
    rmdir(dir);
    return rc;
}

/* Without XDG_RUNTIME_DIR a broker that is not root listens in
 * /tmp/batchbroker-UID, a directory it creates for itself: one that another
 * user made first (and could put a socket in) makes it refuse to start. */
Test(daemon, default_socket_dir_taken_by_another_user_is_refused)
{
    char dir[64];
    fresh_default_dir(dir, sizeof dir, NOBODY);
    cr_assert_eq(mkdir(dir, 0777), 0, "mkdir %s", dir);
    chmod(dir, 0777); /* as a squatter would leave it */
    struct bbt_start so = {.no_socket_arg = true, .uid = NOBODY, .log = true};
    int rc = bbt_broker_start_ex(&B, &so);
    int refused = bbt_log_count(&B, "another user could take the socket path");
    unlink(B.log);
    rmdir(dir);
    cr_assert_eq(rc, -1, "the broker listened in a directory root made world-writable");
    cr_assert(WIFEXITED(B.exit_status) && WEXITSTATUS(B.exit_status) == 1, "status %#x",
              B.exit_status);
    cr_assert_eq(refused, 1, "the broker did not say why");
    /* With the directory gone it makes its own. */
    struct stat st;
    int have;
    rc = run_in_default_dir(dir, NOBODY, &st, &have);
    cr_assert_eq(rc, 0, "status %#x", B.exit_status);
    cr_assert_eq(have, 0);
    cr_assert(S_ISDIR(st.st_mode) && st.st_uid == NOBODY && (st.st_mode & 022) == 0,
              "uid %u mode %o", (unsigned)st.st_uid, (unsigned)st.st_mode);
}

/* The default socket's directory is made mode 0755 whatever the broker's
 * umask: the clients of other users it admits must reach the socket in it
 * (a umask of 077, such as systemd's UMask=0077 or a hardened shell's, made
 * it 0700). Another uid than the test above's, which runs at the same time
 * and uses nobody's directory. */
Test(daemon, default_socket_dir_is_open_to_search_whatever_the_umask)
{
    char dir[64];
    fresh_default_dir(dir, sizeof dir, 65533);
    mode_t was = umask(077);
    struct stat st;
    int have;
    int rc = run_in_default_dir(dir, 65533, &st, &have);
    umask(was);
    cr_assert_eq(rc, 0, "status %#x", B.exit_status);
    cr_assert_eq(have, 0);
    cr_assert_eq(st.st_mode & 07777, 0755, "%s has mode %04o", dir,
                 (unsigned)(st.st_mode & 07777));
}

/* ---- The socket file, at start and stop ---- */

/* A broker removes only its own socket when it stops: the path may hold
 * another's by then (its file removed by hand and a new broker started
 * there, or one that found it stale in the moment between the close of the
 * listening socket and the unlink), and unlinking that one would leave a
 * live broker that no client can reach. */
Test(daemon, a_stopping_broker_leaves_the_socket_of_the_one_after_it)
{
    static struct bbt_broker next;
    cr_assert_eq(bbt_broker_start(&B, NULL, NULL), 0);
    cr_assert_eq(unlink(B.sock), 0);
    cr_assert_eq(bbt_broker_start_at(&next, B.sock, NULL, NULL), 0, "status %#x",
                 next.exit_status);
    int ws = bbt_broker_kill(&B, SIGTERM); /* not _stop: it removes the path itself */
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %#x", ws);
    bb_client *c;
    int rc = bb_connect(next.sock, NULL, &c);
    cr_assert_eq(rc, 0, "the broker that stopped removed the socket of the one after it (%s)",
                 bb_errname(rc));
    bb_disconnect(c);
}

/* Start a broker on path that will stop in `call` on it (tests/hold_shim.c);
 * mark is the file to remove to let it go on once it does. */
static void start_shimmed(struct bbt_broker *b, const char *path, const char *call, char *mark,
                          size_t len)
{
    if (access(BBT_HOLD_SO, R_OK) != 0)
        cr_skip_test("no %s here", BBT_HOLD_SO);
    static char env[4][4200];
    const char *asan = getenv("ASAN_OPTIONS");
    snprintf(env[0], sizeof env[0], "LD_PRELOAD=%s", BBT_HOLD_SO);
    snprintf(env[1], sizeof env[1], "BBT_HOLD_CALL=%s", call);
    snprintf(env[2], sizeof env[2], "BBT_HOLD_PATH=%s", path);
    /* A sanitizer build wants its runtime first among the libraries. */
    snprintf(env[3], sizeof env[3], "ASAN_OPTIONS=%s%sverify_asan_link_order=0",
             asan ? asan : "", asan ? ":" : "");
    const char *const envp[] = {env[0], env[1], env[2], env[3], NULL};
    struct bbt_start so = {.sock = path, .no_wait = true, .log = true, .env = envp};
    cr_assert_eq(bbt_broker_start_ex(b, &so), 0);
    snprintf(mark, len, "%s.held", path);
}

static void wait_held(const char *mark, const char *call)
{
    for (int i = 0; i < 1000 && access(mark, F_OK) != 0; i++)
        bbt_msleep(10);
    cr_assert_eq(access(mark, F_OK), 0, "the broker never reached %s (no %s)", call, mark);
}

/* Start a broker on path that stops in `call` on it, and wait until it does. */
static void start_held(struct bbt_broker *b, const char *path, const char *call, char *mark,
                       size_t len)
{
    start_shimmed(b, path, call, mark, len);
    wait_held(mark, call);
}

/* Whoever may write to the socket's directory can put a symlink in place of
 * the socket just bound, before the broker opens its mode to every user:
 * that must not change the mode of the symlink's target (any file, for a
 * broker run as root). The broker finds its socket gone, and exits with
 * status 1. */
Test(daemon, a_symlink_put_in_place_of_the_new_socket_is_not_followed)
{
    char path[64], mark[80], victim[64];
    cr_assert_eq(bbt_write_file(victim, sizeof victim, ".victim", "private\n"), 0);
    cr_assert_eq(chmod(victim, 0600), 0);
    bbt_unique_path(path, sizeof path, ".sock");
    start_held(&B, path, "listen", mark, sizeof mark);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(symlink(victim, path), 0);
    unlink(mark);
    int ws = bbt_broker_wait(&B, 10000);
    int said = bbt_log_count(&B, "is not the socket just bound there");
    struct stat st;
    int have = stat(victim, &st);
    unlink(path);
    unlink(victim);
    cr_assert_eq(have, 0);
    cr_assert_eq(st.st_mode & 07777, 0600, "the broker made %s mode %04o through the symlink",
                 victim, (unsigned)(st.st_mode & 07777));
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "status %#x", ws);
    cr_assert_eq(said, 1, "the broker did not say why it stopped");
}
/* A socket file nobody listens on, as a killed broker leaves one. */
static void make_stale_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s", path);
    close(fd);
}

/* Two brokers started at once on a path that holds a stale socket may both
 * find it stale; the later one's unlink would then remove the socket the
 * other has just bound, and leave that one serving, unreachable. One
 * listens, the other exits with status 1. Here the first is held between
 * its look at the stale socket and its unlink while the second starts. */
Test(daemon, two_brokers_starting_at_once_on_a_stale_socket_do_not_both_listen)
{
    static struct bbt_broker second;
    char path[64], mark[80];
    bbt_unique_path(path, sizeof path, ".sock");
    make_stale_socket(path);
    start_held(&B, path, "unlink", mark, sizeof mark);
    int rc = bbt_broker_start_at(&second, path, NULL, NULL);
    unlink(mark);
    bb_client *c;
    cr_assert_eq(bbt_connect(&B, &c), 0, "nobody listens on %s", path);
    bb_disconnect(c);
    cr_assert_neq(rc, 0, "both brokers started: the first removed the second's socket");
    cr_assert(WIFEXITED(second.exit_status) && WEXITSTATUS(second.exit_status) == 1,
              "status %#x", second.exit_status);
}


/* The same in the moment between the stopping broker's look at the path
 * (its own socket, listening no more) and its unlink: a broker that starts
 * then finds that socket stale and binds its own, which the unlink would
 * remove. The stopping broker removes the file under the path's lock, so
 * the new one either waits for nothing (it exits 1: another broker is taking
 * the path) or keeps its socket. Here the first is held in that unlink while
 * the second starts. */
Test(daemon, a_broker_starting_while_another_removes_its_socket_keeps_its_own)
{
    static struct bbt_broker next;
    char path[64], mark[80];
    bbt_unique_path(path, sizeof path, ".sock");
    /* No stale socket there: the broker's first unlink of the path is the
     * one at its stop. */
    start_shimmed(&B, path, "unlink", mark, sizeof mark);
    int fd = -1;
    for (int i = 0; i < 1000 && (fd = bbt_raw_connect(path)) < 0; i++)
        bbt_msleep(10);
    cr_assert_geq(fd, 0, "the broker never listened on %s", path);
    close(fd);
    cr_assert_eq(kill(B.pid, SIGTERM), 0);
    wait_held(mark, "unlink");
    /* Its start may look successful either way: the stopping broker's
     * listening socket answers until its io_uring lets go of it. */
    int rc = bbt_broker_start_at(&next, path, NULL, NULL);
    unlink(mark);
    int ws = bbt_broker_wait(&B, 10000);
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %#x", ws);
    if (rc != 0) {
        cr_assert(WIFEXITED(next.exit_status) && WEXITSTATUS(next.exit_status) == 1,
                  "status %#x", next.exit_status);
        return;
    }
    /* Now only the second can answer: it exits 1, or it is reachable. */
    for (int i = 0; i < 1000; i++) {
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)next.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid) {
            ws = bbt_broker_wait(&next, 1000);
            cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "status %#x", ws);
            return;
        }
        bb_client *c;
        if (bb_connect(path, NULL, &c) == 0) {
            bb_disconnect(c);
            return;
        }
        bbt_msleep(10);
    }
    cr_assert_fail("the stopping broker removed the socket of the one that started, which runs");
}

/* ---- The service manager ---- */

/* Under systemd (Type=notify) the broker says READY=1 on $NOTIFY_SOCKET
 * once its socket listens: a unit ordered after it starts when its clients
 * can connect, not when the broker's process starts (backends may load for
 * seconds before). */
Test(daemon, readiness_is_notified_once_the_socket_listens)
{
    char path[64], env[100];
    bbt_unique_path(path, sizeof path, ".notify");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", path);
    struct bbt_start so = {.env = (const char *const[]){env, NULL}, .no_wait = true};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready = poll(&p, 1, 10000);
    char msg[256] = "";
    ssize_t n = ready == 1 ? recv(fd, msg, sizeof msg - 1, 0) : -1;
    close(fd);
    unlink(path);
    cr_assert_eq(ready, 1, "no notification within 10 s");
    cr_assert_gt(n, 0);
    msg[n] = '\0';
    cr_assert_not_null(strstr(msg, "READY=1"), "the notification: \"%s\"", msg);
    int c = bbt_raw_connect(B.sock);
    cr_assert_geq(c, 0, "READY=1 came before the socket listened");
    close(c);
}
