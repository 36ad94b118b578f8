/* blas backend (backends/blas.c) and its weight file (backends/bbdense.c):
 * the loader against truncated, corrupt and inconsistent files, every
 * activation against a double-precision reference, per-request size checks,
 * the in-place and gathered input paths, instance threads, and the full
 * Fashion-MNIST test set through a broker from 4 client processes. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "bbdense.h"
#include "classify.h"
#include "netfile.h"

static void fini_all(void)
{
    bbt_cleanup_all();
}

TestSuite(blas, .fini = fini_all, .timeout = 300);

/* ---- the loader ---------------------------------------------------------- */

static void expect_refused(const unsigned char *buf, size_t len, const char *what)
{
    struct bbd_net net;
    char err[256] = "";
    int rc = bbd_parse(buf, len, &net, err, sizeof err);
    cr_assert_lt(rc, 0, "accepted: %s", what);
    cr_assert_neq(err[0], '\0', "no message: %s", what);
    cr_assert_null(net.layers, "%s: left allocations behind", what);
}

static void expect_message(unsigned char *buf, size_t len, const char *needle)
{
    struct bbd_net net;
    char err[256] = "";
    bbt_seal(buf, len);
    cr_assert_lt(bbd_parse(buf, len, &net, err, sizeof err), 0, "accepted (want \"%s\")", needle);
    cr_assert(strstr(err, needle), "\"%s\" does not say \"%s\"", err, needle);
}

Test(blas, loader_accepts_what_it_should)
{
    const struct bbt_layer_spec s[] = {{5, 7, BBD_ACT_TANH}, {7, 3, BBD_ACT_SOFTMAX}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 1, &len);
    struct bbd_net net;
    char err[256];
    cr_assert_eq(bbd_parse(b, len, &net, err, sizeof err), 0, "%s", err);
    cr_assert_eq(net.nlayers, 2);
    cr_assert_eq(net.in_dim, 5);
    cr_assert_eq(net.out_dim, 3);
    cr_assert_eq(net.max_dim, 7);
    cr_assert_eq(net.layers[1].act, BBD_ACT_SOFTMAX);
    bbd_free(&net);
    free(b);
}

Test(blas, loader_refuses_every_truncation_and_corruption)
{
    const struct bbt_layer_spec s[] = {{6, 4, BBD_ACT_RELU}, {4, 2, BBD_ACT_IDENTITY}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 2, &len);
    for (size_t cut = 0; cut < len; cut++) expect_refused(b, cut, "a truncated file");
    /* CRC-32 catches every burst of up to 32 bits: each flipped byte. */
    uint64_t rng = 99;
    for (int i = 0; i < 3000; i++) {
        size_t at = bbt_rand(&rng) % len;
        unsigned char old = b[at], x = (unsigned char)(bbt_rand(&rng) | 1);
        b[at] ^= x;
        expect_refused(b, len, "a flipped byte");
        b[at] = old;
    }
    /* Random words in the header and table with a correct checksum: refused
     * or accepted, never a crash or an overrun (the ASan-free check is that
     * every accepted file still describes itself consistently). */
    for (int i = 0; i < 3000; i++) {
        unsigned char *c = malloc(len);
        memcpy(c, b, len);
        size_t at = 8 + bbt_rand(&rng) % (BBD_HEADER_BYTES + 2 * BBD_LAYER_BYTES - 8 - 3);
        bbt_put32(c + at, (uint32_t)(bbt_rand(&rng) >> (bbt_rand(&rng) % 32)));
        bbt_seal(c, len);
        struct bbd_net net;
        char err[256];
        if (bbd_parse(c, len, &net, err, sizeof err) == 0) {
            cr_assert_eq(net.layers[0].in, 6);
            bbd_free(&net);
        }
        free(c);
    }
    free(b);
}

