/* Plugin loader (broker/plugin.c) and the built-in echo and synthetic backends.
 * BB_PLUGIN_DIR is the build's backends/ directory; the two deliberately
 * broken plugins from tests/plugins/ are built into BB_TEST_PLUGIN_DIR. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "plugin.h"

#ifndef BB_PLUGIN_DIR
#error "the build must define BB_PLUGIN_DIR"
#endif

#define cr_assert_contains(hay, needle) \
    cr_assert(strstr((hay), (needle)), "\"%s\" does not contain \"%s\"", (hay), (needle))

static void load_from(const char *name, const char *dir, struct bb__plugin *p)
{
    char err[512] = "";
    int rc = bb__plugin_load(name, dir, p, err, sizeof err);
    cr_assert_eq(rc, 0, "loading %s: %s", name, err);
    cr_assert_not_null(p->ops);
    cr_assert_str_eq(p->ops->name, name);
}

/* A built-in plugin (BB_PLUGIN_DIR); the tests' own are in BB_TEST_PLUGIN_DIR. */
static void load(const char *name, struct bb__plugin *p)
{
    load_from(name, BB_PLUGIN_DIR, p);
}

/* Loading must fail; returns the message for the caller to inspect. */
static void refuse(const char *name, const char *dir, char *err, size_t errlen)
{
    struct bb__plugin p;
    memset(&p, 0xff, sizeof p); /* a refusal must leave it zeroed */
    err[0] = '\0';
    cr_assert_eq(bb__plugin_load(name, dir, &p, err, errlen), -1, "%s loaded", name);
    cr_assert_null(p.dl);
    cr_assert_null(p.ops);
    cr_assert_neq(err[0], '\0', "no message for %s", name);
    bb__plugin_unload(&p); /* harmless on the zeroed struct */
}

/* A batch of n requests, input i = "req-<i>" padded to in_len[i] bytes. */
struct batch {
    struct bb_batch b;
    struct bb_view in[8];
    struct bb_outbuf out[8];
    uint8_t prio[8];
    char inbuf[8][64];
    char outbuf[8][64];
    char errmsg[256];
};

static void make_batch(struct batch *t, uint32_t n, const size_t *in_len, const size_t *cap)
{
    memset(t, 0, sizeof *t);
    for (uint32_t i = 0; i < n; i++) {
        memset(t->inbuf[i], 'a' + (int)i, sizeof t->inbuf[i]);
        snprintf(t->inbuf[i], sizeof t->inbuf[i], "req-%u", (unsigned)i);
        t->in[i] = (struct bb_view){t->inbuf[i], in_len[i]};
        memset(t->outbuf[i], '#', sizeof t->outbuf[i]);
        t->out[i] = (struct bb_outbuf){.ptr = t->outbuf[i], .cap = cap[i]};
        t->prio[i] = BB_PRIORITY_NORMAL;
    }
    t->b = (struct bb_batch){.n = n, .numa_node = 0, .inputs = t->in, .outputs = t->out,
                             .priorities = t->prio, .errmsg = t->errmsg,
                             .errmsg_cap = sizeof t->errmsg};
}

static void assert_echoed(const struct batch *t, uint32_t i)
{
    cr_assert_eq(t->out[i].status, 0, "request %u status %d", (unsigned)i, t->out[i].status);
    cr_assert_eq(t->out[i].len, t->in[i].len, "request %u len", (unsigned)i);
    cr_assert_arr_eq(t->outbuf[i], t->inbuf[i], t->in[i].len, "request %u bytes", (unsigned)i);
    /* Nothing past len was written. */
    if (t->in[i].len < sizeof t->outbuf[i])
        cr_assert_eq(t->outbuf[i][t->in[i].len], '#', "request %u overran", (unsigned)i);
}

