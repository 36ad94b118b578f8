/* ThreadSanitizer stress: a plain program, because TSan cannot run under
 * Criterion's forking runner. Both sides are built with -fsanitize=thread:
 * the broker (batchbroker_tsan: dispatcher + two executor threads) and this
 * client (four submitting threads, one bb_client_poll thread, cancels and
 * frees of pending requests, all sharing one bb_client; a thread whose
 * clients attach and leave meanwhile; and a thread that scrapes the broker's
 * metrics endpoint all along (its HTTP thread reads what the dispatcher
 * writes: metrics.h). Exit 0 only if every
 * request got exactly its own answer and neither process reported a race
 * (TSAN_OPTIONS exitcode=66 makes a reported race fail the broker's exit).
 *
 *   tsan_stress [BACKEND.so]
 * $TSAN_STRESS_LANES = N: the shared client has N lanes (bb_connect_lanes),
 * its threads' requests spread over N sessions.
 * BACKEND (the instrumented tests/plugins/asyncecho.c) makes the model
 * asynchronous: batches complete on the plugin's thread, two in flight per
 * instance, and client segments are registered on the broker's registration
 * thread (each registration takes 2 ms). */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "batchbroker/client.h"
#include "harness.h"

#define THREADS 4
#define INFLIGHT 16
#define ROUNDS 1500

static bb_model *model;
static atomic_int failures;
static atomic_int stop_poller;
static unsigned metrics_port;
static atomic_int scrapes;

static void *submitter(void *arg)
{
    uint64_t t = (uint64_t)(uintptr_t)arg;
    bb_request *r[INFLIGHT];
    uint64_t id[INFLIGHT];
    for (int i = 0; i < INFLIGHT; i++)
        if (bb_request_new(model, 256, 256, &r[i]) < 0)
            abort();
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < INFLIGHT; i++) {
            id[i] = t << 40 | (uint64_t)round << 8 | (uint64_t)i;
            size_t len = 1 + (id[i] % 256);
            bbt_fill(bb_request_input(r[i]), len, id[i]);
            bb_request_set_input_len(r[i], len);
            /* A quarter deduplicated: the dispatcher answers those itself. */
            struct bb_submit_opts o = {.priority = 1 + (int)(id[i] % 4), .tag = id[i],
                                       .flags = i % 4 == 3 ? BB_SUBMIT_DEDUP : 0};
            if (bb_submit(r[i], &o) < 0)
                atomic_fetch_add(&failures, 1);
        }
        if (round % 100 == 7) { /* cancel one, free and replace another */
            bb_cancel(r[0]);
            bb_request_free(r[1]);
            if (bb_request_new(model, 256, 256, &r[1]) < 0)
                abort();
            bbt_fill(bb_request_input(r[1]), 1, 0);
            bb_request_set_input_len(r[1], 1);
            bb_submit(r[1], NULL);
            id[1] = 0;
        }
        for (int i = 0; i < INFLIGHT; i++) {
            if (bb_wait(r[i], 10000000000ll) < 0) {
                atomic_fetch_add(&failures, 1);
                continue;
            }
            int st = bb_request_status(r[i]);
            if (st == BB_ECANCELED && i == 0)
                continue;
            size_t n;
            const unsigned char *out = bb_request_output(r[i], &n);
            size_t len = i == 1 && id[1] == 0 ? 1 : 1 + (id[i] % 256);
            if (st != 0 || !out || n != len || !bbt_check(out, len, id[i]) ||
                bb_request_tag(r[i]) != (i == 1 && id[1] == 0 ? 0 : id[i])) {
                fprintf(stderr, "thread %llu round %d slot %d: status %s, %zu bytes\n",
                        (unsigned long long)t, round, i, bb_errname(st), n);
                atomic_fetch_add(&failures, 1);
            }
        }
    }
    for (int i = 0; i < INFLIGHT; i++)
        bb_request_free(r[i]);
    return NULL;
}

/* Clients that come and go while the others run: with a backend that
 * registers segments, each attach is a registration and each departure an
 * unregistration, concurrently with batches. */
static const char *sock_path;