Test(blas, loader_names_what_is_wrong)
{
    const struct bbt_layer_spec s[] = {{6, 4, BBD_ACT_RELU}, {4, 2, BBD_ACT_IDENTITY}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 3, &len), *c = malloc(len);
    const size_t t0 = BBD_HEADER_BYTES, t1 = BBD_HEADER_BYTES + BBD_LAYER_BYTES;
    struct {
        size_t at;
        uint32_t v;
        const char *msg;
    } cases[] = {
        {8, 2, "format version 2"},
        {12, 0, "0 layers"},
        {12, 65, "65 layers"},
        {16, 1, "must be 0"},
        {t0 + 8, 9, "unknown activation id 9"},
        {t0 + 12, 7, "layer 0: reserved field is 7, must be 0"},
        {20, 1, "must be 0"},
        {t1, 5, "layer 1 takes 5 inputs, layer 0 gives 4"},
        {t0, 0, "layer 0 is 0 -> 4"},
        {t0 + 4, 70000, "dimensions 1 to 65536"},
        {t1 + 4, 3, "size mismatch"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(c, b, len);
        bbt_put32(c + cases[i].at, cases[i].v);
        expect_message(c, len, cases[i].msg);
    }
    memcpy(c, b, len);
    memcpy(c, "BBDENSF", 8);
    expect_message(c, len, "bad magic");
    memcpy(c, b, len);
    bbt_put32(c + t1 + BBD_LAYER_BYTES + 4 * 3, 0x7fc00000u); /* a NaN weight */
    expect_message(c, len, "layer 0: weight 3 is not finite");
    memcpy(c, b, len);
    c[len - 1] ^= 0x40;
    expect_refused(c, len, "bad checksum");
    free(b);
    free(c);
}

/* ---- the backend on small networks --------------------------------------- */

/* plan: up to two more params ("gemv_below=...", "gemm_rows=..."), or NULL
 * for the default (both auto: measured at init). */
static struct bbt_plugin open_blas_plan(const char *weights, const char *threads,
                                        const char *plan1, const char *plan2)
{
    char wparam[600], tparam[64], err[512];
    snprintf(wparam, sizeof wparam, "weights=%s", weights);
    snprintf(tparam, sizeof tparam, "threads=%s", threads);
    const char *kv[] = {wparam, tparam, plan1, plan2, NULL};
    struct bbt_plugin p;
    int rc = bbt_plugin_open(&p, "blas", kv, err, sizeof err);
    cr_assert_eq(rc, 0, "blas init: %s", err);
    return p;
}

/* gemv: "gemv_below=..." (0: GEMM at every size, 65536: GEMV at every size),
 * each share in one call. */
static struct bbt_plugin open_blas_gemv(const char *weights, const char *threads, const char *gemv)
{
    return open_blas_plan(weights, threads, gemv, NULL);
}

static struct bbt_plugin open_blas(const char *weights, const char *threads)
{
    return open_blas_plan(weights, threads, NULL, NULL);
}

Test(blas, every_activation_matches_a_double_reference)
{
    for (uint32_t act = 0; act < BBD_NACT; act++) {
        const struct bbt_layer_spec s[] = {{12, 9, BBD_ACT_RELU}, {9, 5, act}};
        char path[108];
        struct bbd_net net;
        bbt_net_file(s, 2, 10 + act, path, sizeof path, &net);
        /* Sizes through every path: one GEMM, GEMVs, GEMMs of 3 rows at
         * most (1, 9, 17, ...: whole pieces and a last one of 2), of 48
         * (70 = 48 + 22), the measured plan (70 rows: blocks of 64 in
         * pieces, or one GEMM). */
        static const char *const way[][3] = {{"gemv_below=0", NULL, "GEMM"},
                                             {"gemv_below=65536", NULL, "GEMV"},
                                             {"gemv_below=0", "gemm_rows=3", "GEMMs of 3"},
                                             {"gemv_below=0", "gemm_rows=48", "GEMMs of 48"},
                                             {NULL, NULL, "measured plan"}};
        static const uint32_t sizes[] = {1, 9, 17, 25, 33, 70};
        for (uint32_t step = 0; step < 30; step++) {
            uint32_t n = sizes[step % 6];
            const char *const *w = way[step / 6];
            struct bbt_plugin p = open_blas_plan(path, "1", w[0], w[1]);
            bbt_check_against_reference(&p, &net, n, n, w[2]);
            bbt_plugin_close(&p);
        }
        bbd_free(&net);
        unlink(path);
    }
}

Test(blas, a_request_of_the_wrong_size_fails_alone)
{
    const struct bbt_layer_spec s[] = {{8, 3, BBD_ACT_SIGMOID}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 1, 5, &len);
    char path[108];
    bbt_write_bytes(path, sizeof path, b, len);
    struct bbt_plugin p = open_blas(path, "1");
    float x[4][9] = {{0}}, out[4][4];
    memset(out, 0x55, sizeof out);
    struct bb_view in[4] = {{x[0], 32}, {x[1], 36}, {x[2], 32}, {x[3], 28}};
    struct bb_outbuf o[4] = {{.ptr = out[0], .cap = 12}, {.ptr = out[1], .cap = 16},
                             {.ptr = out[2], .cap = 11}, {.ptr = out[3], .cap = 16}};
    uint8_t prio[4] = {0};
    char msg[128] = "";
    struct bb_batch batch = {.n = 4, .inputs = in, .outputs = o, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg};
    cr_assert_eq(p.ops->process(p.state, &batch), 0, "%s", msg);
    cr_assert_eq(o[0].status, 0);
    cr_assert_eq(o[0].len, 12);
    cr_assert_eq(o[1].status, BB_EINVAL, "36-byte input: %d", o[1].status);
    cr_assert_eq(o[2].status, BB_ETOOBIG, "11-byte output: %d", o[2].status);
    cr_assert_eq(o[3].status, BB_EINVAL, "28-byte input: %d", o[3].status);
    for (int i = 1; i < 4; i++) cr_assert_eq(o[i].len, 0);
    /* Nothing was written to the refused requests' buffers. */
    uint32_t pat;
    memset(&pat, 0x55, 4);
    cr_assert_eq(memcmp(&out[2][0], &pat, 4), 0);
    bbt_plugin_close(&p);
    unlink(path);
    free(b);
}

Test(blas, in_place_and_gathered_inputs_give_the_same_bits)
{
    const struct bbt_layer_spec s[] = {{20, 16, BBD_ACT_RELU}, {16, 4, BBD_ACT_IDENTITY}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 6, &len);
    char path[108];
    bbt_write_bytes(path, sizeof path, b, len);
    /* One GEMM for the batch: which rows share a call must not differ
     * between the layouts (pieces would group the reversed rows otherwise). */
    struct bbt_plugin p = open_blas_gemv(path, "1", "gemv_below=0");
    enum { N = 24, STRIDE = 23 }; /* floats between rows: padded, in place */
    float *strided = calloc(N * STRIDE + 1, sizeof(float));
    char *unaligned = calloc(N * 20 * 4 + 8, 1);
    float out[3][N][4];
    struct bb_view in[3][N];
    struct bb_outbuf o[3][N];
    uint8_t prio[N] = {0};
    uint64_t rng = 7;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 20; k++)
            strided[i * STRIDE + k] = (float)((bbt_rand(&rng) % 2001) / 1000.0 - 1);
        /* Layout 0: equally spaced (the GEMM reads them in place); 1: the
         * same rows in reverse order at scattered addresses (gathered); 2:
         * rows at odd addresses (gathered byte-wise). */
        in[0][i] = (struct bb_view){strided + i * STRIDE, 80};
        memcpy(unaligned + 1 + (N - 1 - i) * 80, strided + i * STRIDE, 80);
    }
    for (int i = 0; i < N; i++) {
        in[1][i] = (struct bb_view){strided + (N - 1 - i) * STRIDE, 80};
        in[2][i] = (struct bb_view){unaligned + 1 + i * 80, 80};
    }
    for (int l = 0; l < 3; l++) {
        for (int i = 0; i < N; i++) o[l][i] = (struct bb_outbuf){.ptr = out[l][i], .cap = 16};
        char msg[128] = "";
        struct bb_batch batch = {.n = N, .inputs = in[l], .outputs = o[l], .priorities = prio,
                                 .errmsg = msg, .errmsg_cap = sizeof msg};
        cr_assert_eq(p.ops->process(p.state, &batch), 0, "%s", msg);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(memcmp(out[0][i], out[1][N - 1 - i], 16), 0, "row %d: in place vs gathered", i);
        cr_assert_eq(memcmp(out[1][i], out[2][i], 16), 0, "row %d: aligned vs unaligned", i);
    }
    bbt_plugin_close(&p);
    free(strided);
    free(unaligned);
    unlink(path);
    free(b);
}

