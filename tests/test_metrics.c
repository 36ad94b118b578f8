/* Observability (issue 9): the /metrics endpoint under load (promtool finds
 * no error and no lint problem; a real Prometheus server scrapes it and
 * answers a rate), how it fails (a bad address exits 2, a busy port 1, a
 * thousand connections that never read are dropped while the broker keeps
 * serving), bb_model_stats' new figures (phases that add up to the latency,
 * batch sizes, cancels apart from failures), and bbctl metrics / profile (the
 * report's numbers against bb_model_stats over the same window).
 *
 * promtool and prometheus come from Debian's prometheus package
 * (scripts/deps.sh installs it); a test that needs one skips, saying so, when
 * it is missing. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#ifndef BBCTL_BIN
#define BBCTL_BIN "bbctl"
#endif

static struct bbt_broker B;

TestSuite(metrics, .fini = bbt_cleanup_all, .timeout = 180);

/* ---- helpers ---- */

/* The full path of a program on $PATH, or false. */
static bool find_tool(const char *name, char *path, size_t len)
{
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", env ? env : "/usr/bin:/bin");
    for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, len, "%s/%s", d, name);
        if (access(path, X_OK) == 0)
            return true;
    }
    return false;
}

static char page[1 << 20];

static unsigned free_port_ok(void)
{
    unsigned port = bbt_free_port();
    cr_assert(port, "no free port");
    return port;
}

/* The body of GET /metrics; asserts a 200 with the exposition format. */
static const char *scrape(unsigned port)
{
    int st = bbt_http(NULL, port, "GET", "/metrics", page, sizeof page);
    cr_assert_eq(st, 200, "GET /metrics: %d", st);
    cr_assert(strstr(page, "Content-Type: text/plain; version=0.0.4"), "content type: %.300s",
              page);
    char *body = strstr(page, "\r\n\r\n");
    cr_assert(body);
    return body + 4;
}

/* The value of the sample whose name and labels are exactly series. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    cr_assert_fail("no sample %s", series);
    return 0;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* promtool check metrics < file: no error and no lint finding. */
static void promtool_clean(const char *promtool, const char *text)
{
    char file[108], cmd[512], out[8192], err[8192];
    bbt_unique_path(file, sizeof file, ".prom");
    cr_assert_eq(write_text(file, text), 0);
    snprintf(cmd, sizeof cmd, "'%s' check metrics < '%s'", promtool, file);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int st = bbt_run(argv, out, sizeof out, err, sizeof err, 30000);
    unlink(file);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool exit %#x:\n%s%s", st, out, err);
    cr_assert(!out[0] && !err[0], "promtool findings:\n%s%s", out, err);
}

/* Threads that keep `inflight` requests of one priority in flight until
 * stopped (or `limit` completed, if set). */
struct load {
    bb_model *m;
    int prio, inflight;
    uint64_t limit;
    atomic_bool stop;
    atomic_uint_fast64_t done;
    int first_error;
    pthread_t th;
};

static void *load_main(void *arg)
{
    struct load *l = arg;
    bb_request *r[64];
    bool pending[64] = {false};
    struct bb_submit_opts so = {.priority = l->prio};
    int n = l->inflight, busy = 0;
    uint64_t id = (uint64_t)l->prio << 32, sent = 0;
    for (int i = 0; i < n; i++)
        if (bb_request_new(l->m, 64, 64, &r[i]) < 0) {
            l->first_error = BB_ENOMEM;
            return NULL;
        }
    for (int i = 0;; i = (i + 1) % n) {
        if (pending[i]) {
            if (bb_wait(r[i], 10000000000ll) != 0) {
                l->first_error = BB_ETIMEDOUT;
                break;
            }
            int st = bb_request_status(r[i]);
            if (st != 0 && !l->first_error)
                l->first_error = st;
            atomic_fetch_add(&l->done, 1);
            pending[i] = false;
            busy--;
        }
        if (!atomic_load(&l->stop) && (!l->limit || sent < l->limit)) {
            bbt_fill(bb_request_input(r[i]), 64, id + sent++);
            if (bb_submit(r[i], &so) == 0) {
                pending[i] = true;
                busy++;
            }
        } else if (busy == 0) {
            break;
        }
    }
    for (int i = 0; i < n; i++)
        bb_request_free(r[i]);
    return NULL;
}

static void load_start(struct load *l, bb_model *m, int prio, int inflight, uint64_t limit)
{
    memset(l, 0, sizeof *l);
    l->m = m;
    l->prio = prio;
    l->inflight = inflight;
    l->limit = limit;
    cr_assert_eq(pthread_create(&l->th, NULL, load_main, l), 0);
}

/* Stop an endless load; a load with a limit runs to it. */
static uint64_t load_stop(struct load *l)
{
    if (!l->limit)
        atomic_store(&l->stop, true);
    pthread_join(l->th, NULL);
    cr_assert_eq(l->first_error, 0, "load: %s", bb_errname(l->first_error));
    return atomic_load(&l->done);
}

/* Echo on one executor, batches of up to 16 after at most 200 µs; the
 * profiler times every batch (profile_max_rate = 0) unless extra says
 * otherwise. */
static void start_with_metrics(unsigned port, const char *extra)
{
    char listen[64];
    snprintf(listen, sizeof listen, "broker.metrics_listen=%u", port);
    /* Static batching (adaptive = off): the target and wait gauges are then
     * the configuration's. */
    const char *ov[] = {listen, "model.echo.instances=1", "model.echo.max_wait_us=200",
                        "model.echo.max_batch_size=16", "model.echo.adaptive=off",
                        "broker.profile_max_rate=0", extra, NULL};
    cr_assert_eq(bbt_broker_start(&B, NULL, ov), 0, "broker did not start (status %#x)",
                 B.exit_status);
}

