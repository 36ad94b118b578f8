/* The batchbroker binary: malformed configurations exit with status 2 and a
 * "FILE:LINE: message" on stderr, an incompatible plugin is refused, --check
 * validates, the default configuration serves "echo", a second broker does
 * not steal a live socket, and SIGTERM shuts down gracefully. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test_util.h"

static struct bbt_broker B;

TestSuite(cli, .fini = bbt_cleanup_all, .timeout = 60);

static char out_buf[16384], err_buf[16384];

/* Run the broker on a config text with extra args; returns the wait status. */
static int run_broker(const char *config_text, char *cfg_path, size_t cfg_len,
                      const char *const *extra)
{
    char sock[108];
    static char plugin_arg[300];
    snprintf(plugin_arg, sizeof plugin_arg, "broker.plugin_dir=%s", BB_PLUGIN_DIR);
    bbt_unique_path(sock, sizeof sock, ".sock");
    const char *argv[32];
    int n = 0;
    argv[n++] = BB_BROKER_BIN;
    if (config_text) {
        cr_assert_eq(bbt_write_file(cfg_path, cfg_len, ".ini", config_text), 0);
        argv[n++] = "--config";
        argv[n++] = cfg_path;
    }
    argv[n++] = "-s";
    argv[n++] = sock;
    argv[n++] = "-o";
    argv[n++] = plugin_arg;
    for (int i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    int st = bbt_run(argv, out_buf, sizeof out_buf, err_buf, sizeof err_buf, 10000);
    if (config_text)
        unlink(cfg_path);
    unlink(sock);
    cr_assert(st != -1, "the broker did not exit within 10 s");
    return st;
}

/* The config must be refused with exit status 2 and "PATH:LINE:" + what. */
static void expect_config_error(const char *text, int line, const char *what)
{
    char path[108], where[160];
    const char *extra[] = {"--check", NULL};
    int st = run_broker(text, path, sizeof path, extra);
    cr_assert(WIFEXITED(st), "status %#x", st);
    cr_assert_eq(WEXITSTATUS(st), 2, "exit status %d for:\n%s\nstderr: %s", WEXITSTATUS(st),
                 text, err_buf);
    snprintf(where, sizeof where, "%s:%d:", path, line);
    cr_assert(strstr(err_buf, where), "stderr does not name '%s': %s", where, err_buf);
    cr_assert(strstr(err_buf, what), "stderr does not mention '%s': %s", what, err_buf);
    cr_assert(!strstr(out_buf, "configuration OK"), "stdout says OK: %s", out_buf);
}

/* The same config without --check: the broker itself refuses to start. */
static void expect_start_refused(const char *text, int line)
{
    char path[108], where[160];
    int st = run_broker(text, path, sizeof path, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %#x, stderr: %s", st, err_buf);
    snprintf(where, sizeof where, "%s:%d:", path, line);
    cr_assert(strstr(err_buf, where), "stderr does not name '%s': %s", where, err_buf);
}

Test(cli, unknown_key)
{
    const char *cfg = "[broker]\n"
                      "spin_us = 10\n"
                      "no_such_key = 1\n";
    expect_config_error(cfg, 3, "no_such_key");
    expect_start_refused(cfg, 3);
    expect_config_error("# comment\n[model.m]\nbackend = echo\n\nfrobnicate = yes\n", 5,
                        "frobnicate");
}

Test(cli, bad_number)
{
    expect_config_error("[model.m]\nbackend = echo\nmax_batch_size = lots\n", 3, "max_batch_size");
    expect_config_error("[model.m]\nbackend = echo\nmax_batch_size = 12x\n", 3, "max_batch_size");
    expect_config_error("[model.m]\nbackend = echo\nmax_batch_size = 0\n", 3, "max_batch_size");
    expect_config_error("[broker]\nspin_us = -5\n", 2, "spin_us");
    expect_config_error("[broker]\n\n\nmax_clients = 99999999999999999999\n", 4, "max_clients");
    expect_start_refused("[model.m]\nbackend = echo\nmax_wait_us = soon\n", 3);
}

Test(cli, missing_backend)
{
    /* Named at the section that lacks it. */
    expect_config_error("[broker]\nspin_us = 1\n\n[model.m]\nmax_batch_size = 4\n", 4, "backend");
    expect_start_refused("[model.a]\nbackend = echo\n[model.b]\nmax_wait_us = 5\n", 3);
}

Test(cli, unknown_section)
{
    expect_config_error("[broker]\nspin_us = 1\n[brokr]\nspin_us = 2\n", 3, "brokr");
}

Test(cli, bad_override_exits_2)
{
    const char *extra[] = {"-o", "model.echo.max_batch_size=many", "--check", NULL};
    int st = run_broker(NULL, NULL, 0, extra);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %#x, stderr: %s", st, err_buf);
    cr_assert(strstr(err_buf, "max_batch_size"), "stderr: %s", err_buf);
    const char *extra2[] = {"-o", "broker.nope=1", NULL};
    st = run_broker(NULL, NULL, 0, extra2);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %#x, stderr: %s", st, err_buf);
}

/* A backend plugin built for another ABI (backends/ builds it with
 * abi_version 999) is refused with a message about the ABI. */
Test(cli, plugin_with_wrong_abi_refused)
{
    char text[512], path[108];
    snprintf(text, sizeof text, "[model.bad]\nbackend = %s/bb_backend_badabi.so\n",
             BB_TEST_PLUGIN_DIR);
    cr_assert_eq(access(BB_TEST_PLUGIN_DIR "/bb_backend_badabi.so", R_OK), 0,
                 "the bad-ABI plugin was not built");
    const char *check[] = {"--check", NULL};
    int st = run_broker(text, path, sizeof path, check);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "--check accepted it: status %#x", st);
    cr_assert(strstr(err_buf, "ABI"), "the message does not mention the ABI: %s", err_buf);
    cr_assert(strstr(err_buf, "bb_backend_badabi.so"), "the message does not name the plugin: %s",
              err_buf);
    cr_assert(strstr(err_buf, "model bad ("), "the message does not name the model: %s", err_buf);
    cr_assert(strstr(err_buf, "rebuild it against"), "the message does not say what to do: %s",
              err_buf);
    /* And the broker does not start with it. */
    st = run_broker(text, path, sizeof path, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "the broker ran: status %#x", st);
    cr_assert(strstr(err_buf, "ABI"), "stderr: %s", err_buf);
}

/* A backend that refuses its parameters is a configuration error too. */
Test(cli, backend_rejects_params)
{
    char path[108];
    const char *check[] = {"--check", NULL};
    int st = run_broker("[model.s]\nbackend = synthetic\nparam.mode = warp\n", path, sizeof path,
                        check);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %#x, stderr: %s", st, err_buf);
    cr_assert(strstr(err_buf, "warp"), "stderr: %s", err_buf);
}

Test(cli, check_good_config_exits_0)
{
    char path[108];
    const char *check[] = {"--check", NULL};
    int st = run_broker("[broker]\nspin_us = 20\nlog_level = warn\n\n"
                        "[model.a]\nbackend = echo\nmax_batch_size = 8\n\n"
                        "[model.b]\nbackend = synthetic\nparam.batch_us = 10\n"
                        "param.mode = sleep\ninstances = 2\n",
                        path, sizeof path, check);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x, stderr: %s", st, err_buf);
    cr_assert(strstr(out_buf, "OK"), "stdout: %s", out_buf);
    /* --check did not leave a listening socket behind: nothing to connect to. */
}

/* No --config at all: a model "echo" is served. */
Test(cli, default_config_serves_echo)
{
    cr_assert_eq(bbt_broker_start(&B, NULL, NULL), 0, "status %#x", B.exit_status);
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "echo", &m), 0);
    char out[16];
    size_t n = 0;
    cr_assert_eq(bb_infer(m, "default", 7, out, sizeof out, &n, NULL, 5000000000ll), 0);
    cr_assert(n == 7 && memcmp(out, "default", 7) == 0);
    bb_model *none;
    cr_assert_eq(bb_model_open(c, "synthetic", &none), BB_ENOMODEL);
    bb_disconnect(c);
    int st = bbt_broker_stop(&B);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
}