static void *churner(void *arg)
{
    (void)arg;
    for (int k = 0; k < 20; k++) {
        bb_client *c;
        bb_model *m;
        if (bb_connect(sock_path, NULL, &c) < 0) {
            atomic_fetch_add(&failures, 1);
            continue;
        }
        if (bb_model_open(c, "echo", &m) == 0) {
            for (int i = 0; i < 4; i++) {
                uint64_t id = 1ull << 50 | (uint64_t)k << 8 | (uint64_t)i;
                char in[64], out[64];
                size_t n = 0;
                bbt_fill(in, sizeof in, id);
                if (bb_infer(m, in, sizeof in, out, sizeof out, &n, NULL, 10000000000ll) < 0 ||
                    n != sizeof in || !bbt_check(out, n, id))
                    atomic_fetch_add(&failures, 1);
            }
        } else {
            atomic_fetch_add(&failures, 1);
        }
        bb_disconnect(c);
    }
    return NULL;
}

/* Drains the completion ring concurrently with the waiters above. */
static void *poller(void *arg)
{
    bb_client *c = arg;
    int fd = bb_client_fd(c);
    while (!atomic_load(&stop_poller)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20) > 0) {
            bb_request *done[32];
            bb_client_poll(c, done, 32);
        }
    }
    return NULL;
}

/* Scrapes /metrics until the submitters are done. */
static void *scraper(void *arg)
{
    (void)arg;
    static char page[1 << 18];
    while (!atomic_load(&stop_poller)) {
        if (bbt_http(NULL, metrics_port, "GET", "/metrics", page, sizeof page) == 200 &&
            strstr(page, "batchbroker_requests_total"))
            atomic_fetch_add(&scrapes, 1);
        else
            atomic_fetch_add(&failures, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char listen[64], backend[600] = "model.echo.backend=echo";
    metrics_port = bbt_free_port();
    snprintf(listen, sizeof listen, "broker.metrics_listen=%u", metrics_port);
    if (argc > 1)
        snprintf(backend, sizeof backend, "model.echo.backend=%s", argv[1]);
    const char *ov[] = {"model.echo.instances=2", "model.echo.max_wait_us=50",
                        "model.echo.max_batch_size=16", listen, backend,
                        argc > 1 ? "model.echo.param.register_us=2000" : NULL, NULL};
    struct bbt_broker b;
    setenv("TSAN_OPTIONS", "exitcode=66 halt_on_error=0", 1);
    if (bbt_broker_start(&b, NULL, ov) < 0) {
        fprintf(stderr, "tsan_stress: broker did not start\n");
        return 1;
    }
    bb_client *c;
    const char *lanes = getenv("TSAN_STRESS_LANES");
    int crc = lanes ? bb_connect_lanes(b.sock, NULL, (unsigned)atoi(lanes), &c) : bbt_connect(&b, &c);
    if (crc < 0 || bb_model_open(c, "echo", &model) < 0) {
        fprintf(stderr, "tsan_stress: cannot connect\n");
        bbt_cleanup_all();
        return 1;
    }
    pthread_t th[THREADS], pt, ct, sc;
    sock_path = b.sock;
    pthread_create(&pt, NULL, poller, c);
    pthread_create(&ct, NULL, churner, NULL);
    pthread_create(&sc, NULL, scraper, NULL);
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, submitter, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_join(ct, NULL);
    atomic_store(&stop_poller, 1);
    pthread_join(pt, NULL);
    pthread_join(sc, NULL);
    struct bb_model_stats st;
    bb_model_stats(model, &st);
    bb_disconnect(c);
    int ws = bbt_broker_stop(&b);
    bbt_cleanup_all();
    int nfail = atomic_load(&failures);
    printf("tsan_stress: %d threads x %d rounds x %d in flight; broker completed %llu in %llu "
           "batches; %d scrapes; %d failures; broker exit %d\n",
           THREADS, ROUNDS, INFLIGHT, (unsigned long long)st.completed,
           (unsigned long long)st.batches, atomic_load(&scrapes), nfail,
           WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    if (atomic_load(&scrapes) == 0)
        nfail++;
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
        fprintf(stderr, "tsan_stress: broker exit status %#x (66 = a race was reported)\n", ws);
        return 1;
    }
    return nfail ? 1 : 0;
}
