/* Configuration table: defaults, parsing, every error with its file:line,
 * overrides, the dump round trip and the help text. */
#include <criterion/criterion.h>
#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "batchbroker/client.h"
#include "config.h"
#include "socket_path.h"

#ifndef BB_SOURCE_DIR /* set by tests/CMakeLists.txt */
#define BB_SOURCE_DIR "."
#endif

/* Criterion runs tests in parallel processes: each file gets its own name.
 * n bytes of text, NUL bytes included. */
static void write_tmp_bytes(const char *text, size_t n, char *path, size_t len)
{
    snprintf(path, len, "/tmp/bb_test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp");
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static void write_tmp(const char *text, char *path, size_t len)
{
    write_tmp_bytes(text, strlen(text), path, len);
}

static struct bb__broker_config *new_cfg(void)
{
    struct bb__broker_config *cfg = malloc(sizeof *cfg);
    cr_assert(cfg);
    bb__config_defaults(cfg);
    return cfg;
}

static struct bb__broker_config *load_ok(const char *text)
{
    char path[64], err[512] = "";
    write_tmp(text, path, sizeof path);
    struct bb__broker_config *cfg = new_cfg();
    int rc = bb__config_load(cfg, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, 0, "load failed: %s", err);
    return cfg;
}

/* The load of n bytes must fail with "PATH:LINE: ..." and mention what. */
static void expect_error_bytes(const char *text, size_t n, int line, const char *what)
{
    char path[64], err[512] = "", where[96];
    write_tmp_bytes(text, n, path, sizeof path);
    struct bb__broker_config *cfg = new_cfg();
    int rc = bb__config_load(cfg, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, -1, "load of %s succeeded", text);
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    cr_assert(strncmp(err, where, strlen(where)) == 0, "expected '%s...' got '%s'", where, err);
    cr_assert(strstr(err, what), "expected '%s' in '%s'", what, err);
    free(cfg);
}

static void expect_error(const char *text, int line, const char *what)
{
    expect_error_bytes(text, strlen(text), line, what);
}

Test(config, defaults)
{
    struct bb__broker_config *cfg = new_cfg();
    /* The default socket sits where no other user can take it first. */
    char def[108];
    cr_assert_geq(bb__default_socket_path(geteuid(), def, sizeof def), 0);
    cr_assert_str_eq(cfg->socket_path, def);
    cr_assert(strncmp(def, "/tmp/batchbroker.sock", 21) != 0);
    cr_assert_str_eq(cfg->plugin_dir, "");
    cr_assert_eq(cfg->spin_us, 50);
    cr_assert_eq(cfg->max_clients, 256);
    cr_assert_eq(cfg->default_segment_mb, 64);
    cr_assert_eq(cfg->max_segment_mb, 1024);
    cr_assert_eq(cfg->default_max_inflight, 1024);
    cr_assert_eq(cfg->max_inflight, 65536);
    cr_assert_eq(cfg->log_level, 2);
    cr_assert_eq(cfg->ngids, 0);
    int self = 0, root = 0;
    for (size_t i = 0; i < cfg->nuids; i++) {
        self |= cfg->allowed_uids[i] == geteuid();
        root |= cfg->allowed_uids[i] == 0;
    }
    cr_assert(self && root, "own uid and root are allowed");
    cr_assert_eq(cfg->nmodels, 1);
    const struct bb__model_config *m = &cfg->models[0];
    cr_assert_str_eq(m->name, "echo");
    cr_assert_str_eq(m->backend, "echo");
    cr_assert_eq(m->max_batch_size, 32);
    cr_assert_eq(m->max_wait_us, 1000);
    cr_assert_eq(m->adaptive, 1, "adaptive sizing is on by default (a lone request is not held)");
    cr_assert_eq(m->instances, 1);
    cr_assert_eq(m->max_queue, 4096);
    cr_assert_eq(m->default_priority, BB_PRIORITY_NORMAL);
    cr_assert_eq(m->default_timeout_us, 0);
    /* Safe for a model shared by several clients (docs/configuration.md). */
    cr_assert_eq(m->max_request_bytes, 16u << 20);
    cr_assert_eq(m->max_inflight_per_client, 1024);
    cr_assert_eq(m->nparams, 0);
    cr_assert_eq(bb__config_check(cfg, (char[128]){0}, 128), 0);
    free(cfg);
}

static const char two_models[] =
    "; two models\n"
    "[broker]\n"
    "socket = /run/bb.sock\n"
    "  spin_us = 0   ; indented, with a comment\n"
    "log_level = debug\n"
    "allowed_uids = 1000, root\n"
    "allowed_gids = 0,42\n"
    "\n"
    "[model.resnet-50.v2]\n"
    "backend = /opt/lib/bb_backend_mlp.so\n"
    "max_batch_size = 128\n"
    "max_wait_us = 0\n"
    "instances = 0\n"
    "default_priority = high\n"
    "default_timeout_us = 3600000000\n"
    "max_request_bytes = 16M\n"
    "param.weights = /opt/w.bin\n"
    "param.threads = 4\n"
    "param.threads = 8\n"
    "\n"
    "[model.b]\n"
    "backend = synthetic\n"
    "default_priority = 1\n"
    "max_request_bytes = 4294967296\n";

Test(config, two_models_and_params)
{
    struct bb__broker_config *cfg = load_ok(two_models);
    cr_assert_str_eq(cfg->socket_path, "/run/bb.sock");
    cr_assert_eq(cfg->spin_us, 0);
    cr_assert_eq(cfg->log_level, 3);
    cr_assert_eq(cfg->nuids, 2);
    cr_assert_eq(cfg->allowed_uids[0], 1000);
    cr_assert_eq(cfg->allowed_uids[1], 0);
    cr_assert_eq(cfg->ngids, 2);
    cr_assert_eq(cfg->allowed_gids[1], 42);
    cr_assert_eq(cfg->nmodels, 2, "the default echo model is dropped");
    const struct bb__model_config *a = bb__config_model(cfg, "resnet-50.v2");
    cr_assert(a);
    cr_assert_str_eq(a->backend, "/opt/lib/bb_backend_mlp.so");
    cr_assert_eq(a->max_batch_size, 128);
    cr_assert_eq(a->max_wait_us, 0);
    cr_assert_eq(a->instances, 0);
    cr_assert_eq(a->max_queue, 4096);
    cr_assert_eq(a->default_priority, BB_PRIORITY_HIGH);
    cr_assert_eq(a->default_timeout_us, 3600000000u);
    cr_assert_eq(a->max_request_bytes, 16u << 20);
    cr_assert_eq(a->nparams, 2, "a repeated param replaces the first");
    cr_assert_str_eq(a->params[0].key, "weights");
    cr_assert_str_eq(a->params[0].value, "/opt/w.bin");
    cr_assert_str_eq(a->params[1].key, "threads");
    cr_assert_str_eq(a->params[1].value, "8");
    const struct bb__model_config *b = bb__config_model(cfg, "b");
    cr_assert(b);
    cr_assert_str_eq(b->backend, "synthetic");
    cr_assert_eq(b->default_priority, BB_PRIORITY_CRITICAL);
    cr_assert_eq(b->max_request_bytes, 4ull << 30);
    cr_assert_null(bb__config_model(cfg, "echo"));
    free(cfg);
}

Test(config, file_without_models_keeps_echo)
{
    struct bb__broker_config *cfg = load_ok("[broker]\nmax_clients = 4\n");
    cr_assert_eq(cfg->max_clients, 4);
    cr_assert_eq(cfg->nmodels, 1);
    cr_assert_str_eq(cfg->models[0].name, "echo");
    free(cfg);
}

Test(config, model_may_be_called_echo)
{
    struct bb__broker_config *cfg = load_ok("[model.echo]\nbackend = mlp\n");
    cr_assert_eq(cfg->nmodels, 1);
    cr_assert_str_eq(cfg->models[0].backend, "mlp");
    free(cfg);
}

Test(config, unknown_section)
{
    expect_error("[broker]\nspin_us = 1\n\n[brokers]\n", 4, "unknown section [brokers]");
    expect_error("[model]\nbackend = echo\n", 1, "unknown section");
}

Test(config, unknown_key)
{
    expect_error("[broker]\nspin_us = 1\nspin = 2\n", 3, "unknown key 'spin'");
    expect_error("[model.a]\nbackend = echo\n\nbatch = 2\n", 4, "unknown key 'batch' in [model.a]");
    expect_error("max_clients = 2\n", 1, "before any section");
}

Test(config, bad_number)
{
    expect_error("[broker]\nspin_us = fast\n", 2, "not a number");
    expect_error("[broker]\nspin_us = 12x\n", 2, "not a number");
    expect_error("[broker]\nspin_us =\n", 2, "not a number");
    expect_error("[broker]\nspin_us = 0x10\n", 2, "not a number");
    expect_error("[broker]\n\nspin_us = -1\n", 3, "negative");
    expect_error("[broker]\nmax_clients = 18446744073709551616\n", 2, "too large");
    expect_error("[model.a]\nbackend = echo\nmax_request_bytes = 17179869184G\n", 3, "too large");
    expect_error("[model.a]\nbackend = echo\nmax_request_bytes = 1T\n", 3, "not a number");
}

Test(config, out_of_range)
{
    expect_error("[broker]\nspin_us = 1000001\n", 2, "(0..1000000)");
    expect_error("[broker]\nmax_clients = 0\n", 2, "(1..4096)");
    expect_error("[model.a]\nbackend = echo\ninstances = 65\n", 3, "(0..64)");
    expect_error("[model.a]\nbackend = echo\ndefault_timeout_us = 3600000001\n", 3,
                 "(0..3600000000)");
    expect_error("[model.a]\nbackend = echo\nmax_request_bytes = 5G\n", 3, "out of range");
    expect_error("[model.a]\nbackend = echo\ndefault_priority = urgent\n", 3,
                 "critical|high|normal|low");
    expect_error("[model.a]\nbackend = echo\ndefault_priority = 5\n", 3, "1..4");
    expect_error("[broker]\nlog_level = trace\n", 2, "error|warn|info|debug");
    char text[256];
    snprintf(text, sizeof text, "[broker]\nsocket = /%0120d\n", 0);
    expect_error(text, 2, "1..107");
}

Test(config, bad_ids)
{
    expect_error("[broker]\nallowed_uids = 0,no_such_user_bb\n", 2, "unknown user 'no_such_user_bb'");
    expect_error("[broker]\nallowed_gids = no_such_group_bb\n", 2, "unknown group");
    expect_error("[broker]\nallowed_uids = 0,,1\n", 2, "empty entry");
    expect_error("[broker]\nallowed_uids = 4294967295\n", 2, "out of range");
    expect_error("[broker]\nallowed_uids = 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,"
                 "21,22,23,24,25,26,27,28,29,30,31,32,33\n",
                 2, "more than 32");
}

Test(config, duplicate_model)
{
    expect_error("[model.a]\nbackend = echo\n[model.b]\nbackend = echo\n[model.a]\nbackend = x\n", 5,
                 "duplicate section [model.a] (first at line 1)");
}

Test(config, bad_model_name)
{
    expect_error("[model.a b]\nbackend = echo\n", 1, "bad model name");
    expect_error("[model.]\nbackend = echo\n", 1, "bad model name");
    char text[256];
    snprintf(text, sizeof text, "[model.%064d]\nbackend = echo\n", 0);
    expect_error(text, 1, "bad model name");
    snprintf(text, sizeof text, "[model.%063d]\nbackend = echo\n", 0);
    free(load_ok(text));
}

Test(config, too_many_models)
{
    char *text = malloc(8192), *p = text;
    for (int i = 0; i <= BB_MAX_MODELS; i++)
        p += sprintf(p, "[model.m%d]\nbackend = echo\n", i);
    expect_error(text, 2 * BB_MAX_MODELS + 1, "too many models");
    free(text);
}

Test(config, missing_backend)
{
    expect_error("[broker]\n[model.a]\nmax_queue = 8\n[broker]\nspin_us = 1\n", 2,
                 "[model.a] has no backend");
    expect_error("[model.a]\nbackend = echo\n\n[model.b]\n; nothing\n", 4, "[model.b] has no backend");
    expect_error("[model.a]\n", 1, "no backend");
}

Test(config, line_too_long)
{
    char text[1024];
    snprintf(text, sizeof text, "[model.a]\nbackend = echo\nparam.x = %0300d\n", 0);
    expect_error(text, 3, "line too long");
}

/* A NUL byte ends the line for every string function after fgets: the
 * rest of the line would go unread, silently on a last line without '\n'
 * (max_batch_size = 12 from "12\0" "345"), and elsewhere reported as a line
 * too long. */
Test(config, nul_byte)
{
    static const char last[] = "[model.a]\nbackend = echo\nmax_batch_size = 12\0" "345";
    expect_error_bytes(last, sizeof last - 1, 3, "NUL byte");
    static const char mid[] = "[model.a]\nbackend = echo\0/x.so\nmax_queue = 8\n";
    expect_error_bytes(mid, sizeof mid - 1, 2, "NUL byte");
    static const char header[] = "[model.a\0]\nbackend = echo\n";
    expect_error_bytes(header, sizeof header - 1, 1, "NUL byte");
}

/* What the broker would refuse at its start is refused with the file:
 * else a reload takes the file, logs that the key "needs a restart", and
 * the restart fails (exit 2, which the unit does not restart on). */
Test(config, start_time_checks_are_load_errors)
{
    expect_error("[model.a]\nbackend = echo\nclient_weights = 1000:5,bogus\n", 3,
                 "client_weights: expected uid:weight pairs");
    expect_error("[model.a]\nbackend = echo\nclient_weights = 1000:1001\n", 3, "near '1000:1001'");
    char *text = malloc(4096), *p = text;
    p += sprintf(p, "[model.a]\nbackend = echo\nclient_weights = ");
    for (int i = 0; i <= 32; i++)
        p += sprintf(p, "%s%d:2", i ? "," : "", i);
    expect_error(text, 3, "at most 32");
    free(text);
    struct bb__broker_config *cfg =
        load_ok("[model.a]\nbackend = echo\nclient_weights = 1000:5,1001:1000\n");
    free(cfg);
    /* A check across keys, which -o may also change: the file, no line. */
    char path[64], err[512] = "";
    write_tmp("[model.a]\nbackend = echo\nstrategy.x = 1\n", path, sizeof path);
    cfg = new_cfg();
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1, "strategy.x was taken");
    unlink(path);
    cr_assert(strncmp(err, path, strlen(path)) == 0 && strstr(err, "[model.a]") &&
              strstr(err, "custom strategy only"), "%s", err);
    free(cfg);
    /* A strategy name that is no built-in and no path: the start would not
     * find it (bb__strategy_load), so the file is refused now. */
    write_tmp("[model.a]\nbackend = echo\nstrategy = thruput\n", path, sizeof path);
    cfg = new_cfg();
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1, "strategy = thruput was taken");
    unlink(path);
    cr_assert(strstr(err, "[model.a]") && strstr(err, "unknown strategy 'thruput'"), "%s", err);
    free(cfg);
    cfg = load_ok("[model.a]\nbackend = echo\nstrategy = /x/s.so\nstrategy.x = 1\n");
    free(cfg);
}

