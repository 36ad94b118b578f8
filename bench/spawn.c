/* Starting and stopping the broker the bench measures, and finding the pid of
 * one it did not start (for its CPU time). */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

#define SPAWN_TIMEOUT_NS 10000000000ull
#define STOP_TIMEOUT_NS 5000000000ull

/* Connect to the socket; the peer's pid (SO_PEERCRED) or -1. The broker sees a
 * client that hangs up before attaching, which it must tolerate anyway. */
pid_t bench_socket_peer(const char *socket_path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof a.sun_path) return -1;
    strcpy(a.sun_path, socket_path);
    /* The broker listens on SOCK_SEQPACKET; try stream too, in case it changes. */
    static const int types[] = {SOCK_SEQPACKET, SOCK_STREAM};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        int fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        pid_t pid = -1;
        int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
        int err = errno;
        if (rc == 0) {
            struct ucred cr;
            socklen_t len = sizeof cr;
            if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0) pid = cr.pid;
        }
        close(fd);
        if (rc == 0 || err != EPROTOTYPE) return pid;
    }
    return -1;
}

/* The spawned broker's stdout and stderr: a memfd, so that no log file is
 * left behind; shown only when the broker fails to start. */
static int broker_log_fd = -1;

static void show_broker_log(void)
{
    if (broker_log_fd < 0) return;
    off_t end = lseek(broker_log_fd, 0, SEEK_END);
    off_t from = end > 8192 ? end - 8192 : 0;
    char buf[8193];
    ssize_t n = pread(broker_log_fd, buf, sizeof buf - 1, from);
    if (n <= 0) return;
    buf[n] = '\0';
    fprintf(stderr, "bb-bench: broker output%s:\n%s", from ? " (last 8 KiB)" : "", buf);
}

static void close_broker_log(void)
{
    if (broker_log_fd >= 0) close(broker_log_fd);
    broker_log_fd = -1;
}

int bench_spawn_broker(const struct bench_opts *o, const char *socket_path, pid_t *out)
{
    if (bench_socket_peer(socket_path) > 0) {
        fprintf(stderr, "bb-bench: a broker already listens on %s\n", socket_path);
        return -1;
    }
    close_broker_log();
    broker_log_fd = memfd_create("bb-bench-broker-log", MFD_CLOEXEC);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (broker_log_fd >= 0) {
            dup2(broker_log_fd, 1);
            dup2(broker_log_fd, 2);
        }
        if (o->nserver_cpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int i = 0; i < o->nserver_cpus; i++) CPU_SET(o->server_cpus[i], &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        const char *argv[4 + 2 * BENCH_MAX_BROKER_OPTS + 1];
        int n = 0;
        argv[n++] = o->broker_bin;
        argv[n++] = "--config";
        argv[n++] = o->config;
        for (int i = 0; i < o->nbroker_opts; i++) {
            argv[n++] = "-o";
            argv[n++] = o->broker_opts[i];
        }
        argv[n] = NULL;
        execv(o->broker_bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", o->broker_bin, strerror(errno));
        _exit(127);
    }
    uint64_t give_up = bench_now_ns() + SPAWN_TIMEOUT_NS;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "bb-bench: the broker exited at start-up\n");
            show_broker_log();
            close_broker_log();
            return -1;
        }
        if (bench_socket_peer(socket_path) == pid) break;
        if (bench_now_ns() > give_up) {
            fprintf(stderr, "bb-bench: the broker does not listen on %s\n", socket_path);
            show_broker_log();
            bench_stop_process(pid); /* closes the log */
            return -1;
        }
        usleep(10000);
    }
    *out = pid;
    return 0;
}

/* SIGTERM, then SIGKILL if it does not exit in time. */
void bench_stop_process(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    uint64_t give_up = bench_now_ns() + STOP_TIMEOUT_NS;
    int st;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (bench_now_ns() > give_up) {
            fprintf(stderr, "bb-bench: pid %d ignores SIGTERM; killing it\n", (int)pid);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return;
        }
        usleep(5000);
    }
    close_broker_log();
}
