/* bbctl: operator view of a running broker (stats, top, health, tuning, pins).
 * It speaks the control protocol as an operator session: no segment. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "batchbroker/protocol.h"
#include "batchbroker/version.h"
#include "fetch.h"
#include "profile.h"

/* A failed send or recv: the 5 s of SO_SNDTIMEO / SO_RCVTIMEO ran out (a
 * stopped or hung broker), or the broker went away. */
static int io_error(ssize_t n)
{
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? BB_ETIMEDOUT : BB_EDISCONNECTED;
}

/* One request and its reply of `type`, cap bytes long (a newer broker's
 * longer reply is truncated to it; a shorter one, an older broker's, is not
 * understood: BB_EPROTO, as protocol.md says). Returns the reply's status. */
static int roundtrip(int fd, const void *req, size_t len, uint32_t type, void *rep, size_t cap)
{
    ssize_t n = send(fd, req, len, MSG_NOSIGNAL);
    if (n != (ssize_t)len)
        return io_error(n);
    n = recv(fd, rep, cap, 0);
    if (n <= 0)
        return io_error(n);
    const struct bb_msg_hdr *h = rep;
    if ((size_t)n < sizeof *h || h->type != type)
        return BB_EPROTO;
    if (h->status < 0)
        return h->status;
    return (size_t)n == cap ? 0 : BB_EPROTO;
}