Test(config, syntax_error)
{
    expect_error("[broker]\nspin_us 5\n", 2, "syntax error");
    expect_error("[broker\n", 1, "without ']'");
}

Test(config, param_limits)
{
    expect_error("[model.a]\nbackend = echo\nparam. = 1\n", 3, "parameter name");
    char *text = malloc(4096), *p = text;
    p += sprintf(p, "[model.a]\nbackend = echo\n");
    for (int i = 0; i <= BB_MAX_PARAMS; i++)
        p += sprintf(p, "param.p%d = %d\n", i, i);
    expect_error(text, 3 + BB_MAX_PARAMS, "more than 32 parameters");
    free(text);
}

/* [broker] metrics_listen: every accepted form, and each bad one with a
 * message that says what is wrong (the broker exits 2 on these). */
Test(config, metrics_listen)
{
    struct bb__broker_config *cfg = new_cfg();
    cr_assert_str_eq(cfg->metrics_listen, "", "off by default");
    cr_assert_eq(cfg->profile, 1, "the profiler is on by default");
    free(cfg);
    struct { const char *in, *addr; unsigned port; } good[] = {
        {"9100", "127.0.0.1", 9100},     {"127.0.0.1:80", "127.0.0.1", 80},
        {"localhost:9100", "127.0.0.1", 9100}, {"*:9100", "0.0.0.0", 9100},
        {"10.1.2.3:65535", "10.1.2.3", 65535}, {"[::1]:9100", "::1", 9100},
        {"[::]:1", "::", 1},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct sockaddr_storage sa;
        socklen_t len;
        char msg[256] = "", host[64] = "";
        cr_assert_eq(bb__config_listen_addr(good[i].in, &sa, &len, msg, sizeof msg), 1, "%s: %s",
                     good[i].in, msg);
        unsigned port;
        if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
            cr_assert_eq(len, sizeof *a);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
            cr_assert_eq(len, sizeof *a);
        }
        cr_assert_str_eq(host, good[i].addr, "%s", good[i].in);
        cr_assert_eq(port, good[i].port, "%s", good[i].in);
    }
    struct sockaddr_storage sa;
    socklen_t len;
    char msg[256];
    cr_assert_eq(bb__config_listen_addr("", &sa, &len, msg, sizeof msg), 0, "empty: off");
    struct { const char *in, *what; } bad[] = {
        {"0", "1..65535"},         {"65536", "1..65535"},      {"http", "not a number"},
        {"9100x", "not a number"}, {"-1", "not a number"},      {"host.example:9100", "IPv4"},
        {"1.2.3:9100", "IPv4"},    {"[::1]9100", "[IPV6]:PORT"}, {"[zz]:9100", "IPv6"},
        {"127.0.0.1:", "not a number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg[0] = '\0';
        cr_assert_eq(bb__config_listen_addr(bad[i].in, &sa, &len, msg, sizeof msg), -1, "%s",
                     bad[i].in);
        cr_assert(strstr(msg, "metrics_listen") && strstr(msg, bad[i].what), "%s: '%s'",
                  bad[i].in, msg);
    }
    /* In a file, with the line. */
    expect_error("[broker]\nmetrics_listen = nowhere:9100\n", 2, "metrics_listen");
    cfg = load_ok("[broker]\nmetrics_listen = 9100\nprofile = off\n");
    cr_assert_str_eq(cfg->metrics_listen, "9100");
    cr_assert_eq(cfg->profile, 0);
    free(cfg);
}