/* A config file's models replace the default echo. */
Test(cli, config_models_replace_default)
{
    cr_assert_eq(bbt_broker_start(&B, "[model.other]\nbackend = echo\n", NULL), 0);
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "other", &m), 0);
    cr_assert_eq(bb_model_open(c, "echo", &m), BB_ENOMODEL);
    bb_disconnect(c);
}

/* A second broker on a live socket refuses to start; the first keeps serving. */
Test(cli, second_broker_on_live_socket_refused)
{
    cr_assert_eq(bbt_broker_start(&B, NULL, NULL), 0);
    const char *argv[] = {BB_BROKER_BIN, "-s", B.sock, NULL};
    int st = bbt_run(argv, out_buf, sizeof out_buf, err_buf, sizeof err_buf, 10000);
    cr_assert(st != -1, "the second broker kept running");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "status %#x", st);
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0, "the first broker lost its socket");
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "echo", &m), 0);
    char out[4];
    cr_assert_eq(bb_infer(m, "hi", 2, out, sizeof out, NULL, NULL, 5000000000ll), 0);
    bb_disconnect(c);
}

/* A broker whose model "slow" sleeps batch_us a batch of one, on
 * `instances` executors; n requests of 8 bytes, request i filled with 'a' + i. */
static bb_model *start_slow(const char *batch_us, const char *instances, bb_client **c,
                            bb_request **r, int n)
{
    char us[64], inst[64];
    snprintf(us, sizeof us, "model.slow.param.batch_us=%s", batch_us);
    snprintf(inst, sizeof inst, "model.slow.instances=%s", instances);
    const char *ov[] = {"model.slow.backend=synthetic", us, "model.slow.param.mode=sleep", inst,
                        "model.slow.max_batch_size=1", "model.slow.max_wait_us=0", NULL};
    cr_assert_eq(bbt_broker_start(&B, NULL, ov), 0);
    cr_assert_eq(bb_connect(B.sock, NULL, c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(*c, "slow", &m), 0);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(bb_request_new(m, 8, 8, &r[i]), 0);
        memset(bb_request_input(r[i]), 'a' + i, 8);
    }
    return m;
}