/* Run one 3-request batch through an initialised backend and check the echo. */
static void run_three(const struct bb__plugin *p, void *state)
{
    const size_t in_len[3] = {6, 0, 40}, cap[3] = {64, 64, 40};
    struct batch t;
    make_batch(&t, 3, in_len, cap);
    cr_assert_eq(p->ops->process(state, &t.b), 0, "process: %s", t.errmsg);
    for (uint32_t i = 0; i < 3; i++) assert_echoed(&t, i);
}

static int init_with(const struct bb__plugin *p, const struct bb_param *params, size_t n,
                     void **state, char *err, size_t errlen)
{
    err[0] = '\0';
    *state = NULL;
    return p->ops->init(params, n, state, err, errlen);
}

Test(plugin, echo_by_name)
{
    struct bb__plugin p;
    load("echo", &p);
    cr_assert_contains(p.path, "/bb_backend_echo.so");
    cr_assert_eq(p.ops->abi_version, BB_BACKEND_ABI_VERSION);
    char err[256];
    void *state;
    cr_assert_eq(init_with(&p, NULL, 0, &state, err, sizeof err), 0, "%s", err);
    run_three(&p, state);
    p.ops->fini(state);
    bb__plugin_unload(&p);
    cr_assert_null(p.dl);
    cr_assert_null(p.ops);
}

Test(plugin, echo_by_path)
{
    struct bb__plugin p;
    char err[512] = "";
    cr_assert_eq(bb__plugin_load(BB_PLUGIN_DIR "/bb_backend_echo.so", NULL, &p, err, sizeof err),
                 0, "%s", err);
    cr_assert_str_eq(p.ops->name, "echo");
    bb__plugin_unload(&p);
}