/* Start argv with stdout and stderr on fd; it dies with this process. */
static pid_t spawn_to(const char *const *argv, int fd)
{
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* ---- the endpoint ---- */

Test(metrics, scrape_under_load_passes_promtool)
{
    char promtool[512];
    bool have = find_tool("promtool", promtool, sizeof promtool);
    unsigned port = free_port_ok();
    start_with_metrics(port, NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct load hi, lo;
    load_start(&hi, m, BB_PRIORITY_HIGH, 8, 0);
    load_start(&lo, m, BB_PRIORITY_LOW, 8, 0);
    while (atomic_load(&hi.done) < 2000 || atomic_load(&lo.done) < 2000)
        bbt_msleep(5);
    const char *text = scrape(port); /* under load */
    double first = sample(text, "batchbroker_requests_total{model=\"echo\",priority=\"high\","
                                "outcome=\"completed\"}");
    cr_assert_gt(first, 0);
    if (have)
        promtool_clean(promtool, text);
    bbt_msleep(50);
    text = scrape(port);
    double second = sample(text, "batchbroker_requests_total{model=\"echo\",priority=\"high\","
                                 "outcome=\"completed\"}");
    cr_assert_gt(second, first, "the counter moves under load");
    load_stop(&hi);
    load_stop(&lo);

    /* Once idle: the phases add up to the latency (sums in seconds, printed
     * to the ns), the histograms' counts agree, the gauges are sane. */
    struct bb_model_stats st = bbt_settled_stats(m);
    text = scrape(port);
    double lat = 0, phases = 0, lat_n = 0;
    static const char *const prios[] = {"critical", "high", "normal", "low"};
    for (int p = 0; p < 4; p++) {
        char s[256];
        snprintf(s, sizeof s,
                 "batchbroker_request_duration_seconds_sum{model=\"echo\",priority=\"%s\"}",
                 prios[p]);
        lat += sample(text, s);
        snprintf(s, sizeof s,
                 "batchbroker_request_duration_seconds_count{model=\"echo\",priority=\"%s\"}",
                 prios[p]);
        lat_n += sample(text, s);
    }
    static const char *const ph[] = {"queue_wait", "formation", "backend", "delivery"};
    for (int k = 0; k < 4; k++) {
        char s[256];
        snprintf(s, sizeof s, "batchbroker_request_phase_seconds_sum{model=\"echo\",phase=\"%s\"}",
                 ph[k]);
        double v = sample(text, s);
        cr_assert_geq(v, 0);
        phases += v;
        snprintf(s, sizeof s,
                 "batchbroker_request_phase_seconds_count{model=\"echo\",phase=\"%s\"}", ph[k]);
        cr_assert_eq(sample(text, s), lat_n, "every completed request has its %s", ph[k]);
    }
    cr_assert_eq(lat_n, (double)st.completed);
    cr_assert(fabs(phases - lat) <= 1e-6 * lat + 4e-9, "phases %.9f s, latency %.9f s", phases,
              lat);
    cr_assert_eq(sample(text, "batchbroker_batch_size_count{model=\"echo\"}"), (double)st.batches);
    cr_assert_eq(sample(text, "batchbroker_batch_size_bucket{model=\"echo\",le=\"+Inf\"}"),
                 (double)st.batches);
    cr_assert_eq(sample(text, "batchbroker_batch_size_sum{model=\"echo\"}"),
                 (double)(st.completed));
    cr_assert_eq(sample(text, "batchbroker_clients"), 1);
    cr_assert_gt(sample(text, "batchbroker_segment_memory_bytes"), 0);
    cr_assert_eq(sample(text, "batchbroker_queued_requests{model=\"echo\"}"), 0);
    cr_assert_eq(sample(text, "batchbroker_batch_target{model=\"echo\"}"), 16);
    cr_assert_eq(sample(text, "batchbroker_batch_wait_seconds{model=\"echo\"}"), 0.0002);
    cr_assert_eq(sample(text, "batchbroker_profiler_stride{model=\"echo\"}"), 1);

    /* Anything but GET or HEAD of /metrics. */
    cr_assert_eq(bbt_http(NULL, port, "GET", "/", page, sizeof page), 404);
    cr_assert_eq(bbt_http(NULL, port, "POST", "/metrics", page, sizeof page), 405);
    cr_assert_eq(bbt_http(NULL, port, "HEAD", "/metrics", page, sizeof page), 200);

    /* bbctl prints the same page without HTTP. */
    char out[1 << 16], err[4096];
    const char *argv[] = {BBCTL_BIN, "--socket", B.sock, "metrics", NULL};
    int rc = bbt_run(argv, out, sizeof out, err, sizeof err, 30000);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "bbctl metrics: %#x %s", rc, err);
    cr_assert_eq(sample(out, "batchbroker_batch_size_count{model=\"echo\"}"), (double)st.batches);
    if (have)
        promtool_clean(promtool, out);
    bb_disconnect(c);
    if (!have)
        cr_skip_test("promtool not installed (Debian package prometheus): the page's format "
                     "was not linted");
}

/* A real Prometheus server scrapes the broker; its query API answers a rate. */
Test(metrics, prometheus_server_reads_a_rate)
{
    char prom[512];
    if (!find_tool("prometheus", prom, sizeof prom))
        cr_skip_test("prometheus not installed (Debian package prometheus)");
    unsigned port = free_port_ok(), pport = free_port_ok();
    start_with_metrics(port, NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct load l;
    load_start(&l, m, BB_PRIORITY_NORMAL, 8, 0);

    char dir[108], cfg[108], logf[108], text[512], listen[64];
    bbt_unique_path(dir, sizeof dir, ".tsdb");
    bbt_unique_path(logf, sizeof logf, ".log");
    snprintf(text, sizeof text,
             "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
             "scrape_configs:\n  - job_name: batchbroker\n    static_configs:\n"
             "      - targets: ['127.0.0.1:%u']\n",
             port);
    cr_assert_eq(bbt_write_file(cfg, sizeof cfg, ".yml", text), 0);
    char a_cfg[160], a_db[160];
    snprintf(a_cfg, sizeof a_cfg, "--config.file=%s", cfg);
    snprintf(a_db, sizeof a_db, "--storage.tsdb.path=%s", dir);
    snprintf(listen, sizeof listen, "--web.listen-address=127.0.0.1:%u", pport);
    int logfd = open(logf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const char *pargv[] = {prom, a_cfg, a_db, listen, "--log.level=warn", NULL};
    pid_t pid = spawn_to(pargv, logfd);
    close(logfd);
    /* Poll the query API until the rate is there (it needs two scrapes in
     * the range); bounded. */
    const char *q = "/api/v1/query?query=sum%28rate%28batchbroker_requests_total%7B"
                    "model%3D%22echo%22%2Coutcome%3D%22completed%22%7D%5B3s%5D%29%29";
    double rate = 0;
    char *body = NULL;
    for (int i = 0; i < 240 && !(rate > 0); i++) {
        bbt_msleep(250);
        int st = bbt_http(NULL, pport, "GET", q, page, sizeof page);
        if (st != 200)
            continue;
        body = strstr(page, "\"result\":[{");
        char *v = body ? strstr(body, "\"value\":[") : NULL;
        char *s = v ? strchr(v, ',') : NULL;
        if (s && s[1] == '"')
            rate = strtod(s + 2, NULL);
    }
    /* The example queries of docs/operations.md are valid PromQL and answer. */
    static const char *const doc_queries[] = {
        /* sum by (model) (rate(batchbroker_requests_total{outcome="completed"}[1m])) */
        "sum%20by%20%28model%29%20%28rate%28batchbroker_requests_total%7Boutcome%3D%22"
        "completed%22%7D%5B1m%5D%29%29",
        /* histogram_quantile(0.99, sum by (model, priority, le)
         *   (rate(batchbroker_request_duration_seconds_bucket[5m]))) */
        "histogram_quantile%280.99%2C%20sum%20by%20%28model%2C%20priority%2C%20le%29%20%28rate"
        "%28batchbroker_request_duration_seconds_bucket%5B5m%5D%29%29%29",
        /* sum by (phase) (rate(batchbroker_request_phase_seconds_sum{model="echo"}[5m]))
         *   / ignoring (phase) group_left
         *   sum (rate(batchbroker_request_phase_seconds_sum{model="echo"}[5m])) */
        "sum%20by%20%28phase%29%20%28rate%28batchbroker_request_phase_seconds_sum%7Bmodel%3D%22"
        "echo%22%7D%5B5m%5D%29%29%20%2F%20ignoring%20%28phase%29%20group_left%20sum%20%28rate%28"
        "batchbroker_request_phase_seconds_sum%7Bmodel%3D%22echo%22%7D%5B5m%5D%29%29",
    };
    for (size_t i = 0; rate > 0 && i < sizeof doc_queries / sizeof doc_queries[0]; i++) {
        char url[1024];
        snprintf(url, sizeof url, "/api/v1/query?query=%s", doc_queries[i]);
        int st = bbt_http(NULL, pport, "GET", url, page, sizeof page);
        cr_expect(st == 200 && strstr(page, "\"status\":\"success\"") &&
                      strstr(page, "\"result\":[{"),
                  "query %zu: %d %.400s", i, st, page);
    }
    uint64_t done = load_stop(&l);
    kill(pid, SIGTERM);
    bbt_waitpid_bounded(pid, 10000);
    char log[4096] = "";
    FILE *lf = fopen(logf, "r");
    if (lf) {
        size_t n = fread(log, 1, sizeof log - 1, lf);
        log[n] = '\0';
        fclose(lf);
    }
    const char *rm[] = {"/bin/rm", "-rf", dir, logf, cfg, NULL};
    bbt_run(rm, NULL, 0, NULL, 0, 30000);
    cr_assert_gt(rate, 0, "no rate from Prometheus; last answer: %.400s\nprometheus log: %s",
                 page, log);
    /* No rate can exceed every request ever completed in one second. */
    cr_assert_leq(rate, (double)done, "rate %.1f/s, %llu requests in all", rate,
                  (unsigned long long)done);
    bb_disconnect(c);
}

Test(metrics, bad_listen_address_exits_2)
{
    static const char *const bad[] = {"broker.metrics_listen=nowhere:9100",
                                      "broker.metrics_listen=70000",
                                      "broker.metrics_listen=[::1:9100"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char sock[108], plugin[300], out[4096], err[4096];
        bbt_unique_path(sock, sizeof sock, ".sock");
        snprintf(plugin, sizeof plugin, "broker.plugin_dir=%s", BB_PLUGIN_DIR);
        const char *argv[] = {BB_BROKER_BIN, "-s", sock, "-o", plugin, "-o", bad[i], NULL};
        int st = bbt_run(argv, out, sizeof out, err, sizeof err, 10000);
        unlink(sock);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s: status %#x, stderr %s", bad[i],
                  st, err);
        cr_assert(strstr(err, "metrics_listen"), "%s: stderr %s", bad[i], err);
    }
}

Test(metrics, busy_port_exits_1)
{
    /* Someone else's listener, and then a broker's. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 4) == 0 &&
              getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    unsigned busy = ntohs(a.sin_port);
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            close(fd);
            busy = free_port_ok();
            start_with_metrics(busy, NULL);
        }
        char sock[108], plugin[300], listen_arg[64], out[4096], err[4096];
        bbt_unique_path(sock, sizeof sock, ".sock");
        snprintf(plugin, sizeof plugin, "broker.plugin_dir=%s", BB_PLUGIN_DIR);
        snprintf(listen_arg, sizeof listen_arg, "broker.metrics_listen=127.0.0.1:%u", busy);
        const char *argv[] = {BB_BROKER_BIN, "-s", sock, "-o", plugin, "-o", listen_arg, NULL};
        int st = bbt_run(argv, out, sizeof out, err, sizeof err, 10000);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %#x, stderr %s", st, err);
        cr_assert(strstr(err, "metrics_listen") && strstr(err, "in use"), "stderr %s", err);
        cr_assert(access(sock, F_OK) != 0, "a broker that failed to start left its socket");
    }
    /* The first broker serves on. */
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    char in[8] = "abcdefg", o[8];
    size_t n;
    cr_assert_eq(bb_infer(m, in, 8, o, 8, &n, NULL, 5000000000ll), 0);
    bb_disconnect(c);
}

/* A thousand connections from one address that never read: the broker holds
 * a few (the per-address limit) until they time out and closes the rest at
 * once, never runs out of descriptors, answers a scrape from another
 * address meanwhile, and serves requests throughout. */
Test(metrics, connection_flood_is_dropped, .timeout = 240)
{
    enum { FLOOD = 1000 };
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < FLOOD + 200)
        cr_skip_test("open-file hard limit %llu is below %d", (unsigned long long)rl.rlim_max,
                     FLOOD + 200);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    unsigned port = free_port_ok();
    start_with_metrics(port, NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    int base_fds = bb__proc_count_fds(B.pid);

    static int fds[FLOOD];
    static bool sent[FLOOD], closed[FLOOD];
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    inet_pton(AF_INET, "127.0.0.2", &src.sin_addr);
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert(fds[i] >= 0, "socket %d: %s", i, strerror(errno));
        cr_assert_eq(bind(fds[i], (struct sockaddr *)&src, sizeof src), 0, "%s", strerror(errno));
        int r = connect(fds[i], (struct sockaddr *)&dst, sizeof dst);
        cr_assert(r == 0 || errno == EINPROGRESS, "connect %d: %s", i, strerror(errno));
    }
    static struct pollfd pfd[FLOOD];
    int nclosed = 0, served = 0, max_fds = 0;
    bool scraped = false;
    uint64_t end = bbt_now_ns() + 60000000000ull;
    while (nclosed < FLOOD && bbt_now_ns() < end) {
        for (int i = 0; i < FLOOD; i++)
            pfd[i] = (struct pollfd){.fd = closed[i] ? -1 : fds[i],
                                     .events = POLLRDHUP | (sent[i] ? 0 : POLLOUT)};
        poll(pfd, FLOOD, 100);
        for (int i = 0; i < FLOOD; i++) {
            if (closed[i])
                continue;
            if (pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
                closed[i] = true; /* the server closed it; we never read */
                nclosed++;
            } else if ((pfd[i].revents & POLLOUT) && !sent[i]) {
                sent[i] = true;
                if (i % 2 == 0) { /* half ask for the page and never read it */
                    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
                    ssize_t r = send(fds[i], get, sizeof get - 1, MSG_NOSIGNAL);
                    (void)r;
                }
            }
        }
        int now_fds = bb__proc_count_fds(B.pid);
        if (now_fds > max_fds)
            max_fds = now_fds;
        /* The broker's own work goes on. */
        char in[16], out[16];
        size_t n;
        bbt_fill(in, sizeof in, (uint64_t)served);
        cr_assert_eq(bb_infer(m, in, sizeof in, out, sizeof out, &n, NULL, 5000000000ll), 0);
        cr_assert(n == sizeof in && bbt_check(out, n, (uint64_t)served));
        served++;
        /* Another address still gets its scrape while the flood holds its share. */
        if (!scraped && nclosed > FLOOD / 2) {
            int st = bbt_http("127.0.0.1", port, "GET", "/metrics", page, sizeof page);
            cr_assert_eq(st, 200, "scrape during the flood: %d", st);
            scraped = true;
        }
    }
    for (int i = 0; i < FLOOD; i++)
        close(fds[i]);
    cr_assert_eq(nclosed, FLOOD, "the broker closed %d of %d connections", nclosed, FLOOD);
    cr_assert(scraped);
    /* Per address it holds at most 8, in all 64: its descriptors stay few. */
    cr_assert_lt(max_fds, base_fds + 80, "broker descriptors: %d, %d before the flood", max_fds,
                 base_fds);
    cr_assert_gt(served, 0);
    bb_disconnect(c);
}

/* A slowloris: connections from eight addresses (the per-address limit
 * each, the whole connection limit together) that send a request line and
 * then one header line a second, never the end of the request. The idle
 * timeout never fires for them (a trickle a second resets it); the watchdog
 * closes each once it has owed a whole request for 10 s, and a scrape gets
 * through. The trickle runs on a thread of its own, so that a scrape that
 * waits does not pause it. */
enum { SLOW_ADDRS = 8, SLOW_PER = 8, SLOW_N = SLOW_ADDRS * SLOW_PER };

struct slowloris {
    int fds[SLOW_N];
    _Atomic int nclosed, stop;
};

static void *trickle(void *arg)
{
    struct slowloris *sl = arg;
    bool closed[SLOW_N] = {false};
    while (!atomic_load(&sl->stop) && atomic_load(&sl->nclosed) < SLOW_N) {
        bbt_msleep(1000);
        for (int i = 0; i < SLOW_N; i++) {
            if (closed[i])
                continue;
            struct pollfd p = {.fd = sl->fds[i], .events = POLLRDHUP};
            static const char hdr[] = "X-Slow: 1\r\n";
            if ((poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) ||
                send(sl->fds[i], hdr, sizeof hdr - 1, MSG_NOSIGNAL) < 0) {
                closed[i] = true;
                atomic_fetch_add(&sl->nclosed, 1);
            }
        }
    }
    return NULL;
}

Test(metrics, a_slowloris_is_closed_and_scrapes_get_through, .timeout = 120)
{
    unsigned port = free_port_ok();
    start_with_metrics(port, NULL);
    static struct slowloris sl;
    memset(&sl, 0, sizeof sl);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < SLOW_N; i++) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        char a[32];
        snprintf(a, sizeof a, "127.0.0.%d", 2 + i / SLOW_PER);
        inet_pton(AF_INET, a, &src.sin_addr);
        sl.fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(sl.fds[i] >= 0);
        cr_assert_eq(bind(sl.fds[i], (struct sockaddr *)&src, sizeof src), 0, "%s", strerror(errno));
        cr_assert_eq(connect(sl.fds[i], (struct sockaddr *)&dst, sizeof dst), 0, "%s",
                     strerror(errno));
        static const char line[] = "GET /metrics HTTP/1.1\r\n";
        cr_assert_eq(send(sl.fds[i], line, sizeof line - 1, MSG_NOSIGNAL),
                     (ssize_t)(sizeof line - 1));
    }
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, trickle, &sl), 0);
    int st = -1;
    uint64_t end = bbt_now_ns() + 60000000000ull;
    while (st != 200 && bbt_now_ns() < end) {
        bbt_msleep(500);
        st = bbt_http("127.0.0.1", port, "GET", "/metrics", page, sizeof page);
    }
    for (int i = 0; i < 150 && atomic_load(&sl.nclosed) < SLOW_N; i++)
        bbt_msleep(100);
    atomic_store(&sl.stop, 1);
    pthread_join(t, NULL);
    for (int i = 0; i < SLOW_N; i++)
        close(sl.fds[i]);
    cr_assert_eq(st, 200, "no scrape got through the slowloris (last status %d)", st);
    cr_assert_eq(atomic_load(&sl.nclosed), SLOW_N, "the broker closed %d of %d trickling connections",
                 atomic_load(&sl.nclosed), SLOW_N);
}

