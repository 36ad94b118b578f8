/* Configuration table: defaults, parsing, every error with its file:line,
 * overrides, the dump round trip and the help text. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "config.h"

#ifndef BB_SOURCE_DIR /* set by tests/CMakeLists.txt */
#define BB_SOURCE_DIR "."
#endif

/* Criterion runs tests in parallel processes: each file gets its own name. */
static void write_tmp(const char *text, char *path, size_t len)
{
    snprintf(path, len, "/tmp/bb_test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp");
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
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

/* The load must fail with "PATH:LINE: ..." and mention what. */
static void expect_error(const char *text, int line, const char *what)
{
    char path[64], err[512] = "", where[96];
    write_tmp(text, path, sizeof path);
    struct bb__broker_config *cfg = new_cfg();
    int rc = bb__config_load(cfg, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, -1, "load of %s succeeded", text);
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    cr_assert(strncmp(err, where, strlen(where)) == 0, "expected '%s...' got '%s'", where, err);
    cr_assert(strstr(err, what), "expected '%s' in '%s'", what, err);
    free(cfg);
}

Test(config, defaults)
{
    struct bb__broker_config *cfg = new_cfg();
    cr_assert_str_eq(cfg->socket_path, "/tmp/batchbroker.sock");
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
    cr_assert_eq(m->max_request_bytes, 0);
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

Test(config, dump_round_trip)
{
    struct bb__broker_config *cfg = load_ok(two_models);
    char path[64], err[512] = "";
    snprintf(path, sizeof path, "/tmp/bb_test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    bb__config_dump(cfg, f);
    fclose(f);
    struct bb__broker_config *again = new_cfg();
    int rc = bb__config_load(again, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert(memcmp(cfg, again, sizeof *cfg) == 0, "the dump re-parses to the same config");
    free(cfg);
    free(again);

    /* The defaults too, echo model included. */
    cfg = new_cfg();
    fd = mkstemp(strcpy(path, "/tmp/bb_test_config_XXXXXX"));
    f = fdopen(fd, "w");
    bb__config_dump(cfg, f);
    fclose(f);
    again = new_cfg();
    again->spin_us = 9; /* must be put back by the dump */
    rc = bb__config_load(again, path, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert(memcmp(cfg, again, sizeof *cfg) == 0);
    free(cfg);
    free(again);
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