/* gemv_below = N runs every call of fewer than N rows as GEMVs, above 64
 * rows too: a GEMV row's result does not depend on the rows around it, so
 * a batch of 80 gives, bit for bit, what each row gives alone. */
Test(blas, gemv_below_holds_above_64_rows)
{
    const struct bbt_layer_spec s[] = {{96, 24, BBD_ACT_IDENTITY}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 1, 12, &len);
    char path[108];
    bbt_write_bytes(path, sizeof path, b, len);
    struct bbt_plugin many = open_blas_plan(path, "1", "gemv_below=100", "gemm_rows=0");
    struct bbt_plugin alone = open_blas_gemv(path, "1", "gemv_below=2");
    enum { N = 80, IN = 96, OUT = 24 };
    float *x = calloc(N * IN, sizeof(float)), (*y)[OUT] = calloc(N, sizeof *y);
    float one[OUT];
    struct bb_view in[N];
    struct bb_outbuf o[N];
    uint8_t prio[N] = {0};
    char msg[128] = "";
    uint64_t rng = 21;
    for (int i = 0; i < N * IN; i++) x[i] = (float)((bbt_rand(&rng) % 20001) / 10000.0 - 1);
    for (int i = 0; i < N; i++) {
        in[i] = (struct bb_view){x + i * IN, IN * 4};
        o[i] = (struct bb_outbuf){.ptr = y[i], .cap = OUT * 4};
    }
    struct bb_batch batch = {.n = N, .inputs = in, .outputs = o, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg};
    cr_assert_eq(many.ops->process(many.state, &batch), 0, "%s", msg);
    for (int i = 0; i < N; i++) {
        struct bb_outbuf o1 = {.ptr = one, .cap = sizeof one};
        struct bb_batch b1 = {.n = 1, .inputs = &in[i], .outputs = &o1, .priorities = prio,
                              .errmsg = msg, .errmsg_cap = sizeof msg};
        cr_assert_eq(alone.ops->process(alone.state, &b1), 0, "%s", msg);
        cr_assert_eq(memcmp(y[i], one, sizeof one), 0, "row %d: not the GEMV's bits", i);
    }
    bbt_plugin_close(&many);
    bbt_plugin_close(&alone);
    free(x);
    free(y);
    unlink(path);
    free(b);
}