Test(config, cross_key_check)
{
    char path[64], err[512] = "";
    write_tmp("[broker]\ndefault_segment_mb = 2048\n", path, sizeof path);
    struct bb__broker_config *cfg = new_cfg();
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1);
    unlink(path);
    cr_assert(strstr(err, path) && strstr(err, "max_segment_mb"), "%s", err);
    free(cfg);
}

Test(config, failed_load_leaves_config_alone)
{
    char path[64], err[512];
    write_tmp("[broker]\nspin_us = 7\n[model.a]\nbackend = echo\nmax_queue = 0\n", path, sizeof path);
    struct bb__broker_config *cfg = new_cfg(), *ref = new_cfg();
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1);
    unlink(path);
    cr_assert(memcmp(cfg, ref, sizeof *cfg) == 0);
    cr_assert_eq(bb__config_load(cfg, "/nonexistent/bb.ini", err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/bb.ini"), "%s", err);
    free(cfg);
    free(ref);
}

/* Only a regular file of at most 1 MiB: a reload reads it on a dispatcher,
 * which a FIFO (its open waits for a writer) or an endless file would hold. */
Test(config, only_a_regular_file_of_a_sane_size)
{
    char path[64], err[512];
    snprintf(path, sizeof path, "/tmp/bbt-fifo-%d.ini", (int)getpid());
    unlink(path);
    cr_assert_eq(mkfifo(path, 0600), 0);
    struct bb__broker_config *cfg = new_cfg();
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1, "a FIFO was read");
    unlink(path);
    cr_assert(strstr(err, path) && strstr(err, "not a regular file"), "%s", err);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("[broker]\n", f);
    for (int i = 0; i < (1 << 20) / 8; i++)
        fputs("; pad  \n", f);
    fclose(f);
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), -1, "a 1 MiB file was read");
    unlink(path);
    cr_assert(strstr(err, "larger than 1 MiB"), "%s", err);
    free(cfg);
}

