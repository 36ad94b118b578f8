/* bbctl: operator view of a running broker (stats, top, health). It speaks the
 * control protocol as an operator session: no segment, statistics only. */
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
#include "fetch.h"
#include "profile.h"

static int roundtrip(int fd, const void *req, size_t len, void *rep, size_t cap)
{
    if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len)
        return BB_EDISCONNECTED;
    ssize_t n = recv(fd, rep, cap, 0);
    if (n <= 0)
        return BB_EDISCONNECTED;
    const struct bb_msg_hdr *h = rep;
    if ((size_t)n < sizeof *h)
        return BB_EPROTO;
    return h->status;
}

static int connect_operator(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return BB_EINVAL;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    /* A stopped or hung broker must not hang a health probe: 5 s per step. */
    struct timeval tv = {.tv_sec = 5};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return BB_EDISCONNECTED;
    }
    struct bb_msg_hello hello = {.h = {.type = BB_MSG_HELLO}, .magic = BB_SHM_MAGIC,
                                 .version = BB_SHM_VERSION, .flags = BB_HELLO_OPERATOR};
    struct bb_msg_hello_reply rep;
    int rc = roundtrip(fd, &hello, sizeof hello, &rep, sizeof rep);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Ask for every model's statistics (ids 0, 1, ... until BB_ENOMODEL). */
static int walk_models(int fd, void (*row)(const struct bb_msg_stats_reply *))
{
    for (uint32_t id = 0;; id++) {
        struct bb_msg_stats req = {.h = {.type = BB_MSG_STATS}, .model_id = id};
        struct bb_msg_stats_reply rep;
        int rc = roundtrip(fd, &req, sizeof req, &rep, sizeof rep);
        if (rc == BB_ENOMODEL)
            return 0;
        if (rc < 0)
            return rc;
        row(&rep);
    }
}

static void stats_row(const struct bb_msg_stats_reply *rep)
{
    const struct bb_wire_stats *s = &rep->s;
    printf("%-16s %10llu %10llu %8llu %8llu %8llu %8llu %7.2f %9.0f %9.1f %9.1f %9.1f %6u\n",
           rep->name, (unsigned long long)s->submitted, (unsigned long long)s->completed,
           (unsigned long long)s->failed, (unsigned long long)s->timed_out,
           (unsigned long long)s->rejected, (unsigned long long)s->batches, s->avg_batch_size,
           s->throughput_rps, s->latency_p50_us, s->latency_p95_us, s->latency_p99_us, s->queued);
}

static void silent_row(const struct bb_msg_stats_reply *rep)
{
    (void)rep;
}

static int print_stats(int fd, int header)
{
    if (!header)
        return walk_models(fd, silent_row);
    printf("%-16s %10s %10s %8s %8s %8s %8s %7s %9s %9s %9s %9s %6s\n", "model", "submitted",
           "completed", "failed", "timeout", "rejected", "batches", "avg_bs", "rps", "p50_us",
           "p95_us", "p99_us", "queued");
    return walk_models(fd, stats_row);
}

static void tuning_row(const struct bb_msg_stats_reply *rep)
{
    const struct bb_wire_stats *s = &rep->s;
    printf("%-16s %8s %6u %6u %7u %9.1f %9.2f %6.2f %9.1f %9.0f %6.2f %7u\n", rep->name,
           s->adaptive ? "on" : "off", s->batch_target, s->pinned, s->wait_us, s->fit_a_us,
           s->fit_b_us, s->fit_r2, s->best_size, s->arrival_rps, s->score, s->changes);
}

static int print_tuning(int fd)
{
    printf("%-16s %8s %6s %6s %7s %9s %9s %6s %9s %9s %6s %7s\n", "model", "adaptive", "target",
           "pinned", "wait_us", "fit_a_us", "fit_b_us", "r2", "best", "arr_rps", "score", "changes");
    return walk_models(fd, tuning_row);
}

static int pin(int fd, const char *model, const char *target)
{
    struct bb_msg_pin req = {.h = {.type = BB_MSG_PIN}};
    char *end;
    unsigned long t = strtoul(target, &end, 10);
    if (strlen(model) >= sizeof req.name || *end || end == target || t > UINT32_MAX)
        return BB_EINVAL;
    strcpy(req.name, model);
    req.target = (uint32_t)t;
    struct bb_msg_hdr rep;
    return roundtrip(fd, &req, sizeof req, &rep, sizeof rep);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bbctl [--socket PATH] COMMAND\n"
                 "  stats               one table of every model's figures\n"
                 "  top [INTERVAL_S]    the table again every INTERVAL_S seconds (default 1)\n"
                 "  health              exit 0 if the broker answers, 1 otherwise\n"
                 "  tuning              adaptive batch sizing state of every model\n"
                 "  pin MODEL TARGET    fix a model's batch target (1..max_batch_size)\n"
                 "  unpin MODEL         give the batch target back to the configuration\n"
                 "  metrics             the Prometheus page the metrics endpoint serves\n"
                 "  profile --html FILE [--seconds N] [--model NAME]\n"
                 "                      sample N seconds (default 10; Ctrl-C ends early) and\n"
                 "                      write a self-contained HTML report\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    static char def[108];
    const char *path = bb_default_socket(def, sizeof def) >= 0 ? def : "";
    int ch;
    /* "+": stop at the command, whose own options (profile --html) follow it. */
    while ((ch = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        if (ch == 's')
            path = optarg;
        else {
            usage(ch == 'h' ? stdout : stderr);
            return ch == 'h' ? 0 : 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    int fd = connect_operator(path);
    if (fd < 0) {
        fprintf(stderr, "bbctl: %s: %s\n", path, bb_strerror(fd));
        return 1;
    }
    int rc = 0;
    if (strcmp(cmd, "health") == 0) {
        rc = print_stats(fd, 0) < 0;
        if (!rc)
            printf("ok\n");
    } else if (strcmp(cmd, "tuning") == 0) {
        rc = print_tuning(fd) < 0;
    } else if ((strcmp(cmd, "pin") == 0 && optind + 2 < argc) ||
               (strcmp(cmd, "unpin") == 0 && optind + 1 < argc)) {
        int r = pin(fd, argv[optind + 1], cmd[0] == 'p' ? argv[optind + 2] : "0");
        if (r < 0)
            fprintf(stderr, "bbctl: %s: %s\n", cmd, bb_strerror(r));
        rc = r < 0;
    } else if (strcmp(cmd, "metrics") == 0 && optind + 1 == argc) {
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
    } else if (strcmp(cmd, "profile") == 0) {
        rc = bbctl_profile(fd, path, argc - optind, argv + optind);
    } else if (strcmp(cmd, "stats") == 0) {
        rc = print_stats(fd, 1) < 0;
    } else if (strcmp(cmd, "top") == 0) {
        double interval = optind + 1 < argc ? atof(argv[optind + 1]) : 1.0;
        if (interval <= 0)
            interval = 1.0;
        for (;;) {
            printf("\033[H\033[J");
            if (print_stats(fd, 1) < 0) {
                /* An interval past operator_idle_timeout_ms ends the session:
                 * open a new one, once. */
                close(fd);
                fd = connect_operator(path);
                if (fd < 0 || print_stats(fd, 1) < 0) {
                    rc = 1;
                    break;
                }
            }
            fflush(stdout);
            struct timespec ts = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)};
            nanosleep(&ts, NULL);
        }
    } else {
        usage(stderr);
        rc = 2;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}