/* One response off fd: its head (status, headers) into head, and its body
 * read to the end that Content-Length gives. Returns the status. */
static int read_response(int fd, char *head, size_t cap)
{
    size_t got = 0;
    char *end = NULL;
    while (!end && got < cap - 1) {
        ssize_t r = recv(fd, head + got, 1, 0); /* byte by byte: nothing of the body */
        cr_assert_eq(r, 1, "the connection ended in a response's head");
        head[++got] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    cr_assert(end, "a response head longer than %zu bytes", cap);
    const char *cl = strstr(head, "Content-Length: ");
    cr_assert(cl, "no Content-Length in %s", head);
    size_t left = strtoull(cl + 16, NULL, 10);
    char buf[4096];
    while (left) {
        ssize_t r = recv(fd, buf, left < sizeof buf ? left : sizeof buf, 0);
        cr_assert_gt(r, 0, "the connection ended in a response's body");
        left -= (size_t)r;
    }
    int status = -1;
    sscanf(head, "HTTP/1.%*d %d", &status);
    return status;
}

/* A scraper keeps its connection from one scrape to the next (Prometheus
 * does): the answer must not close it. libmicrohttpd closes a connection
 * whose answer was queued before the whole request had come. */
Test(metrics, a_scrape_keeps_its_connection)
{
    unsigned port = free_port_ok();
    start_with_metrics(port, NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&dst, sizeof dst), 0, "%s", strerror(errno));
    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char other[] = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char with_body[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                    "\r\nhello";
    const struct {
        const char *req;
        size_t len;
        int status;
    } reqs[] = {{get, sizeof get - 1, 200},
                {other, sizeof other - 1, 404},
                {with_body, sizeof with_body - 1, 200},
                {get, sizeof get - 1, 200}};
    char head[4096];
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        cr_assert_eq(send(fd, reqs[i].req, reqs[i].len, MSG_NOSIGNAL), (ssize_t)reqs[i].len,
                     "request %zu: %s", i, strerror(errno));
        cr_assert_eq(read_response(fd, head, sizeof head), reqs[i].status, "request %zu: %s", i,
                     head);
        cr_assert(!strstr(head, "Connection: close"), "request %zu closed the connection: %s", i,
                  head);
    }
    close(fd);
}