/* SIGTERM: stop intake, finish what runs, fail what is queued with
 * BB_ESHUTDOWN, remove the socket, exit 0. */
Test(cli, sigterm_graceful_shutdown)
{
    bb_request *r[3];
    bb_client *c;
    bb_model *m = start_slow("400000", "1", &c, r, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bb_submit(r[i], NULL), 0);
    struct bb_model_stats st;
    for (int i = 0; i < 200; i++) {
        cr_assert_eq(bb_model_stats(m, &st), 0);
        if (st.submitted == 3 && st.queued == 2)
            break;
        bbt_msleep(5);
    }
    cr_assert(st.submitted == 3 && st.queued == 2, "one runs, two wait (queued %u)", st.queued);
    pid_t pid = B.pid;
    cr_assert_eq(kill(pid, SIGTERM), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bb_wait(r[i], 10000000000ll), 0, "request %d has no outcome", i);
    cr_assert_eq(bb_request_status(r[0]), 0, "the running request finishes: %s",
                 bb_errname(bb_request_status(r[0])));
    size_t n;
    const char *out = bb_request_output(r[0], &n);
    cr_assert(out && n == 8 && out[0] == 'a' && out[7] == 'a');
    cr_assert_eq(bb_request_status(r[1]), BB_ESHUTDOWN, "got %s", bb_errname(bb_request_status(r[1])));
    cr_assert_eq(bb_request_status(r[2]), BB_ESHUTDOWN, "got %s", bb_errname(bb_request_status(r[2])));
    int ws = bbt_broker_wait(&B, 10000);
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %#x", ws);
    cr_assert_neq(access(B.sock, F_OK), 0, "the socket file is still there");
    bb_disconnect(c);
}

