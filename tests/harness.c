/* Test harness: see harness.h. */
#include "harness.h"

#include "batchbroker/protocol.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BBT_MAX_BROKERS 16

/* Copies, not pointers: a test's struct may be gone when atexit runs. */
struct reg_entry {
    pid_t pid;
    char sock[108];
    char cfg[108];
    char log[108];
};
static struct reg_entry registry[BBT_MAX_BROKERS];
static pid_t registry_owner;
static unsigned path_counter;

uint64_t bbt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void bbt_msleep(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Byte i of bbt_fill(…, len, id); *s carries the generator between calls and
 * must start at fill_seed(id), with i counting up from 0. */
static uint64_t fill_seed(uint64_t id)
{
    return id * 0x9E3779B97F4A7C15ull + 1;
}

static unsigned char fill_byte(uint64_t *s, size_t i, size_t len, uint64_t id)
{
    if ((i & 7) == 0)
        *s = bbt_rand(s) | 1;
    if (len >= 8 && i < 8) {
        unsigned char idb[8];
        memcpy(idb, &id, 8); /* the identity, in host byte order */
        return idb[i];
    }
    return (unsigned char)(*s >> ((i & 7) * 8));
}

void bbt_fill(void *p, size_t len, uint64_t id)
{
    uint64_t s = fill_seed(id);
    unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        b[i] = fill_byte(&s, i, len, id);
}

bool bbt_check(const void *p, size_t len, uint64_t id)
{
    uint64_t s = fill_seed(id);
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        if (b[i] != fill_byte(&s, i, len, id))
            return false;
    return true;
}

void bbt_unique_path(char *buf, size_t len, const char *suffix)
{
    snprintf(buf, len, "/tmp/bbt-%d-%u%s", (int)getpid(), path_counter++, suffix ? suffix : "");
    /* A file left there by an earlier process of the same pid (pids wrap)
     * is stale: a test appending to it would read that one's lines too. */
    unlink(buf);
}

int bbt_write_file(char *buf, size_t len, const char *suffix, const char *text)
{
    bbt_unique_path(buf, len, suffix);
    FILE *f = fopen(buf, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

int bbt_waitpid_bounded(pid_t pid, int timeout_ms)
{
    int st = 0;
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0 && errno != EINTR)
            return -1;
        if (bbt_now_ns() >= end)
            break;
        bbt_msleep(2);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return -1;
}

static void reg_add(struct bbt_broker *b)
{
    if (registry_owner != getpid()) {
        /* A forked child inherits the registry but owns none of it. */
        memset(registry, 0, sizeof registry);
        registry_owner = getpid();
        atexit(bbt_cleanup_all);
    }
    for (int i = 0; i < BBT_MAX_BROKERS; i++)
        if (registry[i].pid == 0 && (!registry[i].sock[0] || !strcmp(registry[i].sock, b->sock))) {
            registry[i].pid = b->pid;
            memcpy(registry[i].sock, b->sock, sizeof b->sock);
            memcpy(registry[i].cfg, b->cfg, sizeof b->cfg);
            memcpy(registry[i].log, b->log, sizeof b->log);
            return;
        }
}

static void reg_forget(pid_t pid)
{
    if (registry_owner != getpid())
        return;
    for (int i = 0; i < BBT_MAX_BROKERS; i++)
        if (registry[i].pid == pid)
            registry[i].pid = 0;
}

static void reap(struct bbt_broker *b, int st)
{
    reg_forget(b->pid);
    b->pid = 0;
    b->reaped = true;
    b->exit_status = st;
}

int bbt_broker_kill(struct bbt_broker *b, int sig)
{
    if (!b || b->pid <= 0)
        return -1;
    kill(b->pid, sig);
    int st = bbt_waitpid_bounded(b->pid, 10000);
    reap(b, st);
    return st;
}

int bbt_broker_wait(struct bbt_broker *b, int timeout_ms)
{
    if (!b || b->pid <= 0)
        return -1;
    int st = bbt_waitpid_bounded(b->pid, timeout_ms);
    reap(b, st);
    return st;
}

int bbt_broker_stop(struct bbt_broker *b)
{
    int st = -1;
    if (b && b->pid > 0)
        st = bbt_broker_kill(b, SIGTERM);
    if (b) {
        if (b->sock[0])
            unlink(b->sock);
        if (b->cfg[0]) {
            unlink(b->cfg);
            b->cfg[0] = '\0';
        }
        if (b->log[0]) {
            unlink(b->log);
            b->log[0] = '\0';
        }
    }
    return st;
}

void bbt_cleanup_all(void)
{
    if (registry_owner != getpid())
        return;
    for (int i = 0; i < BBT_MAX_BROKERS; i++) {
        struct reg_entry *e = &registry[i];
        if (e->pid > 0) {
            kill(e->pid, SIGTERM);
            bbt_waitpid_bounded(e->pid, 5000);
            e->pid = 0;
        }
        if (e->sock[0])
            unlink(e->sock);
        if (e->cfg[0])
            unlink(e->cfg);
        if (e->log[0])
            unlink(e->log);
        e->sock[0] = e->cfg[0] = e->log[0] = '\0';
    }
}

int bbt_connect(const struct bbt_broker *b, bb_client **out)
{
    int rc = BB_ENOBROKER;
    for (int i = 0; i < 500; i++) {
        rc = bb_connect(b->sock, NULL, out);
        if (rc != BB_ENOBROKER && rc != BB_EDISCONNECTED)
            return rc;
        bbt_msleep(10);
    }
    return rc;
}

const char *bbt_broker_bin(void)
{
    const char *e = getenv("BBT_BROKER_BIN");
    return e && e[0] ? e : BB_BROKER_BIN;
}

const char *bbt_plugin_dir(void)
{
    const char *e = getenv("BBT_PLUGIN_DIR");
    return e && e[0] ? e : BB_PLUGIN_DIR;
}

static int spawn(struct bbt_broker *b, const struct bbt_start *o)
{
    const char *const *overrides = o->overrides;
    const char *argv[BBT_MAX_ARGS];
    int n = 0;
    static char plugin_arg[300];
    snprintf(plugin_arg, sizeof plugin_arg, "broker.plugin_dir=%s", bbt_plugin_dir());
    argv[n++] = bbt_broker_bin();
    if (b->cfg[0]) {
        argv[n++] = "--config";
        argv[n++] = b->cfg;
    }
    if (!o->no_socket_arg) {
        argv[n++] = "-s";
        argv[n++] = b->sock;
    }
    argv[n++] = "-o";
    argv[n++] = "broker.log_level=warn";
    argv[n++] = "-o";
    argv[n++] = plugin_arg;
    /* A ctest variant runs a whole suite with other broker settings (several
     * workers, the eventfd doorbell): $BBT_BROKER_OVERRIDES, space-separated,
     * before the test's own overrides, which win. */
    static char env_buf[512];
    const char *env = getenv("BBT_BROKER_OVERRIDES");
    snprintf(env_buf, sizeof env_buf, "%s", env ? env : "");
    for (char *save = NULL, *tok = strtok_r(env_buf, " ", &save); tok && n < BBT_MAX_ARGS - 3;
         tok = strtok_r(NULL, " ", &save)) {
        argv[n++] = "-o";
        argv[n++] = tok;
    }
    for (int i = 0; overrides && overrides[i] && n < BBT_MAX_ARGS - 3; i++) {
        argv[n++] = "-o";
        argv[n++] = overrides[i];
    }
    argv[n] = NULL;
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (b->log[0]) {
            int fd = open(b->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd < 0 || dup2(fd, 2) < 0)
                _exit(127);
        }
        for (int i = 0; o->env && o->env[i]; i++)
            putenv((char *)o->env[i]);
        if (o->uid && (setgroups(0, NULL) < 0 || setgid(o->uid) < 0 || setuid(o->uid) < 0))
            _exit(126);
        /* setuid clears it: a broker outliving a crashed test is a leak. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    b->pid = pid;
    b->reaped = false;
    reg_add(b);
    return 0;
}

static int start(struct bbt_broker *b, const struct bbt_start *o)
{
    if (o->config_text && bbt_write_file(b->cfg, sizeof b->cfg, ".ini", o->config_text) < 0)
        return -1;
    if (o->log)
        bbt_unique_path(b->log, sizeof b->log, ".log");
    /* No unlink here: a stale socket file left by a killed broker is the
     * broker's to replace (tests rely on that). */
    if (spawn(b, o) < 0)
        return -1;
    if (o->no_wait)
        return 0;
    uint64_t end = bbt_now_ns() + 10000000000ull;
    while (bbt_now_ns() < end) {
        int st;
        pid_t r = waitpid(b->pid, &st, WNOHANG);
        if (r == b->pid) {
            reap(b, st);
            return -1;
        }
        bb_client *c;
        int rc = bb_connect(b->sock, NULL, &c);
        if (rc == 0) {
            bb_disconnect(c);
            return 0;
        }
        if (rc != BB_ENOBROKER && rc != BB_EDISCONNECTED)
            return 0; /* it answers (e.g. BB_EPERM): it is up */
        bbt_msleep(5);
    }
    return -1;
}

int bbt_broker_start_at(struct bbt_broker *b, const char *sock, const char *config_text,
                        const char *const *overrides)
{
    memset(b, 0, sizeof *b);
    snprintf(b->sock, sizeof b->sock, "%s", sock);
    struct bbt_start o = {.config_text = config_text, .overrides = overrides};
    return start(b, &o);
}

int bbt_broker_start(struct bbt_broker *b, const char *config_text, const char *const *overrides)
{
    char sock[108];
    bbt_unique_path(sock, sizeof sock, ".sock");
    return bbt_broker_start_at(b, sock, config_text, overrides);
}

int bbt_broker_start_ex(struct bbt_broker *b, const struct bbt_start *o)
{
    char sock[108];
    if (o->no_socket_arg)
        snprintf(sock, sizeof sock, "%s", b->sock);
    else if (o->sock)
        snprintf(sock, sizeof sock, "%s", o->sock);
    else
        bbt_unique_path(sock, sizeof sock, ".sock");
    memset(b, 0, sizeof *b);
    snprintf(b->sock, sizeof b->sock, "%s", sock);
    return start(b, o);
}

int bbt_log_count(const struct bbt_broker *b, const char *needle)
{
    FILE *f = b->log[0] ? fopen(b->log, "r") : NULL;
    if (!f)
        return 0;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

int bbt_log_wait(const struct bbt_broker *b, const char *needle, int n, int timeout_ms)
{
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int got = bbt_log_count(b, needle);
    while (got < n && bbt_now_ns() < end) {
        bbt_msleep(5);
        got = bbt_log_count(b, needle);
    }
    return got;
}

/* Read what is there without blocking; returns false on EOF. */
static bool drain_fd(int fd, char *buf, size_t cap, size_t *used)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n == 0)
            return false;
        if (n < 0)
            return !(errno != EAGAIN && errno != EINTR);
        if (buf && cap > 1) {
            size_t room = cap - 1 - *used;
            size_t k = (size_t)n < room ? (size_t)n : room;
            memcpy(buf + *used, tmp, k);
            *used += k;
            buf[*used] = '\0';
        }
    }
}