/* ---- bb_model_stats ---- */

Test(metrics, stats_phases_add_up)
{
    start_with_metrics(free_port_ok(), NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct load a, b;
    load_start(&a, m, BB_PRIORITY_CRITICAL, 8, 3000);
    load_start(&b, m, BB_PRIORITY_NORMAL, 24, 3000);
    uint64_t done = load_stop(&a) + load_stop(&b);
    cr_assert_eq(done, 6000);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.size, sizeof st);
    cr_assert_eq(st.version, BB_MODEL_STATS_VERSION);
    cr_assert_eq(st.completed, 6000);
    cr_assert_eq(st.profile_stride, 1, "at this rate the profiler times every batch");
    cr_assert_eq(st.phase_count, st.completed, "the profiler timed every completion");
    uint64_t sum = 0;
    for (int k = 0; k < BB_STATS_PHASES; k++)
        sum += st.phase_sum_ns[k];
    cr_assert_eq(sum, st.timed_latency_sum_ns, "request by request, the phases add up to the latency");
    cr_assert_eq(st.timed_latency_sum_ns, st.latency_sum_ns, "every request was timed");
    cr_assert_gt(st.phase_sum_ns[BB_STATS_PHASE_QUEUE], 0);
    cr_assert_gt(st.phase_sum_ns[BB_STATS_PHASE_BACKEND], 0);
    cr_assert_gt(st.phase_sum_ns[BB_STATS_PHASE_DELIVERY], 0);
    /* The batch sizes: as many as batches, and the sizes they allow. */
    uint64_t batches = 0, lo = 0, hi = 0;
    for (int k = 0; k < BB_STATS_BATCH_BUCKETS; k++) {
        uint64_t n = st.batch_size_hist[k];
        batches += n;
        lo += n * (k ? (1u << (k - 1)) + 1 : 1);
        hi += n * (1u << k);
        if ((1u << k) > 16)
            cr_assert_eq(n, 0, "no batch above max_batch_size 16");
    }
    cr_assert_eq(batches, st.batches);
    cr_assert(lo <= 6000 && 6000 <= hi, "sizes %llu..%llu for 6000 requests",
              (unsigned long long)lo, (unsigned long long)hi);
    /* Windowed percentiles per priority, from the same histograms. */
    cr_assert_gt(st.latency_p50_by_priority_us[BB_PRIORITY_CRITICAL], 0);
    cr_assert_gt(st.latency_p99_by_priority_us[BB_PRIORITY_NORMAL], 0);
    cr_assert_eq(st.latency_p50_by_priority_us[BB_PRIORITY_LOW], 0, "no low request");
    cr_assert_leq(st.latency_p50_by_priority_us[BB_PRIORITY_NORMAL],
                  st.latency_p99_by_priority_us[BB_PRIORITY_NORMAL]);
    for (int k = 0; k < BB_STATS_PHASES; k++)
        cr_assert_leq(st.phase_p50_us[k], st.phase_p99_us[k]);
    cr_assert_gt(st.window_s, 0);
    for (size_t i = 0; i < sizeof st.reserved / sizeof st.reserved[0]; i++)
        cr_assert_eq(st.reserved[i], 0);
    bb_disconnect(c);
}