Test(blas, params_are_checked)
{
    char err[512];
    struct bbt_plugin p;
    struct {
        const char *kv[3];
        const char *msg;
    } cases[] = {
        {{NULL}, "param.weights (a .bbdense file) is required"},
        {{"weights=/nonexistent/x.bbdense", NULL}, "/nonexistent/x.bbdense: No such file"},
        {{"weights=/etc/passwd", NULL}, "/etc/passwd: not a .bbdense file"},
        {{"weights=/tmp", NULL}, "/tmp: not a regular file"},
        {{"weights=/etc/passwd", "threads=0", NULL}, "threads = \"0\": expected 1 to 64"},
        {{"threads=two", NULL}, "threads = \"two\""},
        {{"gemv_below=-1", NULL}, "gemv_below = \"-1\""},
        {{"gemm_rows=some", NULL}, "gemm_rows = \"some\": expected auto or 0 to 65536"},
        {{"weight=/x", NULL}, "unknown param \"weight\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = bbt_plugin_open(&p, "blas", cases[i].kv, err, sizeof err);
        cr_assert_lt(rc, 0, "case %zu accepted", i);
        cr_assert(strstr(err, cases[i].msg), "case %zu: \"%s\" does not say \"%s\"", i, err,
                  cases[i].msg);
    }
}

/* A FIFO (or any file whose open waits) named as the weights: refused as
 * not a regular file at once, not an open() that waits for a writer forever
 * (batchbroker --check hung there, deaf to SIGTERM). */
Test(blas, a_fifo_as_weights_is_refused_without_waiting, .timeout = 30)
{
    char path[108], kv[160], err[512];
    bbt_unique_path(path, sizeof path, ".fifo");
    cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo %s", path);
    snprintf(kv, sizeof kv, "weights=%s", path);
    const char *kvs[] = {kv, NULL};
    struct bbt_plugin p;
    int rc = bbt_plugin_open(&p, "blas", kvs, err, sizeof err);
    unlink(path);
    cr_assert_lt(rc, 0, "a FIFO was accepted as weights");
    cr_assert(strstr(err, path) && strstr(err, "not a regular file"), "%s", err);
}

/* ---- Fashion-MNIST -------------------------------------------------------- */

Test(blas, instance_threads_split_the_batch)
{
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.bbdense");
    char w[512];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    d.n = 2000;
    uint16_t *cand = calloc(d.n, sizeof *cand);
    uint8_t *one = calloc(d.n, 1), *three = calloc(d.n, 1);
    bbt_reference(w, &d, cand);
    struct bbt_plugin p1 = open_blas(w, "1"), p3 = open_blas(w, "3");
    bbt_plugin_predict(&p1, &d, 64, one);
    bbt_plugin_predict(&p3, &d, 61, three);
    bbt_assert_predictions("threads=1", one, NULL, cand, &d);
    bbt_assert_predictions("threads=3", three, one, cand, &d);
    bbt_plugin_close(&p1);
    bbt_plugin_close(&p3);
    free(cand);
    free(one);
    free(three);
    bb__fmnist_free(&d);
}

Test(blas, fmnist_through_the_broker_from_4_processes_matches_in_process)
{
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.bbdense");
    char w[512], lines[700];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    /* Batch 1 through GEMV too: another summation order, same predictions. */
    uint8_t *gemv = calloc(d.n, 1);
    struct bbt_plugin p = open_blas_gemv(w, "1", "gemv_below=2");
    bbt_plugin_predict(&p, &d, 1, gemv);
    bbt_plugin_close(&p);
    p = open_blas_gemv(w, "1", "gemv_below=0");
    snprintf(lines, sizeof lines, "backend = blas\ninstances = 2\nparam.weights = %s\n", w);
    bbt_fmnist_acceptance("blas", &p, lines, &d, gemv, "batch 1 (GEMV)");
    bbt_plugin_close(&p);
    free(gemv);
    bb__fmnist_free(&d);
}

/* batchbroker --check with a config whose weights file is bad: exit 2, and
 * stderr names the model and the file. */
static void expect_check_refuses(const char *weights, const char *why)
{
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "[model.digits]\nbackend = blas\nparam.weights = %s\n", weights);
    bbt_expect_check_refuses("digits", cfg, weights, why);
}