int bbt_run(const char *const *argv, char *out, size_t outlen, char *err, size_t errlen,
            int timeout_ms)
{
    int po[2], pe[2];
    if (out && outlen)
        out[0] = '\0';
    if (err && errlen)
        err[0] = '\0';
    if (pipe2(po, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    size_t ou = 0, eu = 0;
    bool oopen = true, eopen = true;
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while ((oopen || eopen) && bbt_now_ns() < end) {
        struct pollfd p[2] = {{.fd = oopen ? po[0] : -1, .events = POLLIN},
                              {.fd = eopen ? pe[0] : -1, .events = POLLIN}};
        poll(p, 2, 50);
        if (oopen && p[0].revents)
            oopen = drain_fd(po[0], out, outlen, &ou);
        if (eopen && p[1].revents)
            eopen = drain_fd(pe[0], err, errlen, &eu);
    }
    close(po[0]);
    close(pe[0]);
    uint64_t now = bbt_now_ns();
    int left = now < end ? (int)((end - now) / 1000000ull) : 0;
    return bbt_waitpid_bounded(pid, left + 100);
}

int bbt_raw_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int bbt_raw_hello(int fd, uint32_t flags, uint32_t max_inflight)
{
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .max_inflight = max_inflight,
                                 .flags = flags};
    ssize_t n = send(fd, &hello, sizeof hello, MSG_NOSIGNAL);
    (void)n; /* a refusal may already have closed the socket: read its reply */
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct bb_msg_hello_reply rep;
    char cbuf[CMSG_SPACE(3 * sizeof(int))];
    struct iovec iov = {.iov_base = &rep, .iov_len = sizeof rep};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    int resets = 0;
    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    /* A refusal that raced our HELLO reads as a reset first, then the reply. */
    while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n > 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int fds[3];
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(cm), (k > 3 ? 3 : k) * sizeof(int));
            for (size_t i = 0; i < k && i < 3; i++)
                close(fds[i]);
        }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return BB_ETIMEDOUT;
    if (n < (ssize_t)sizeof rep.h)
        return BB_EDISCONNECTED;
    return rep.h.status;
}

bool bbt_dropped(int fd, int timeout_ms)
{
    uint64_t end = bbt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    char buf[512];
    for (;;) {
        uint64_t now = bbt_now_ns();
        if (now >= end)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)((end - now) / 1000000ull) + 1) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return true;
    }
}

unsigned bbt_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    unsigned port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int bbt_http(const char *src, unsigned port, const char *method, const char *path, char *buf,
             size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (src) {
        struct sockaddr_in s = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &s.sin_addr);
        bind(fd, (struct sockaddr *)&s, sizeof s);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", method,
                     path);
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < cap - 1) {
        ssize_t r = recv(fd, buf + got, cap - 1 - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    int status;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    return status;
}