/* Where each backend key was set is bookkeeping, not configuration: two
 * loads of the same values from different files compare equal without it. */
static bool same_config(struct bb__broker_config *a, struct bb__broker_config *b)
{
    for (size_t i = 0; i < BB_MAX_MODELS; i++) {
        memset(a->models[i].backend_origin, 0, sizeof a->models[i].backend_origin);
        memset(b->models[i].backend_origin, 0, sizeof b->models[i].backend_origin);
    }
    return memcmp(a, b, sizeof *a) == 0;
}

/* Dump cfg and load the dump over `into` (a fresh default config when
 * NULL): the load must succeed, and the result equal cfg. */
static void assert_dump_reloads(struct bb__broker_config *cfg, struct bb__broker_config *into)
{
    char path[64], err[512] = "";
    int fd = mkstemp(strcpy(path, "/tmp/bb_test_config_XXXXXX"));
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    bb__config_dump(cfg, f);
    fclose(f);
    struct bb__broker_config *again = into ? into : new_cfg();
    int rc = bb__config_load(again, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, 0, "the dump does not load: %s", err);
    cr_assert(same_config(cfg, again), "the dump re-parses to the same config");
    free(again);
}

Test(config, dump_round_trip)
{
    struct bb__broker_config *cfg = load_ok(two_models);
    assert_dump_reloads(cfg, NULL);
    free(cfg);

    /* The defaults too, echo model included. */
    cfg = new_cfg();
    struct bb__broker_config *again = new_cfg();
    again->spin_us = 9; /* must be put back by the dump */
    assert_dump_reloads(cfg, again);
    free(cfg);
}