Test(metrics, profile_off_times_nothing)
{
    start_with_metrics(free_port_ok(), "broker.profile=off");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct load a;
    load_start(&a, m, BB_PRIORITY_NORMAL, 8, 2000);
    load_stop(&a);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 2000);
    cr_assert_eq(st.profile_stride, 0);
    cr_assert_eq(st.phase_count, 0);
    for (int k = 0; k < BB_STATS_PHASES; k++)
        cr_assert_eq(st.phase_sum_ns[k], 0);
    cr_assert_gt(st.latency_sum_ns, 0, "the latency itself is always measured");
    bb_disconnect(c);
}

/* Past profile_max_rate batches a second the profiler times one batch in a
 * power of two; what it times still adds up. */
Test(metrics, profile_samples_past_max_rate)
{
    start_with_metrics(free_port_ok(), "broker.profile_max_rate=100");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct load a;
    load_start(&a, m, BB_PRIORITY_NORMAL, 4, 20000); /* >= 5000 batches of at most 4 */
    load_stop(&a);
    struct bb_model_stats st = bbt_settled_stats(m);
    /* The stride is published once an adaptation interval (100 ms): a fast
     * run may end before it shows. */
    for (int i = 0; i < 300 && st.profile_stride <= 1; i++) {
        bbt_msleep(10);
        st = bbt_stats_of(m);
    }
    cr_assert_eq(st.completed, 20000);
    cr_assert_geq(st.batches, 4096, "enough batches for the stride to be set");
    cr_assert_gt(st.profile_stride, 1, "stride %u", st.profile_stride);
    cr_assert_eq(st.profile_stride & (st.profile_stride - 1), 0, "a power of two");
    cr_assert_gt(st.phase_count, 0);
    cr_assert_lt(st.phase_count, st.completed);
    uint64_t sum = 0;
    for (int k = 0; k < BB_STATS_PHASES; k++)
        sum += st.phase_sum_ns[k];
    cr_assert_eq(sum, st.timed_latency_sum_ns);
    cr_assert_lt(st.timed_latency_sum_ns, st.latency_sum_ns);
    bb_disconnect(c);
}

