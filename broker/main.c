/* batchbroker: command line, configuration, signals; the broker does the rest. */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "batchbroker/backend.h"
#include "batchbroker/protocol.h"
#include "batchbroker/version.h"
#include "broker.h"
#include "config.h"
#include "log.h"
#include "plugin.h"
#include "worker.h"

/* Lock-free atomics: safe in a signal handler, and read by every worker. */
static _Atomic int stop_requested, reload_requested;
static _Atomic int wake_fd_for_signals = -1; /* the handler runs on any thread */

/* Set a flag and wake the loop; the loop does the work. */
static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGHUP)
        reload_requested = 1;
    else
        stop_requested = 1;
    if (wake_fd_for_signals >= 0) {
        uint64_t one = 1;
        ssize_t n = write(wake_fd_for_signals, &one, sizeof one);
        (void)n;
    }
    errno = saved;
}

/* Every client holds four descriptors (socket, pidfd, doorbell, notify),
 * and may have up to about nine more of ours in flight, sent and not read
 * yet (a HELLO reply's three or four, METRICS replies under the unread
 * cap), which the kernel checks against the same limit, separately, for a
 * broker without CAP_SYS_RESOURCE: take the hard limit, and say so if
 * max_clients still cannot fit. */
static void raise_fd_limit(uint32_t max_clients)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t need = (rlim_t)max_clients * 9 + 64;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        bb_warn("open-file limit %llu is below the %llu that max_clients = %u needs; "
                "raise it (ulimit -n, LimitNOFILE=) or lower max_clients",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need, max_clients);
}

/* Tell the service manager that the broker serves: sd_notify's protocol, a
 * datagram to $NOTIFY_SOCKET ("@" for the abstract namespace). With
 * Type=notify, units ordered after the broker start once its clients can
 * connect, not when its process starts (backends may load for seconds). */
static void notify_ready(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = path ? strlen(path) : 0;
    if (!len || (path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    static const char msg[] = "READY=1";
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, msg, sizeof msg - 1, MSG_NOSIGNAL, (struct sockaddr *)&sa,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        bb_warn("cannot tell the service manager at %s that the broker is ready: %s", path,
                strerror(errno));
    if (fd >= 0)
        close(fd);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: batchbroker [--config FILE] [-o SECTION.KEY=VALUE]... [--socket PATH]\n"
            "                   [--check] [--dump-config] [--help] [--version]\n"
            "\n"
            "  -c, --config FILE   INI configuration (default: serve model 'echo')\n"
            "  -o SECTION.KEY=V    override one key, e.g. -o broker.spin_us=0 or\n"
            "                      -o model.echo.max_batch_size=64\n"
            "  -s, --socket PATH   same as -o broker.socket=PATH\n"
            "      --check         validate the configuration and exit\n"
            "      --dump-config   print the effective configuration and exit\n"
            "      --config-reference[=man]  print the key table as markdown\n"
            "                      (docs/configuration.md) or roff (batchbroker.ini(5))\n"
            "\n"
            "Exit status: 0 clean shutdown, 1 runtime failure, 2 bad configuration.\n"
            "\n");
    bb__config_help(out, BB__HELP_TEXT);
    fprintf(out, "\n");
    bb__plugin_list(out, NULL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"socket", required_argument, NULL, 's'},
        {"check", no_argument, NULL, 'C'},       {"dump-config", no_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},        {"version", no_argument, NULL, 'V'},
        {"config-reference", optional_argument, NULL, 'R'},
        {NULL, 0, NULL, 0}};
    /* The broker maps every client's segment: no process of its own user may
     * read them through /proc/PID/mem or ptrace, and no core file may hold
     * them (docs/operations.md). First thing, before any segment exists. */
    prctl(PR_SET_DUMPABLE, 0);
    static struct bb__broker_config cfg;
    const char *config_path = NULL;
    static const char *overrides[64];
    int noverrides = 0;
    bool check = false, dump = false;
    char err[1024];
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:o:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 's':
        case 'o':
            if (noverrides == 64) {
                fprintf(stderr, "batchbroker: too many overrides\n");
                return 2;
            }
            if (ch == 's') {
                static char buf[256];
                snprintf(buf, sizeof buf, "broker.socket=%s", optarg);
                overrides[noverrides++] = buf;
            } else {
                overrides[noverrides++] = optarg;
            }
            break;
        case 'C':
            check = true;
            break;
        case 'D':
            dump = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'R': /* docs/configuration.md, batchbroker.ini(5) */
            if (bb__config_reference(stdout, optarg) < 0) {
                fprintf(stderr, "batchbroker: --config-reference=%s: use markdown or man\n",
                        optarg);
                return 2;
            }
            return 0;
        case 'V':
            printf("batchbroker %s (protocol %u.%u, backend ABI %u)\n", BB_VERSION_STRING,
                   BB_ABI_MAJOR, BB_ABI_MINOR, BB_BACKEND_ABI_VERSION);
            return 0;
        default: /* getopt has said what is wrong */
            fprintf(stderr, "Try 'batchbroker --help' for the options and configuration keys.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "batchbroker: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (bb__config_build(&cfg, config_path, overrides, noverrides, err, sizeof err) < 0) {
        fprintf(stderr, "batchbroker: %s\n", err);
        return 2;
    }
    if (dump) {
        bb__config_dump(&cfg, stdout);
        return 0;
    }
    bb__log_level = cfg.log_level;
    raise_fd_limit(cfg.max_clients);

    /* Signals from the start: a SIGTERM or SIGHUP while backends load must
     * neither kill us half-initialised nor be lost. */
    struct sigaction sa = {.sa_handler = SIG_IGN};
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* reload the reloadable keys */

    static struct bb__broker b;
    /* --check loads every backend and strategy but does not take the socket. */
    int rc = bb__broker_init(&b, &cfg, &stop_requested, !check);
    if (rc == 0 && check) {
        printf("configuration OK: %zu model(s)\n", cfg.nmodels);
        bb__broker_fini(&b);
        return 0;
    }
    if (rc < 0) {
        bb__broker_fini(&b);
        /* A backend or strategy that refuses the configuration: 2; no
         * socket, io_uring or memory: 1. */
        return rc == -2 ? 2 : 1;
    }
    wake_fd_for_signals = b.workers[0].wake_fd;
    b.reload_flag = &reload_requested;
    b.config_path = config_path;
    b.overrides = overrides;
    b.noverrides = noverrides;
    bb_info("listening on %s (pid %d)", cfg.socket_path, (int)getpid());
    notify_ready();
    rc = bb__broker_run(&b);
    wake_fd_for_signals = -1;
    bb__broker_fini(&b);
    bb_info("stopped");
    return rc < 0 ? 1 : 0;
}