/* A line that fits only without blanks around its '=' could not come back
 * through the dump, which writes "key = value": refused, saying how long it
 * would be. One that fits as "key = value" loads and its dump reloads.
 * Found by fuzz_config. */
Test(config, line_that_would_not_fit_its_dump)
{
    char text[1024], value[256];
    memset(value, 'v', 190);
    value[190] = '\0';
    snprintf(text, sizeof text, "[model.a]\nbackend = echo\nparam.x=%s\n", value); /* 198 */
    expect_error(text, 3, "line too long: 'param.x = VALUE' is 200 characters (at most 198)");
    value[188] = '\0';
    snprintf(text, sizeof text, "[model.a]\nbackend = echo\nparam.x=%s\n", value);
    struct bb__broker_config *cfg = load_ok(text);
    assert_dump_reloads(cfg, NULL); /* a 198-character "key = value" line */
    free(cfg);
}

/* A value that begins with ';' (right after the '=', where inih does not
 * take it for a comment) could not come back through the dump, which writes
 * "key = value": refused, in the file and in -o alike. Found by fuzz_config. */
Test(config, value_may_not_begin_with_a_semicolon)
{
    expect_error("[model.a]\nbackend =;echo\n", 2, "cannot begin with ';'");
    expect_error("[broker]\nsocket =;x\n", 2, "cannot begin with ';'");
    struct bb__broker_config *cfg = new_cfg();
    char err[512];
    cr_assert_eq(bb__config_set_arg(cfg, "model.a.param.x=;y", err, sizeof err), -1);
    cr_assert(strstr(err, "cannot begin with ';'"), "%s", err);
    /* Inside a value it is only a character. */
    cr_assert_eq(bb__config_set_arg(cfg, "model.a.param.x=y;z", err, sizeof err), 0, "%s", err);
    free(cfg);
}