Test(plugin, echo_too_big)
{
    struct bb__plugin p;
    load("echo", &p);
    char err[256];
    void *state;
    cr_assert_eq(init_with(&p, NULL, 0, &state, err, sizeof err), 0, "%s", err);
    const size_t in_len[3] = {10, 20, 5}, cap[3] = {10, 8, 0};
    struct batch t;
    make_batch(&t, 3, in_len, cap);
    cr_assert_eq(p.ops->process(state, &t.b), 0);
    assert_echoed(&t, 0); /* exactly fits */
    /* Too big: only cap bytes written, and that request alone fails. */
    cr_assert_eq(t.out[1].status, BB_ETOOBIG);
    cr_assert_eq(t.out[1].len, 8);
    cr_assert_arr_eq(t.outbuf[1], t.inbuf[1], 8);
    cr_assert_eq(t.outbuf[1][8], '#');
    cr_assert_eq(t.out[2].status, BB_ETOOBIG);
    cr_assert_eq(t.out[2].len, 0);
    cr_assert_eq(t.outbuf[2][0], '#');
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

Test(plugin, echo_rejects_params)
{
    struct bb__plugin p;
    load("echo", &p);
    char err[256];
    void *state;
    const struct bb_param params[] = {{"batch_us", "5"}};
    cr_assert_eq(init_with(&p, params, 1, &state, err, sizeof err), BB_EINVAL);
    cr_assert_contains(err, "batch_us");
    bb__plugin_unload(&p);
}

Test(plugin, synthetic_by_name)
{
    struct bb__plugin p;
    load("synthetic", &p);
    char err[256];
    void *state;
    cr_assert_eq(init_with(&p, NULL, 0, &state, err, sizeof err), 0, "%s", err);
    run_three(&p, state);
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

static double elapsed_us(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

/* Not a timing assertion in the benchmark sense: both modes wait for an
 * absolute deadline, so the cost is a lower bound by construction. */
static void check_cost(const char *mode)
{
    struct bb__plugin p;
    load("synthetic", &p);
    char err[256];
    void *state;
    const struct bb_param params[] = {
        {"batch_us", "1000"}, {"item_us", "500.5"}, {"mode", mode}};
    cr_assert_eq(init_with(&p, params, 3, &state, err, sizeof err), 0, "%s", err);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_three(&p, state);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_geq(elapsed_us(&t0, &t1), 1000 + 3 * 500.5, "%s mode ran short", mode);
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

Test(plugin, synthetic_cost_spin)
{
    check_cost("spin");
}

Test(plugin, synthetic_cost_sleep)
{
    check_cost("sleep");
}

Test(plugin, synthetic_param_validation)
{
    struct bb__plugin p;
    load("synthetic", &p);
    static const struct {
        const char *key, *value, *msg;
    } bad[] = {
        {"bogus", "1", "unknown param \"bogus\""},
        {"batch_us", "", "batch_us"},
        {"batch_us", "abc", "batch_us = \"abc\""},
        {"batch_us", "-1", "batch_us"},
        {"batch_us", " 1", "batch_us"},
        {"batch_us", "1x", "batch_us"},
        {"batch_us", ".", "batch_us"},
        {"batch_us", "1.2.3", "batch_us"},
        {"batch_us", "inf", "batch_us"},
        {"batch_us", "0x10", "batch_us"},
        {"item_us", "99999999", "item_us"},
        {"item_us", "1e3", "item_us"},
        {"fail_every", "1.5", "fail_every"},
        {"fail_every", "-3", "fail_every"},
        {"fail_every", "99999999999999999999999", "fail_every"},
        {"mode", "burn", "spin or sleep"},
        {"mode", "", "mode"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256];
        void *state;
        const struct bb_param param = {bad[i].key, bad[i].value};
        cr_assert_eq(init_with(&p, &param, 1, &state, err, sizeof err), BB_EINVAL,
                     "%s = \"%s\" accepted", bad[i].key, bad[i].value);
        cr_assert_contains(err, bad[i].msg);
    }
    /* Every good form, together. */
    const struct bb_param good[] = {{"batch_us", "0"}, {"item_us", "0.25"}, {"mode", "sleep"},
                                    {"fail_every", "0"}, {"batch_us", "5."}};
    char err[256];
    void *state;
    cr_assert_eq(init_with(&p, good, 5, &state, err, sizeof err), 0, "%s", err);
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

Test(plugin, synthetic_fail_every)
{
    struct bb__plugin p;
    load("synthetic", &p);
    char err[256];
    void *state;
    const struct bb_param params[] = {{"fail_every", "3"}};
    cr_assert_eq(init_with(&p, params, 1, &state, err, sizeof err), 0, "%s", err);
    const size_t in_len[1] = {6}, cap[1] = {64};
    for (int k = 1; k <= 7; k++) {
        struct batch t;
        make_batch(&t, 1, in_len, cap);
        int rc = p.ops->process(state, &t.b);
        if (k % 3 == 0) {
            cr_assert_eq(rc, BB_EBACKEND, "batch %d", k);
            cr_assert_str_eq(t.errmsg, "synthetic failure (fail_every=3)");
        } else {
            cr_assert_eq(rc, 0, "batch %d: %s", k, t.errmsg);
            assert_echoed(&t, 0);
        }
    }
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

Test(plugin, refuses_bad_abi)
{
    char err[512];
    refuse("badabi", BB_TEST_PLUGIN_DIR, err, sizeof err);
    cr_assert_contains(err, "bb_backend_badabi.so");
    cr_assert_contains(err, "built against backend ABI version 999");
    cr_assert_contains(err, "speaks versions 1 and 2");
    cr_assert_contains(err, "rebuild it against this broker's include/batchbroker/backend.h");
}

/* One defect per table (tests/plugins/badtable.c): each refused, with a
 * message that names it. */
Test(plugin, refuses_bad_tables)
{
    static const struct {
        const char *name, *msg;
    } bad[] = {
        {"bad_v1_size", "table of ABI version 1 is"},
        {"bad_v2_size", "table of ABI version 2 is"},
        {"bad_two_inits", "exactly one of init() and init2()"},
        {"bad_no_run", "neither process() nor submit()"},
        {"bad_no_inflight", "max_inflight is 0; with submit() it must be 1..64"},
        {"bad_v1_register", "register_memory()/unregister_memory() are ABI 1's"},
        {"bad_half_register", "only one of register_segment() and unregister_segment()"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[512];
        refuse(bad[i].name, BB_TEST_PLUGIN_DIR, err, sizeof err);
        cr_assert_contains(err, bad[i].name);
        cr_assert_contains(err, bad[i].msg);
    }
    /* A wrong size says what to rebuild against. */
    char err[512];
    refuse("bad_v1_size", BB_TEST_PLUGIN_DIR, err, sizeof err);
    cr_assert_contains(err, "rebuild it against this broker's include/batchbroker/backend.h");
}

/* A plugin built against the version-1 header (tests/plugins/v1echo.c)
 * loads; the broker sees its table as a version-2 table whose new fields
 * are zero, and the plugin's own table is read no further than its size. */
Test(plugin, loads_version_1)
{
    struct bb__plugin p;
    load_from("v1echo", BB_TEST_PLUGIN_DIR, &p);
    cr_assert_eq(p.abi, 1);
    cr_assert_eq(p.ops->struct_size, BB_BACKEND_OPS_V1_SIZE);
    cr_assert_not_null(p.ops->init);
    cr_assert_not_null(p.ops->register_memory);
    cr_assert_null(p.ops->init2);
    cr_assert_null(p.ops->submit);
    cr_assert_null(p.ops->register_segment);
    cr_assert_eq(p.ops->max_inflight, 0);
    char err[256];
    void *state;
    cr_assert_eq(init_with(&p, NULL, 0, &state, err, sizeof err), 0, "%s", err);
    p.ops->fini(state);
    bb__plugin_unload(&p);
}

Test(plugin, loads_version_2_async)
{
    struct bb__plugin p;
    load_from("asyncecho", BB_TEST_PLUGIN_DIR, &p);
    cr_assert_eq(p.abi, 2);
    cr_assert_null(p.ops->init);
    cr_assert_null(p.ops->process);
    cr_assert_not_null(p.ops->init2);
    cr_assert_not_null(p.ops->submit);
    cr_assert_eq(p.ops->max_inflight, 2);
    bb__plugin_unload(&p);
}

Test(plugin, refuses_missing_entry)
{
    char err[512];
    refuse("noentry", BB_TEST_PLUGIN_DIR, err, sizeof err);
    cr_assert_contains(err, "bb_backend_noentry.so");
    cr_assert_contains(err, "no entry symbol " BB_BACKEND_ENTRY_SYMBOL);
}

Test(plugin, refuses_missing_file)
{
    char err[512];
    refuse("nosuch", BB_PLUGIN_DIR, err, sizeof err);
    cr_assert_contains(err, BB_PLUGIN_DIR "/bb_backend_nosuch.so");
    refuse("/nonexistent/dir/x.so", NULL, err, sizeof err);
    cr_assert_contains(err, "/nonexistent/dir/x.so");
}

Test(plugin, refuses_invalid_name)
{
    static const char *names[] = {"", "echo.so", "ec ho", "echo;rm", "..", "écho", "e\\x"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char err[512];
        refuse(names[i], BB_PLUGIN_DIR, err, sizeof err);
        cr_assert_contains(err, "invalid backend name");
    }
    char err[512];
    struct bb__plugin p;
    cr_assert_eq(bb__plugin_load(NULL, BB_PLUGIN_DIR, &p, err, sizeof err), -1);
}

Test(plugin, refuses_overlong_path)
{
    char dir[600];
    memset(dir, 'd', sizeof dir - 1);
    dir[0] = '/';
    dir[sizeof dir - 1] = '\0';
    char err[1024];
    refuse("echo", dir, err, sizeof err);
    cr_assert_contains(err, "longer than");
}

/* plugin_dir argument, then $BATCHBROKER_PLUGIN_DIR, then BB_PLUGIN_DIR.
 * Criterion runs each test in its own process, so setenv stays here. */
Test(plugin, dir_precedence)
{
    char err[512];
    struct bb__plugin p;
    setenv("BATCHBROKER_PLUGIN_DIR", "/env/dir", 1);
    refuse("echo", NULL, err, sizeof err);
    cr_assert_contains(err, "/env/dir/bb_backend_echo.so");
    refuse("echo", "", err, sizeof err);
    cr_assert_contains(err, "/env/dir/bb_backend_echo.so");
    cr_assert_eq(bb__plugin_load("echo", BB_PLUGIN_DIR, &p, err, sizeof err), 0, "%s", err);
    bb__plugin_unload(&p);

    setenv("BATCHBROKER_PLUGIN_DIR", BB_PLUGIN_DIR, 1);
    cr_assert_eq(bb__plugin_load("echo", NULL, &p, err, sizeof err), 0, "%s", err);
    bb__plugin_unload(&p);
    refuse("echo", "/arg/dir", err, sizeof err);
    cr_assert_contains(err, "/arg/dir/bb_backend_echo.so");

    /* Unset or empty: the build's default, which the test build points at the
     * real plugins. */
    setenv("BATCHBROKER_PLUGIN_DIR", "", 1);
    cr_assert_eq(bb__plugin_load("echo", NULL, &p, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(p.path, BB_PLUGIN_DIR "/bb_backend_echo.so");
    bb__plugin_unload(&p);
    unsetenv("BATCHBROKER_PLUGIN_DIR");
    cr_assert_eq(bb__plugin_load("echo", NULL, &p, err, sizeof err), 0, "%s", err);
    bb__plugin_unload(&p);
}

/* The ABI's layout on 64-bit Linux, hard-coded so that a change breaks this
 * test on purpose: a plugin built against one layout must meet the same
 * one in the broker. Version 2 only appends to version 1 (96 bytes). */
Test(plugin, abi_layout)
{
    cr_assert_eq(BB_BACKEND_OPS_V1_SIZE, 96);
    cr_assert_eq(offsetof(struct bb_backend_ops, reserved), 64);
    cr_assert_eq(offsetof(struct bb_backend_ops, init2), 96);
    cr_assert_eq(offsetof(struct bb_backend_ops, register_segment), 104);
    cr_assert_eq(offsetof(struct bb_backend_ops, unregister_segment), 112);
    cr_assert_eq(offsetof(struct bb_backend_ops, submit), 120);
    cr_assert_eq(offsetof(struct bb_backend_ops, max_inflight), 128);
    cr_assert_eq(offsetof(struct bb_backend_ops, reserved2), 136);
    cr_assert_eq(sizeof(struct bb_backend_ops), 168);
    cr_assert_eq(offsetof(struct bb_batch, errmsg_cap), 40);
    cr_assert_eq(offsetof(struct bb_batch, segments), 48);
    cr_assert_eq(offsetof(struct bb_batch, complete), 56);
    cr_assert_eq(sizeof(struct bb_batch), 64);
    cr_assert_eq(offsetof(struct bb_init_args, max_batch_size), 16);
    cr_assert_eq(offsetof(struct bb_init_args, params), 32);
    cr_assert_eq(offsetof(struct bb_init_args, log), 48);
    cr_assert_eq(sizeof(struct bb_init_args), 64);
    cr_assert_eq(offsetof(struct bb_segment, id), 4);
    cr_assert_eq(offsetof(struct bb_segment, base), 8);
    cr_assert_eq(offsetof(struct bb_segment, numa_node), 24);
    cr_assert_eq(sizeof(struct bb_segment), 32);
}

Test(plugin, unload_zeroed)
{
    struct bb__plugin p;
    memset(&p, 0, sizeof p);
    bb__plugin_unload(&p);
    bb__plugin_unload(NULL);
}