/* SIGTERM with instances = 0: the batch running on the dispatcher finishes,
 * and what is queued behind it fails with BB_ESHUTDOWN rather than running
 * first. Four requests queue together while a first batch runs; SIGTERM
 * comes while the first of them runs. The dispatcher used to go on cutting
 * and running the rest, one 300 ms batch after the other, before it looked
 * at the signal. */
Test(cli, sigterm_with_batches_on_the_dispatcher_fails_what_is_queued)
{
    bb_request *r[5];
    bb_client *c;
    start_slow("300000", "0", &c, r, 5);
    cr_assert_eq(bb_submit(r[0], NULL), 0);
    bbt_msleep(50); /* r[0] runs on the dispatcher: the others wait in the ring */
    for (int i = 1; i < 5; i++)
        cr_assert_eq(bb_submit(r[i], NULL), 0);
    cr_assert_eq(bb_wait(r[0], 10000000000ll), 0);
    bbt_msleep(50); /* r[1] runs now, the other three are queued */
    cr_assert_eq(kill(B.pid, SIGTERM), 0);
    for (int i = 1; i < 5; i++)
        cr_assert_eq(bb_wait(r[i], 10000000000ll), 0, "request %d has no outcome", i);
    for (int i = 2; i < 5; i++)
        cr_assert_eq(bb_request_status(r[i]), BB_ESHUTDOWN,
                     "request %d, queued at SIGTERM, got %s", i,
                     bb_errname(bb_request_status(r[i])));
    int ws = bbt_broker_wait(&B, 10000);
    cr_assert(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %#x", ws);
    bb_disconnect(c);
}

/* Start B from config text, its log kept (info level: reloads are logged). */
static void start_logged(const char *text)
{
    struct bbt_start so = {.config_text = text, .log = true,
                           .overrides = (const char *const[]){"broker.log_level=info", NULL}};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0, "broker (status %#x)", B.exit_status);
}

/* SIGHUP, then wait until the broker logged that it handled it: the n-th
 * line with what (a reload is done at the top of a dispatcher pass). */
static void reload_and_wait(const char *what, int n)
{
    int before = bbt_log_count(&B, what);
    cr_assert_eq(kill(B.pid, SIGHUP), 0);
    cr_assert_geq(bbt_log_wait(&B, what, before + n, 10000), before + n,
                  "the broker never logged \"%s\" after SIGHUP", what);
}

/* A reload that lowers max_batch_bytes under a queued request's size: the
 * request still runs (alone), and so does what queues behind it. */
Test(cli, reload_lowering_max_batch_bytes_strands_nothing)
{
    const char *base = "[model.slow]\nbackend = synthetic\nparam.batch_us = 300000\n"
                       "param.mode = sleep\ninstances = 1\nmax_batch_size = 8\nmax_wait_us = 0\n";
    char text[512];
    snprintf(text, sizeof text, "%smax_batch_bytes = 1M\n", base);
    start_logged(text);
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "slow", &m), 0);
    bb_request *blocker, *big, *small;
    cr_assert_eq(bb_request_new(m, 8, 8, &blocker), 0);
    cr_assert_eq(bb_request_new(m, 8192, 8192, &big), 0);
    cr_assert_eq(bb_request_new(m, 64, 64, &small), 0);
    cr_assert_eq(bb_submit(blocker, NULL), 0);
    bbt_wait_dispatched(m, 1);
    cr_assert_eq(bb_submit(big, NULL), 0);
    /* Reload only once the broker has queued it (accepted under 1M). */
    struct bb_model_stats st = {0};
    for (int i = 0; i < 200 && st.queued != 1; i++) {
        cr_assert_eq(bb_model_stats(m, &st), 0);
        bbt_msleep(5);
    }
    cr_assert_eq(st.queued, 1);
    FILE *f = fopen(B.cfg, "w");
    cr_assert_not_null(f);
    fprintf(f, "%smax_batch_bytes = 1024\n", base);
    fclose(f);
    reload_and_wait("configuration reloaded", 1);
    cr_assert_eq(bb_submit(small, NULL), 0);
    bb_request *all[3] = {blocker, big, small};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(bb_wait(all[i], 5000000000ll), 0, "request %d stranded", i);
        cr_assert_eq(bb_request_status(all[i]), 0, "request %d: %s", i,
                     bb_errname(bb_request_status(all[i])));
    }
    bb_disconnect(c);
}