/* An override holds what no line of a file could: the dump of the
 * configuration would not read back as it (a line break would even start a
 * section of its own). Refused, saying why; the file cannot produce them. */
Test(config, override_that_its_dump_would_not_read_back)
{
    static const struct {
        const char *arg, *why;
    } bad[] = {
        {"model.echo.param.x=a\n[model.evil]\nbackend=/tmp/evil.so", "line break"},
        {"model.echo.param.x= a", "blank"},
        {"model.echo.param.x=a ", "blank"},
        {"broker.plugin_dir=/x\t", "blank"},
        {"model.echo.param.x=a ;b", "comment"},
        {"model.echo.param.x=a\t;b", "comment"},
        {"model.echo.param. =1", "blank"},
        {"model.echo.param.a:b=1", "':'"},
        {"model.echo.param.a ;b=1", "comment"},
        {"model.echo.strategy.a\nb=1", "line break"},
    };
    struct bb__broker_config *cfg = new_cfg(), *ref = new_cfg();
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(bb__config_set_arg(cfg, bad[i].arg, err, sizeof err), -1, "accepted '%s'",
                     bad[i].arg);
        cr_assert(strstr(err, bad[i].why), "'%s': %s", bad[i].arg, err);
    }
    /* Nor a line longer than a file's: "key = value" must fit in one. */
    char arg[512], value[256];
    memset(value, 'v', 188);
    value[188] = '\0';
    snprintf(arg, sizeof arg, "model.echo.param.x=%sv", value);
    cr_assert_eq(bb__config_set_arg(cfg, arg, err, sizeof err), -1, "accepted a 199-character line");
    cr_assert(strstr(err, "line too long: 'param.x = VALUE' is 199 characters (at most 198)"), "%s",
              err);
    cr_assert(memcmp(cfg, ref, sizeof *cfg) == 0, "a refused override changed nothing");
    snprintf(arg, sizeof arg, "model.echo.param.y=%s", value);
    cr_assert_eq(bb__config_set_arg(cfg, arg, err, sizeof err), 0, "%s", err);
    /* What a line can hold: inner blanks, tabs, a ';' after no blank. */
    cr_assert_eq(bb__config_set_arg(cfg, "model.echo.param.x=a b\tc;d", err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(bb__config_set_arg(cfg, "model.echo.param.a b=1", err, sizeof err), 0, "%s", err);
    assert_dump_reloads(cfg, NULL);
    free(cfg);
    free(ref);
}

Test(config, set_overrides)
{
    struct bb__broker_config *cfg = new_cfg();
    char err[512];
    cr_assert_eq(bb__config_set(cfg, "broker", "spin_us", "0", err, sizeof err), 0, "%s", err);
    cr_assert_eq(cfg->spin_us, 0);
    cr_assert_eq(bb__config_set(cfg, "broker", "spin_us", "2000000", err, sizeof err), -1);
    cr_assert(strstr(err, "broker.spin_us") && strstr(err, "0..1000000"), "%s", err);
    cr_assert_eq(cfg->spin_us, 0);
    cr_assert_eq(bb__config_set(cfg, "broker", "nope", "1", err, sizeof err), -1);
    cr_assert_eq(bb__config_set(cfg, "brokr", "spin_us", "1", err, sizeof err), -1);

    cr_assert_eq(bb__config_set(cfg, "model.echo", "max_batch_size", "7", err, sizeof err), 0);
    cr_assert_eq(cfg->models[0].max_batch_size, 7);

    /* A bad value must not leave a half-made model behind. */
    cr_assert_eq(bb__config_set(cfg, "model.new", "instances", "99", err, sizeof err), -1);
    cr_assert_eq(cfg->nmodels, 1);
    cr_assert_eq(bb__config_set(cfg, "model.new", "instances", "2", err, sizeof err), 0);
    cr_assert_eq(cfg->nmodels, 2);
    cr_assert_eq(bb__config_check(cfg, err, sizeof err), -1, "the new model has no backend");
    cr_assert(strstr(err, "[model.new]"), "%s", err);
    cr_assert_eq(bb__config_set(cfg, "model.new", "backend", "mlp", err, sizeof err), 0);
    cr_assert_eq(bb__config_check(cfg, err, sizeof err), 0, "%s", err);

    cr_assert_eq(bb__config_set_arg(cfg, "model.v1.2.param.layers=3", err, sizeof err), 0, "%s",
                 err);
    struct bb__model_config *m = bb__config_model(cfg, "v1.2");
    cr_assert(m);
    cr_assert_str_eq(m->params[0].key, "layers");
    cr_assert_eq(bb__config_set_arg(cfg, "model.v1.2.max_wait_us=5", err, sizeof err), 0, "%s", err);
    cr_assert_eq(m->max_wait_us, 5);
    /* Where the model's name holds ".param.", the split that names it. */
    cr_assert_eq(bb__config_set(cfg, "model.p.param.q", "backend", "echo", err, sizeof err), 0);
    cr_assert_eq(bb__config_set_arg(cfg, "model.p.param.q.max_wait_us=9", err, sizeof err), 0,
                 "%s", err);
    cr_assert_null(bb__config_model(cfg, "p"), "-o made a model 'p' with a param");
    cr_assert_eq(bb__config_model(cfg, "p.param.q")->max_wait_us, 9);
    /* Neither model configured, or both: refused, not guessed. */
    cr_assert_eq(bb__config_set_arg(cfg, "model.u.param.v.max_wait_us=9", err, sizeof err), -1);
    cr_assert(strstr(err, "ambiguous"), "%s", err);
    cr_assert_eq(bb__config_set(cfg, "model.p", "backend", "echo", err, sizeof err), 0);
    cr_assert_eq(bb__config_set_arg(cfg, "model.p.param.q.max_wait_us=9", err, sizeof err), -1);
    cr_assert(strstr(err, "ambiguous"), "%s", err);
    cr_assert_eq(bb__config_set_arg(cfg, "broker.log_level=warn", err, sizeof err), 0, "%s", err);
    cr_assert_eq(cfg->log_level, 1);
    cr_assert_eq(bb__config_set_arg(cfg, "broker.spin_us", err, sizeof err), -1);
    cr_assert_eq(bb__config_set_arg(cfg, "model.x.nokey=1", err, sizeof err), -1);
    free(cfg);
}

static char *capture_help(int markdown)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    bb__config_help(f, markdown);
    fclose(f);
    return buf;
}