Test(blas, check_refuses_bad_weight_files_with_a_clear_message)
{
    const struct bbt_layer_spec s[] = {{16, 8, BBD_ACT_RELU}, {8, 4, BBD_ACT_SOFTMAX}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 8, &len);
    char path[108];
    bbt_write_bytes(path, sizeof path, b, len - 9);
    expect_check_refuses(path, "truncated");
    unlink(path);
    b[100] ^= 1;
    bbt_write_bytes(path, sizeof path, b, len);
    expect_check_refuses(path, "corrupt");
    unlink(path);
    b[100] ^= 1;
    bbt_put32(b + BBD_HEADER_BYTES + BBD_LAYER_BYTES, 15); /* layer 1 takes 15, layer 0 gives 8 */
    bbt_seal(b, len);
    bbt_write_bytes(path, sizeof path, b, len);
    expect_check_refuses(path, "mismatched layers");
    unlink(path);
    char pt[512];
    bbt_model_path("fmnist.pt", pt, sizeof pt);
    if (access(pt, R_OK) == 0) expect_check_refuses(pt, "a TorchScript file");
    expect_check_refuses("/nonexistent/model.bbdense", "missing");
    free(b);
}

/* Its numbers are whole numbers in range: atoi/atol took "4x" as 4, "abc" as
 * 0 (all images) and 2^32 + 5 as 5 images. */
static void need_the_demo(void)
{
    if (!BB_CLASSIFY_BIN[0])
        cr_skip_test("bb-classify is not built (BB_BUILD_EXAMPLES=OFF)");
}

Test(blas, the_demo_refuses_bad_numbers)
{
    need_the_demo();
    const char *bad[][2] = {{"-p", "4x"}, {"-n", "abc"}, {"-n", "4294967301"}, {"-k", "0"},
                            {"-k", "257"}, {"-p", "-1"}};
    char out[4096], err[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[] = {BB_CLASSIFY_BIN, "-s", "/nonexistent/bb.sock", bad[i][0], bad[i][1],
                              NULL};
        int st = bbt_run(argv, out, sizeof out, err, sizeof err, 30000);
        cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(err, "usage:"),
                  "bb-classify %s %s: status %#x\n%s%s", bad[i][0], bad[i][1], st, out, err);
    }
}

/* The demo of scripts/run.sh, end to end: bb-classify against a broker
 * serving the demo model with this backend. */
Test(blas, the_demo_classifies_through_the_broker)
{
    need_the_demo();
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.bbdense");
    bb__fmnist_free(&d);
    char w[512], cfg[700], out[4096], err[4096];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    snprintf(cfg, sizeof cfg, "[model.fmnist]\nbackend = blas\nmax_batch_size = 64\nparam.weights = %s\n", w);
    struct bbt_broker b;
    cr_assert_eq(bbt_broker_start(&b, cfg, NULL), 0, "broker did not start");
    const char *argv[] = {BB_CLASSIFY_BIN, "-s", b.sock, "-p", "3", "-k", "8", "-n", "3000", NULL};
    int st = bbt_run(argv, out, sizeof out, err, sizeof err, 60000);
    bbt_broker_stop(&b);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "bb-classify: status %#x\n%s%s",
              st, out, err);
    cr_assert(strstr(out, "answered   3000 of 3000 images"), "%s", out);
    cr_assert(strstr(out, "accuracy   8"), "accuracy below 80%%?\n%s", out);
    cr_log_info("%s", out);
}