static int connect_operator(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return BB_EINVAL;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return BB_ESYS;
    /* A stopped or hung broker must not hang a health probe: 5 s per step. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int err = errno;
        close(fd);
        return err == ENOENT || err == ECONNREFUSED ? BB_ENOBROKER
               : err == EAGAIN                     ? BB_ETIMEDOUT
                                                   : BB_ESYS;
    }
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .flags = BB_HELLO_OPERATOR};
    struct bb_msg_hello_reply rep;
    /* A broker that refuses us (credentials, max_clients) replies at once
     * and closes, so the send may fail while the reply waits to be read. */
    ssize_t sent = send(fd, &hello, sizeof hello, MSG_NOSIGNAL);
    (void)sent;
    ssize_t n;
    int resets = 0;
    do
        n = recv(fd, &rep, sizeof rep, 0);
    while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
    int rc = n <= 0 ? io_error(n)
             : (size_t)n < sizeof rep.h || rep.h.type != BB_MSG_HELLO_REPLY ? BB_EPROTO
                                                                            : rep.h.status;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Ask for every model's statistics (ids 0, 1, ... until BB_ENOMODEL); row()
 * gets each with arg. Returns the number of models or a BB_E* code. */
static int walk_models(int fd, void (*row)(const struct bb_msg_stats_reply *, void *), void *arg)
{
    for (uint32_t id = 0;; id++) {
        struct bb_msg_stats req = {.h = {.type = BB_MSG_STATS}, .model_id = id};
        struct bb_msg_stats_reply rep;
        int rc = roundtrip(fd, &req, sizeof req, BB_MSG_STATS_REPLY, &rep, sizeof rep);
        if (rc == BB_ENOMODEL)
            return (int)id;
        if (rc < 0)
            return rc;
        rep.name[sizeof rep.name - 1] = '\0';
        row(&rep, arg);
    }
}

static void stats_row(const struct bb_msg_stats_reply *rep, void *arg)
{
    (void)arg;
    const struct bb_wire_stats *s = &rep->s;
    printf("%-16s %10llu %10llu %8llu %8llu %8llu %8llu %7.2f %9.0f %9.1f %9.1f %9.1f %6u\n",
           rep->name, (unsigned long long)s->submitted, (unsigned long long)s->completed,
           (unsigned long long)s->failed, (unsigned long long)s->timed_out,
           (unsigned long long)s->rejected, (unsigned long long)s->batches, s->avg_batch_size,
           s->throughput_rps, s->latency_p50_us, s->latency_p95_us, s->latency_p99_us, s->queued);
}

static void print_stats_header(void)
{
    printf("%-16s %10s %10s %8s %8s %8s %8s %7s %9s %9s %9s %9s %6s\n", "model", "submitted",
           "completed", "failed", "timeout", "rejected", "batches", "avg_bs", "rps", "p50_us",
           "p95_us", "p99_us", "queued");
}

static void tuning_row(const struct bb_msg_stats_reply *rep, void *arg)
{
    (void)arg;
    const struct bb_wire_stats *s = &rep->s;
    printf("%-16s %8s %6u %6u %7u %9.1f %9.2f %6.2f %9.1f %9.0f %9.0f %9.1f %8llu %6.2f %7u\n",
           rep->name, s->adaptive ? "on" : "off", s->batch_target, s->pinned, s->wait_us,
           s->fit_a_us, s->fit_b_us, s->fit_r2, s->best_size, s->arrival_rps, s->throughput_rps,
           s->latency_p99_us, (unsigned long long)s->slo_violations, s->score, s->changes);
}

static void print_tuning_header(void)
{
    printf("%-16s %8s %6s %6s %7s %9s %9s %6s %9s %9s %9s %9s %8s %6s %7s\n", "model",
           "adaptive", "target", "pinned", "wait_us", "fit_a_us", "fit_b_us", "r2", "best",
           "arr_rps", "rps", "p99_us", "slo_viol", "score", "changes");
}

struct find {
    const char *name;
    int found;
    uint32_t max_batch_size;
};

static void find_row(const struct bb_msg_stats_reply *rep, void *arg)
{
    struct find *f = arg;
    if (strcmp(rep->name, f->name) == 0) {
        f->found = 1;
        f->max_batch_size = rep->s.max_batch_size;
    }
}

/* target 0 releases the pin. Says what went wrong; returns the exit status. */
static int pin(int fd, const char *model, uint32_t target)
{
    struct bb_msg_pin req = {.h = {.type = BB_MSG_PIN}, .target = target};
    struct find f = {.name = model};
    int rc = walk_models(fd, find_row, &f);
    if (rc >= 0 && !f.found) {
        fprintf(stderr, "bbctl: no model '%s' (bbctl stats lists them)\n", model);
        return 1;
    }
    if (rc >= 0 && target > f.max_batch_size) {
        fprintf(stderr, "bbctl: pin %s %u: over the model's max_batch_size (%u)\n", model,
                target, f.max_batch_size);
        return 1;
    }
    if (rc >= 0) {
        strcpy(req.name, model); /* fits: the broker's name did */
        struct bb_msg_hdr rep;
        rc = roundtrip(fd, &req, sizeof req, BB_MSG_PIN_REPLY, &rep, sizeof rep);
    }
    if (rc < 0) {
        fprintf(stderr, "bbctl: %s %s: %s (%s)\n", target ? "pin" : "unpin", model,
                bb_strerror(rc), bb_errname(rc));
        return 1;
    }
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bbctl [--socket PATH] COMMAND\n"
                 "  stats               one table of every model's figures\n"
                 "  top [INTERVAL_S]    the table again every INTERVAL_S seconds (default 1)\n"
                 "  health              every model's line, then ok; exit 0 if the broker\n"
                 "                      answers, 1 otherwise\n"
                 "  tuning              adaptive batch sizing state of every model\n"
                 "  pin MODEL TARGET    fix a model's batch target (1..max_batch_size)\n"
                 "  unpin MODEL         give the batch target back to the configuration\n"
                 "  metrics             the Prometheus page the metrics endpoint serves\n"
                 "  profile --html FILE [--seconds N] [--model NAME]\n"
                 "                      sample N seconds (default 10; Ctrl-C ends early) and\n"
                 "                      write a self-contained HTML report\n"
                 "options:\n"
                 "  -s, --socket PATH   broker socket (default $BATCHBROKER_SOCKET, else the\n"
                 "                      broker's default: $XDG_RUNTIME_DIR/batchbroker.sock,\n"
                 "                      /run/batchbroker/batchbroker.sock as root,\n"
                 "                      /tmp/batchbroker-UID/batchbroker.sock otherwise)\n"
                 "  -h, --help          this text\n"
                 "      --version       bbctl's version\n"
                 "Exit status: 0 success, 1 the broker did not answer or refused, 2 usage error.\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "bbctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'bbctl --help' for the commands.\n");
    return 2;
}

/* A decimal in lo..hi and nothing else. */
static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *s == '-' || *s == '+' || *end || errno || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

enum cmd { CMD_STATS, CMD_TOP, CMD_HEALTH, CMD_TUNING, CMD_PIN, CMD_UNPIN, CMD_METRICS,
           CMD_PROFILE };

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    static char def[108];
    const char *path = bb_default_socket(def, sizeof def) >= 0 ? def : "";
    int ch;
    /* "+": stop at the command, whose own options (profile --html) follow it. */
    while ((ch = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        if (ch == 's') {
            path = optarg;
        } else if (ch == 'h') {
            usage(stdout);
            return 0;
        } else if (ch == 'V') {
            printf("bbctl %s (protocol %u.%u)\n", BB_VERSION_STRING, BB_ABI_MAJOR, BB_ABI_MINOR);
            return 0;
        } else {
            fprintf(stderr, "Try 'bbctl --help' for the commands.\n");
            return 2;
        }
    }
    /* Every usage error is found before the broker is asked anything. */
    if (optind >= argc)
        return usage_error("%s", "no command");
    static const struct {
        const char *name;
        int min_args, max_args;
    } cmds[] = {[CMD_STATS] = {"stats", 0, 0}, [CMD_TOP] = {"top", 0, 1},
                [CMD_HEALTH] = {"health", 0, 0}, [CMD_TUNING] = {"tuning", 0, 0},
                [CMD_PIN] = {"pin", 2, 2},       [CMD_UNPIN] = {"unpin", 1, 1},
                [CMD_METRICS] = {"metrics", 0, 0}, [CMD_PROFILE] = {"profile", 0, 16}};
    const char *name = argv[optind];
    char *const *args = argv + optind + 1;
    int nargs = argc - optind - 1;
    int cmd = -1;
    for (int i = 0; i < (int)(sizeof cmds / sizeof cmds[0]); i++)
        if (strcmp(name, cmds[i].name) == 0)
            cmd = i;
    if (cmd < 0)
        return usage_error("unknown command '%s'", name);
    if (nargs < cmds[cmd].min_args || nargs > cmds[cmd].max_args)
        return usage_error("wrong number of arguments for '%s'", name);
    double interval = 1.0;
    uint32_t target = 0;
    if (cmd == CMD_TOP && nargs == 1) {
        char *end;
        interval = strtod(args[0], &end);
        if (end == args[0] || *end || !(interval >= 0.01 && interval <= 86400))
            return usage_error("top: '%s' is not an interval in seconds (0.01..86400)",
                               args[0]);
    }
    if ((cmd == CMD_PIN || cmd == CMD_UNPIN) && strlen(args[0]) >= BB_MAX_MODEL_NAME)
        return usage_error("'%s' is longer than a model name can be", args[0]);
    if (cmd == CMD_PIN && parse_u32(args[1], 1, UINT32_MAX, &target) < 0)
        return usage_error("pin: target '%s' is not a batch size (1..max_batch_size; "
                           "'unpin MODEL' releases a pin)", args[1]);
    struct bbctl_profile_args prof;
    if (cmd == CMD_PROFILE && bbctl_profile_args(nargs + 1, argv + optind, &prof) != 0)
        return 2;

    int fd = connect_operator(path);
    if (fd < 0) {
        fprintf(stderr, "bbctl: %s: %s (%s)\n", path, bb_strerror(fd), bb_errname(fd));
        return 1;
    }
    int rc = 0, err = 0; /* err: a walk over the models that failed */
    switch (cmd) {
    case CMD_HEALTH:
        err = walk_models(fd, stats_row, NULL);
        if (err >= 0)
            printf("ok\n");
        break;
    case CMD_STATS:
        print_stats_header();
        err = walk_models(fd, stats_row, NULL);
        break;
    case CMD_TUNING:
        print_tuning_header();
        err = walk_models(fd, tuning_row, NULL);
        break;
    case CMD_PIN:
    case CMD_UNPIN:
        rc = pin(fd, args[0], target);
        break;
    case CMD_METRICS: {
        char *page;
        size_t len;
        int r = bbctl_fetch(fd, BB_METRICS_TEXT, 0, &page, &len);
        if (r < 0)
            fprintf(stderr, "bbctl: metrics: %s\n", bb_strerror(r));
        else if (fwrite(page, 1, len, stdout) != len)
            r = BB_ESYS;
        if (r == 0)
            free(page);
        rc = r < 0;
        break;
    }
    case CMD_PROFILE:
        rc = bbctl_profile(fd, path, &prof);
        break;
    case CMD_TOP:
        for (;;) {
            printf("\033[H\033[J");
            print_stats_header();
            if (walk_models(fd, stats_row, NULL) < 0) {
                /* An interval past operator_idle_timeout_ms ends the session:
                 * open a new one, once. */
                close(fd);
                fd = connect_operator(path);
                err = fd < 0 ? fd : walk_models(fd, stats_row, NULL);
                if (err < 0)
                    break;
            }
            fflush(stdout);
            struct timespec ts = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)};
            nanosleep(&ts, NULL);
        }
        break;
    }
    if (err < 0) {
        fprintf(stderr, "bbctl: %s: %s (%s)\n", path, bb_strerror(err), bb_errname(err));
        rc = 1;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}