Test(config, help_lists_every_key)
{
    static const char *const keys[] = {
        "socket", "plugin_dir", "spin_us", "max_clients", "default_segment_mb", "max_segment_mb",
        "default_max_inflight", "max_inflight", "log_level", "allowed_uids", "allowed_gids",
        "backend", "max_batch_size", "max_wait_us", "instances", "max_queue", "default_priority",
        "default_timeout_us", "max_request_bytes", "param.*",
    };
    char *md = capture_help(1), *text = capture_help(0);
    cr_assert(strstr(md, "| section | key |"));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char cell[64];
        snprintf(cell, sizeof cell, "| `%s` |", keys[i]);
        cr_assert(strstr(md, cell), "markdown lacks %s", keys[i]);
        snprintf(cell, sizeof cell, "  %s = ", keys[i]);
        cr_assert(strstr(text, cell), "help lacks %s", keys[i]);
    }
    cr_assert(strstr(md, "| `[broker]` | `spin_us` | integer | 0..1000000 | `50` | yes |"));
    cr_assert_null(strstr(text, "`"), "plain help has no markdown");
    free(md);
    free(text);
}

/* docs/configuration.md carries a pasted copy of the table: keep it current. */
Test(config, docs_table_is_current)
{
    FILE *f = fopen(BB_SOURCE_DIR "/docs/configuration.md", "r");
    if (!f)
        cr_skip_test("docs/configuration.md not found");
    char *doc = malloc(1 << 16);
    size_t n = fread(doc, 1, (1 << 16) - 1, f);
    doc[n] = '\0';
    fclose(f);
    char *md = capture_help(1);
    cr_assert(strstr(doc, md), "paste the output of bb__config_help(out, 1) into the docs");
    free(md);
    free(doc);
}