/* SIGHUP re-reads the file: a reloadable key (max_queue) takes effect, a
 * file that no longer parses changes nothing and the broker keeps serving. */
Test(cli, sighup_reloads_reloadable_keys)
{
    const char *slow = "[model.slow]\nbackend = synthetic\nparam.batch_us = 300000\n"
                       "param.mode = sleep\ninstances = 1\nmax_batch_size = 1\nmax_wait_us = 0\n";
    char text[512];
    snprintf(text, sizeof text, "%smax_queue = 1\n", slow);
    start_logged(text);
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "slow", &m), 0);
    bb_request *r[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(bb_request_new(m, 8, 8, &r[i]), 0);
        memset(bb_request_input(r[i]), 'a' + i, 8);
    }
    /* One runs, one waits, the third is over max_queue = 1. */
    cr_assert_eq(bb_submit(r[0], NULL), 0);
    bbt_wait_dispatched(m, 1);
    cr_assert_eq(bb_submit(r[1], NULL), 0);
    cr_assert_eq(bb_submit(r[2], NULL), 0);
    cr_assert_eq(bb_wait(r[2], 5000000000ll), 0);
    cr_assert_eq(bb_request_status(r[2]), BB_EBUSY);

    /* Raise the limit in the same file and reload. */
    FILE *f = fopen(B.cfg, "w");
    cr_assert_not_null(f);
    fprintf(f, "%smax_queue = 8\n", slow);
    fclose(f);
    reload_and_wait("configuration reloaded", 1);
    cr_assert_eq(bb_wait(r[0], 5000000000ll), 0);
    cr_assert_eq(bb_submit(r[0], NULL), 0);
    cr_assert_eq(bb_submit(r[2], NULL), 0);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(bb_wait(r[i], 5000000000ll), 0);
        cr_assert_eq(bb_request_status(r[i]), 0, "request %d: %s", i,
                     bb_errname(bb_request_status(r[i])));
    }

    /* A broken file: the reload is refused and the broker carries on. */
    f = fopen(B.cfg, "w");
    cr_assert_not_null(f);
    fprintf(f, "[model.slow]\nmax_queue = lots\n");
    fclose(f);
    reload_and_wait("reload refused", 1);
    cr_assert_eq(bb_submit(r[1], NULL), 0);
    cr_assert_eq(bb_wait(r[1], 5000000000ll), 0);
    cr_assert_eq(bb_request_status(r[1]), 0);
    bb_disconnect(c);
}

/* A reload that lowers max_wait_us bounds the adaptive wait at once: the
 * controller takes the new bound at its next decision, and a model that
 * has run no batch yet has none to take. */
Test(cli, reload_lowering_max_wait_bounds_the_adaptive_wait)
{
    start_logged("[model.echo]\nbackend = echo\nadaptive = on\nmax_wait_us = 2000000\n");
    bb_client *c;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    bb_model *m;
    cr_assert_eq(bb_model_open(c, "echo", &m), 0);
    struct bb_model_tuning st;
    cr_assert_eq(bb_model_tuning(m, &st), 0);
    cr_assert_eq(st.wait_us, 2000000);
    FILE *f = fopen(B.cfg, "w");
    cr_assert_not_null(f);
    fprintf(f, "[model.echo]\nbackend = echo\nadaptive = on\nmax_wait_us = 1000\n");
    fclose(f);
    reload_and_wait("configuration reloaded", 1);
    /* Served by another worker than the model's home, the figure is the
     * home's as published each adaptation interval (100 ms). */
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(bb_model_tuning(m, &st), 0);
        if (st.wait_us <= 1000)
            break;
        bbt_msleep(10);
    }
    cr_assert_leq(st.wait_us, 1000, "the wait is %u us with max_wait_us = 1000", st.wait_us);
    bb_disconnect(c);
}