/* Below profile_max_rate every batch is timed, the first ones included:
 * the stride is set by the rate of 1024 cuts, not by one cut over the time
 * since the broker started (which made a low max_rate time one batch in up
 * to 64 from the first). */
Test(metrics, profile_times_every_batch_below_max_rate)
{
    start_with_metrics(free_port_ok(), "broker.profile_max_rate=100");
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    char in[64] = {0}, out[64];
    size_t len;
    for (int i = 0; i < 20; i++) /* one at a time: 20 batches of one */
        cr_assert_eq(bb_infer(m, in, sizeof in, out, sizeof out, &len, NULL, 5000000000ll), 0);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.completed, 20);
    cr_assert_eq(st.batches, 20);
    cr_assert_eq(st.phase_count, 20, "%llu of 20 requests timed",
                 (unsigned long long)st.phase_count);
    bbt_msleep(300); /* the stride gauge: published once an adaptation interval */
    cr_assert_eq(bbt_stats_of(m).profile_stride, 1);
    bb_disconnect(c);
}

/* A cancel is counted as cancelled, not as a failure. */
Test(metrics, cancel_counted_apart)
{
    /* Static batching: the request waits for company (adaptive sizing would
     * not hold a lone request). */
    const char *ov[] = {"model.echo.max_batch_size=64", "model.echo.max_wait_us=10000000",
                        "model.echo.adaptive=off", NULL};
    cr_assert_eq(bbt_broker_start(&B, NULL, ov), 0);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    bb_request *r;
    cr_assert_eq(bb_request_new(m, 8, 8, &r), 0);
    cr_assert_eq(bb_submit(r, NULL), 0);
    for (int i = 0; i < 1000 && bbt_stats_of(m).queued != 1; i++)
        bbt_msleep(2);
    cr_assert_eq(bbt_stats_of(m).queued, 1, "filed, waiting 10 s for company");
    cr_assert_eq(bb_cancel(r), 0);
    cr_assert_eq(bb_wait(r, 5000000000ll), 0);
    cr_assert_eq(bb_request_status(r), BB_ECANCELED);
    struct bb_model_stats st = bbt_settled_stats(m);
    cr_assert_eq(st.cancelled, 1);
    cr_assert_eq(st.failed, 0);
    bb_request_free(r);
    bb_disconnect(c);
}