/* A backend that fails to load is reported with where its key was set. */
Test(config, backend_origin)
{
    char path[64], err[512] = "";
    write_tmp("[broker]\nspin_us = 1\n\n[model.a]\nmax_batch_size = 4\nbackend = echo\n", path,
              sizeof path);
    struct bb__broker_config *cfg = new_cfg();
    cr_assert_str_eq(cfg->models[0].backend_origin, "the default configuration");
    cr_assert_eq(bb__config_load(cfg, path, err, sizeof err), 0, "%s", err);
    char want[128];
    snprintf(want, sizeof want, "%s:6", path);
    cr_assert_str_eq(cfg->models[0].backend_origin, want);
    unlink(path);
    cr_assert_eq(bb__config_set_arg(cfg, "model.a.backend=synthetic", err, sizeof err), 0, "%s",
                 err);
    cr_assert_str_eq(cfg->models[0].backend_origin, "-o model.a.backend=synthetic");
    cr_assert_eq(bb__config_set_arg(cfg, "model.b.backend=echo", err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(cfg->models[1].backend_origin, "-o model.b.backend=echo");
    free(cfg);
}

/* A reload names each key it changed, with the old and the new value, and
 * each change it could not apply. */
Test(config, reload_names_the_keys)
{
    struct bb__broker_config *cur = new_cfg(), *next = new_cfg();
    char err[512], changed[1024], skipped[1024];
    cr_assert_eq(bb__config_set_arg(next, "model.echo.max_wait_us=250", err, sizeof err), 0);
    cr_assert_eq(bb__config_set_arg(next, "broker.log_level=debug", err, sizeof err), 0);
    cr_assert_eq(bb__config_set_arg(next, "broker.allowed_uids=0,4242", err, sizeof err), 0);
    cr_assert_eq(bb__config_set_arg(next, "model.echo.max_batch_size=8", err, sizeof err), 0);
    int n = bb__config_reload(cur, next, changed, sizeof changed, skipped, sizeof skipped);
    cr_assert_eq(n, 3, "changed: %s", changed);
    cr_assert(strstr(changed, "model.echo.max_wait_us 1000 -> 250"), "%s", changed);
    cr_assert(strstr(changed, "broker.log_level info -> debug"), "%s", changed);
    cr_assert(strstr(changed, "broker.allowed_uids"), "%s", changed);
    cr_assert(strstr(changed, "-> 0,4242"), "%s", changed);
    cr_assert_str_eq(skipped, "model.echo.max_batch_size");
    cr_assert_eq(cur->models[0].max_wait_us, 250);
    cr_assert_eq(cur->nuids, 2);
    /* Nothing new: nothing changed. */
    n = bb__config_reload(cur, next, changed, sizeof changed, skipped, sizeof skipped);
    cr_assert_eq(n, 0, "changed: %s", changed);
    cr_assert_str_eq(changed, "");
    free(cur);
    free(next);
}

/* --config-reference=man: one tagged paragraph per key, roff-escaped. */
Test(config, reference_formats)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_eq(bb__config_reference(f, "man"), 0);
    fclose(f);
    cr_assert(strstr(buf, ".SS \"[broker]\"\n"), "%s", buf);
    cr_assert(strstr(buf, ".SS \"[model.NAME]\"\n"));
    cr_assert(strstr(buf, ".TP\n.B max_batch_size\n"));
    cr_assert(strstr(buf, "\\-"), "minus signs are escaped");
    cr_assert(!strstr(buf, "\\|"), "markdown's escaped bars do not reach roff");
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        cr_assert(line[0] != '\'', "a line starts with a control character");
    free(buf);
    f = open_memstream(&buf, &len);
    cr_assert_eq(bb__config_reference(f, NULL), 0);
    cr_assert_eq(bb__config_reference(f, "pdf"), -1);
    fclose(f);
    cr_assert(strncmp(buf, "| section | key |", 17) == 0);
    free(buf);
}