/* ---- bbctl profile ---- */

/* One "key ..." line of the report's data block; the rest of the line. */
static const char *data_line(const char *html, const char *key)
{
    const char *blk = strstr(html, "<!-- bb-profile-data\n");
    cr_assert(blk, "no data block in the report");
    size_t n = strlen(key);
    for (const char *l = blk; l && strncmp(l, "end\n", 4); l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, key, n) && l[n] == ' ')
            return l + n + 1;
    cr_assert_fail("no '%s' in the report's data", key);
    return NULL;
}

static char html[1 << 20];

Test(metrics, profile_report_matches_stats)
{
    start_with_metrics(free_port_ok(), NULL);
    bb_client *c = bbt_connect_ok(&B, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    struct bb_model_stats s0 = bbt_settled_stats(m);

    /* bbctl profile with a long --seconds, ended by SIGINT once the load is
     * over: its window then holds exactly the load (the broker is idle at
     * both ends), so it must agree with s1 - s0. */
    char path[108];
    bbt_unique_path(path, sizeof path, ".html");
    int errp[2];
    cr_assert_eq(pipe2(errp, O_CLOEXEC), 0);
    const char *bargv[] = {BBCTL_BIN, "--socket", B.sock, "profile", "--html", path,
                           "--seconds", "600", NULL};
    pid_t pid = spawn_to(bargv, errp[1]);
    close(errp[1]);
    char err[4096] = "";
    size_t got = 0;
    while (!strstr(err, "profiling") && got < sizeof err - 1) {
        struct pollfd p = {.fd = errp[0], .events = POLLIN};
        cr_assert(poll(&p, 1, 10000) == 1, "bbctl did not start: %s", err);
        ssize_t n = read(errp[0], err + got, sizeof err - 1 - got);
        cr_assert(n > 0, "bbctl exited: %s", err);
        got += (size_t)n;
        err[got] = '\0';
    }
    uint64_t t_load = bbt_now_ns();
    struct load a, b;
    load_start(&a, m, BB_PRIORITY_CRITICAL, 4, 4000);
    load_start(&b, m, BB_PRIORITY_LOW, 16, 4000);
    load_stop(&a);
    load_stop(&b);
    struct bb_model_stats s1 = bbt_settled_stats(m);
    uint64_t t_end = bbt_now_ns();
    kill(pid, SIGINT);
    int st = bbt_waitpid_bounded(pid, 30000);
    close(errp[0]);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "bbctl profile: %#x", st);

    FILE *f = fopen(path, "r");
    cr_assert(f, "no report at %s", path);
    size_t len = fread(html, 1, sizeof html - 1, f);
    html[len] = '\0';
    fclose(f);
    unlink(path);
    /* Self-contained: nothing is fetched from anywhere. */
    cr_assert(strstr(html, "<svg"));
    cr_assert(!strstr(html, "<script") && !strstr(html, "http://") &&
              !strstr(html, "https://") && !strstr(html, "src=") && !strstr(html, "url("));

    cr_assert(!strncmp(data_line(html, "model"), "echo\n", 5));
    cr_assert_eq(strtoull(data_line(html, "completed"), NULL, 10), s1.completed - s0.completed);
    cr_assert_eq(s1.completed - s0.completed, 8000);
    cr_assert_eq(strtoull(data_line(html, "failed"), NULL, 10), 0);
    cr_assert_eq(strtoull(data_line(html, "batches"), NULL, 10), s1.batches - s0.batches);
    /* The batch-size distribution, bucket by bucket. */
    const char *blk = strstr(html, "<!-- bb-profile-data");
    for (int k = 0; k < BB_STATS_BATCH_BUCKETS; k++) {
        char key[64];
        snprintf(key, sizeof key, "batch_size %u ", 1u << k);
        const char *l = strstr(blk, key);
        cr_assert(l, "no %s", key);
        cr_assert_eq(strtoull(l + strlen(key), NULL, 10),
                     s1.batch_size_hist[k] - s0.batch_size_hist[k], "bucket %d", k);
    }
    /* The phase breakdown: the same sums as bb_model_stats, shares that add
     * up to 100%, means that add up to the end-to-end mean. */
    static const char *const keys[] = {"queue_wait", "formation", "backend", "delivery"};
    double share = 0, means = 0;
    for (int k = 0; k < BB_STATS_PHASES; k++) {
        char key[64];
        snprintf(key, sizeof key, "phase %s", keys[k]);
        unsigned long long sum;
        double sh, mean, p50, p99;
        cr_assert_eq(sscanf(data_line(html, key), "sum_ns %llu share %lf mean_us %lf p50_us %lf "
                                                  "p99_us %lf", &sum, &sh, &mean, &p50, &p99), 5);
        cr_assert_eq(sum, s1.phase_sum_ns[k] - s0.phase_sum_ns[k], "%s", keys[k]);
        share += sh;
        means += mean;
        cr_assert_leq(p50, p99);
    }
    cr_assert(fabs(share - 100) < 0.01, "shares add up to %.4f%%", share);
    double e2e = strtod(data_line(html, "timed_latency_mean_us"), NULL);
    cr_assert_eq(strtoull(data_line(html, "latency_sum_ns"), NULL, 10),
                 s1.latency_sum_ns - s0.latency_sum_ns);
    cr_assert_eq(strtoull(data_line(html, "timed_latency_sum_ns"), NULL, 10),
                 s1.timed_latency_sum_ns - s0.timed_latency_sum_ns);
    cr_assert_eq(strtoull(data_line(html, "phase_count"), NULL, 10), 8000, "every request timed");
    cr_assert(fabs(strtod(data_line(html, "latency_mean_us"), NULL) - e2e) < 0.001);
    /* Within the histograms' resolution (1/32); exact here up to printing. */
    cr_assert(fabs(means - e2e) <= e2e / 32, "phase means %.4f µs, end to end %.4f µs", means, e2e);
    cr_assert(fabs(means - e2e) <= 0.001 + e2e * 1e-6, "phase means %.4f µs, end to end %.4f µs",
              means, e2e);
    /* Latency percentiles per priority: the same histograms as the
     * broker's windowed figures, when its window holds the whole load. */
    static const char *const pn[] = {"critical", "high", "normal", "low"};
    int checked = 0;
    for (int p = 1; p <= 4; p++) {
        char key[64];
        snprintf(key, sizeof key, "priority %s", pn[p - 1]);
        const char *l = strstr(blk, key);
        bool expected = p == BB_PRIORITY_CRITICAL || p == BB_PRIORITY_LOW;
        cr_assert_eq(l != NULL, expected, "%s", key);
        if (!l)
            continue;
        unsigned long long n;
        double p50, p90, p99, p999;
        cr_assert_eq(sscanf(l + strlen(key), " count %llu p50_us %lf p90_us %lf p99_us %lf "
                                             "p999_us %lf", &n, &p50, &p90, &p99, &p999), 5);
        cr_assert_eq(n, 4000);
        cr_assert(p50 <= p90 && p90 <= p99 && p99 <= p999);
        if (s1.window_s * 1e9 >= (double)(t_end - t_load)) {
            cr_assert(fabs(p50 - s1.latency_p50_by_priority_us[p]) < 0.002, "%s p50 %.3f vs %.3f",
                      pn[p - 1], p50, s1.latency_p50_by_priority_us[p]);
            cr_assert(fabs(p99 - s1.latency_p99_by_priority_us[p]) < 0.002, "%s p99 %.3f vs %.3f",
                      pn[p - 1], p99, s1.latency_p99_by_priority_us[p]);
            checked++;
        }
    }
    cr_assert_eq(checked, 2, "the broker's window (%.1f s) did not hold the load", s1.window_s);
    bb_disconnect(c);
}

Test(metrics, bbctl_profile_usage)
{
    start_with_metrics(free_port_ok(), NULL);
    char out[4096], err[4096];
    const char *no_html[] = {BBCTL_BIN, "--socket", B.sock, "profile", NULL};
    int st = bbt_run(no_html, out, sizeof out, err, sizeof err, 10000);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(err, "--html"), "%#x %s", st, err);
    const char *zero[] = {BBCTL_BIN, "--socket", B.sock, "profile", "--html", "/dev/null",
                          "--seconds", "0", NULL};
    st = bbt_run(zero, out, sizeof out, err, sizeof err, 10000);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%#x %s", st, err);
    const char *nomodel[] = {BBCTL_BIN, "--socket", B.sock, "profile", "--html", "/dev/null",
                             "--model", "nope", NULL};
    st = bbt_run(nomodel, out, sizeof out, err, sizeof err, 10000);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(err, "no such model"), "%#x %s",
              st, err);
}
