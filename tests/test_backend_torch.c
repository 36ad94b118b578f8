/* torch backend (backends/torch.cpp): params and shapes, the in-place and
 * gathered input paths, a model that writes its input, per-request size
 * checks, exceptions in forward(), files refused at start-up, and the full
 * Fashion-MNIST test set through a broker from 4 client processes (the
 * TorchScript file holds the same weights as fmnist.bbdense, so the same
 * exact reference applies). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "classify.h"

static void fini_all(void)
{
    bbt_cleanup_all();
}

TestSuite(torch, .fini = fini_all, .timeout = 300);

static void need_file(const char *file, char *path, size_t len)
{
    bbt_model_path(file, path, len);
    if (access(path, R_OK) != 0)
        cr_skip_test("no %s: generated at build time when a Python with PyTorch is present "
                     "(scripts/deps.sh installs python3-torch)",
                     path);
}

static struct bbt_plugin open_torch(const char *model, const char *in_shape, const char *extra)
{
    char m[600], s[128], err[512];
    snprintf(m, sizeof m, "model=%s", model);
    snprintf(s, sizeof s, "input_shape=%s", in_shape);
    const char *kv[] = {m, s, "output_shape=10", extra, NULL};
    struct bbt_plugin p;
    int rc = bbt_plugin_open(&p, "torch", kv, err, sizeof err);
    cr_assert_eq(rc, 0, "torch init: %s", err);
    return p;
}

static int run(struct bbt_plugin *p, uint32_t n, struct bb_view *in, struct bb_outbuf *o,
               char *msg, size_t msglen)
{
    uint8_t prio[64] = {0};
    msg[0] = '\0';
    struct bb_batch b = {.n = n, .inputs = in, .outputs = o, .priorities = prio,
                         .errmsg = msg, .errmsg_cap = msglen};
    return p->ops->process(p->state, &b);
}

Test(torch, fmnist_through_the_broker_from_4_processes_matches_in_process)
{
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.pt");
    char pt[512], lines[800];
    bbt_model_path("fmnist.pt", pt, sizeof pt);
    struct bbt_plugin p = open_torch(pt, "1,28,28", NULL);
    snprintf(lines, sizeof lines,
             "backend = torch\ninstances = 2\nparam.model = %s\nparam.input_shape = 1,28,28\n"
             "param.output_shape = 10\n",
             pt);
    bbt_fmnist_acceptance("torch", &p, lines, &d, NULL, NULL);
    bbt_plugin_close(&p);
    bb__fmnist_free(&d);
}

Test(torch, in_place_and_gathered_inputs_give_the_same_bits)
{
    char pt[512];
    need_file("fmnist.pt", pt, sizeof pt);
    struct bbt_plugin p = open_torch(pt, "784", NULL);
    enum { N = 20, STRIDE = 800 };
    float *strided = calloc((size_t)N * STRIDE, sizeof(float));
    char *odd = calloc((size_t)N * 784 * 4 + 8, 1);
    float out[3][N][10];
    struct bb_view in[3][N];
    struct bb_outbuf o[3][N];
    uint64_t rng = 3;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 784; k++) strided[i * STRIDE + k] = (float)(bbt_rand(&rng) % 256) / 255.0f;
        in[0][i] = (struct bb_view){strided + i * STRIDE, 784 * 4};      /* from_blob, strided */
        in[1][i] = (struct bb_view){strided + (N - 1 - i) * STRIDE, 784 * 4}; /* gathered */
        in[2][i] = (struct bb_view){odd + 1 + i * 784 * 4, 784 * 4};     /* unaligned: gathered */
    }
    for (int i = 0; i < N; i++) memcpy(odd + 1 + i * 784 * 4, strided + i * STRIDE, 784 * 4);
    char msg[256];
    for (int l = 0; l < 3; l++) {
        for (int i = 0; i < N; i++) o[l][i] = (struct bb_outbuf){.ptr = out[l][i], .cap = 40};
        cr_assert_eq(run(&p, N, in[l], o[l], msg, sizeof msg), 0, "%s", msg);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(o[0][i].len, 40);
        cr_assert_eq(memcmp(out[0][i], out[1][N - 1 - i], 40), 0, "row %d: in place vs gathered", i);
        cr_assert_eq(memcmp(out[0][i], out[2][i], 40), 0, "row %d: aligned vs unaligned", i);
    }
    bbt_plugin_close(&p);
    free(strided);
    free(odd);
}

Test(torch, a_request_of_the_wrong_size_fails_alone)
{
    char pt[512];
    need_file("fmnist.pt", pt, sizeof pt);
    struct bbt_plugin p = open_torch(pt, "1,28,28", "threads=2");
    static float x[3][785];
    float out[3][11];
    struct bb_view in[3] = {{x[0], 3136}, {x[1], 3140}, {x[2], 3136}};
    struct bb_outbuf o[3] = {{.ptr = out[0], .cap = 40}, {.ptr = out[1], .cap = 44},
                             {.ptr = out[2], .cap = 39}};
    char msg[256];
    cr_assert_eq(run(&p, 3, in, o, msg, sizeof msg), 0, "%s", msg);
    cr_assert_eq(o[0].status, 0);
    cr_assert_eq(o[0].len, 40);
    cr_assert_eq(o[1].status, BB_EINVAL);
    cr_assert_eq(o[2].status, BB_ETOOBIG);
    cr_assert_eq(o[1].len + o[2].len, 0);
    bbt_plugin_close(&p);
}

static void reset_outputs(struct bb_outbuf *o, float (*out)[10], int n)
{
    for (int i = 0; i < n; i++)
        o[i] = (struct bb_outbuf){.ptr = out[i], .cap = 10 * sizeof(float)};
}

/* raises.pt raises on any negative input. A batch is run again in halves
 * until the rows that raise alone are found: they fail, the others (other
 * clients' requests) are answered; a batch whose every row raises fails
 * with the model's message. */
Test(torch, an_exception_in_forward_fails_only_the_rows_that_raise)
{
    char pt[512];
    need_file("raises.pt", pt, sizeof pt);
    struct bbt_plugin p = open_torch(pt, "784", NULL);
    enum { N = 8 };
    static float x[N][784];
    float out[N][10];
    struct bb_view in[N];
    struct bb_outbuf o[N];
    char msg[256];
    for (int i = 0; i < N; i++) {
        x[i][5] = (float)(i + 1);
        in[i] = (struct bb_view){x[i], sizeof x[i]};
    }
    reset_outputs(o, out, N);
    cr_assert_eq(run(&p, N, in, o, msg, sizeof msg), 0, "%s", msg);
    for (int i = 0; i < N; i++)
        cr_assert(o[i].status == 0 && o[i].len == 40 && out[i][5] == 2.0f * (float)(i + 1));

    /* Rows 2 and 5 raise: only they fail. */
    x[2][7] = -1;
    x[5][700] = -1;
    reset_outputs(o, out, N);
    memset(out, 0, sizeof out);
    cr_assert_eq(run(&p, N, in, o, msg, sizeof msg), 0, "%s", msg);
    for (int i = 0; i < N; i++) {
        if (i == 2 || i == 5) {
            cr_assert_eq(o[i].status, BB_EBACKEND, "row %d", i);
            cr_assert_eq(o[i].len, 0);
        } else {
            cr_assert(o[i].status == 0 && o[i].len == 40 && out[i][5] == 2.0f * (float)(i + 1),
                      "row %d: status %d, len %u, %g", i, o[i].status, o[i].len, out[i][5]);
        }
    }

    /* Rows 2 and 5 again, but rows 0-3 are one client's and 4-7 another's
     * (segments): a half of one client's rows fails whole, unsplit. */
    static const uint32_t segs[N] = {1, 1, 1, 1, 2, 2, 2, 2};
    reset_outputs(o, out, N);
    {
        uint8_t prio[N] = {0};
        struct bb_batch b = {.n = N, .inputs = in, .outputs = o, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg, .segments = segs};
        cr_assert_eq(p.ops->process(p.state, &b), BB_EBACKEND, "both clients' rows raise");
    }
    x[5][700] = 0;
    reset_outputs(o, out, N);
    {
        uint8_t prio[N] = {0};
        struct bb_batch b = {.n = N, .inputs = in, .outputs = o, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg, .segments = segs};
        cr_assert_eq(p.ops->process(p.state, &b), 0, "%s", msg);
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(o[i].status, i < 4 ? BB_EBACKEND : 0, "row %d", i);

    /* Seven rows of eight raise: isolating each would take 14 more forward
     * calls; the budget (4 a level, 12) runs out first and the batch fails
     * whole, at a bounded cost, rather than answer its one good row. */
    for (int i = 0; i < 7; i++)
        x[i][3] = -1;
    reset_outputs(o, out, N);
    cr_assert_eq(run(&p, N, in, o, msg, sizeof msg), BB_EBACKEND);
    for (int i = 0; i < 7; i++)
        x[i][3] = 0;
    x[5][700] = -1;

    /* Every row raises (two rows, one row): the batch fails with the message. */
    for (uint32_t n = 1; n <= 2; n++) {
        struct bb_view bad[2] = {in[2], in[5]};
        reset_outputs(o, out, N);
        cr_assert_eq(run(&p, n, bad, o, msg, sizeof msg), BB_EBACKEND);
        cr_assert(strstr(msg, "negative input"), "errmsg: %s", msg);
        cr_assert_eq(o[0].len + o[1].len, 0);
    }
    /* The instance still works afterwards. */
    x[2][7] = 0;
    x[5][700] = 0;
    reset_outputs(o, out, N);
    cr_assert_eq(run(&p, N, in, o, msg, sizeof msg), 0, "%s", msg);
    bbt_plugin_close(&p);
}

/* A request of the wrong size in a batch whose every other row raises keeps
 * its own BB_EINVAL: the batch is not failed whole (the broker would then
 * give every request BB_EBACKEND), only the rows that raise fail. */
Test(torch, a_wrong_size_request_keeps_its_code_when_the_others_raise)
{
    char pt[512];
    need_file("raises.pt", pt, sizeof pt);
    struct bbt_plugin p = open_torch(pt, "784", NULL);
    static float x[2][785];
    float out[2][10];
    x[1][3] = -1;
    struct bb_view in[2] = {{x[0], 785 * 4}, {x[1], 784 * 4}};
    struct bb_outbuf o[2];
    char msg[256];
    reset_outputs(o, out, 2);
    cr_assert_eq(run(&p, 2, in, o, msg, sizeof msg), 0, "the batch failed whole: %s", msg);
    cr_assert_eq(o[0].status, BB_EINVAL);
    cr_assert_eq(o[1].status, BB_EBACKEND);
    cr_assert_eq(o[0].len + o[1].len, 0);
    bbt_plugin_close(&p);
}

/* A model that writes its input (x.mul_(2)) is found at init and gets
 * copies: the client's input, read-only shared memory, is never written,
 * and the answers are those of the model on the input as sent. */
static struct bbt_broker B;

Test(torch, a_model_that_writes_its_input_never_writes_the_clients)
{
    char pt[512], text[800];
    need_file("mutates.pt", pt, sizeof pt);
    /* In process, a batch of four requests in a row (which would be one
     * strided view of their memory). */
    struct bbt_plugin p = open_torch(pt, "784", NULL);
    static float x[4][784];
    float out[4][10];
    struct bb_view in[4];
    struct bb_outbuf o[4];
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 784; k++) x[i][k] = 1.0f;
        in[i] = (struct bb_view){x[i], sizeof x[i]};
        o[i] = (struct bb_outbuf){.ptr = out[i], .cap = sizeof out[i]};
    }
    char msg[256];
    cr_assert_eq(run(&p, 4, in, o, msg, sizeof msg), 0, "%s", msg);
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 784; k++) cr_assert_eq(x[i][k], 1.0f, "input %d[%d] written", i, k);
        for (int k = 0; k < 10; k++) cr_assert_eq(out[i][k], 2.0f, "output %d[%d]", i, k);
    }
    bbt_plugin_close(&p);

    /* Through a broker, from a client's shared memory, twice. */
    snprintf(text, sizeof text,
             "[model.doubler]\nbackend = torch\nparam.model = %s\nparam.input_shape = 784\n"
             "param.output_shape = 10\n",
             pt);
    struct bbt_start so = {.config_text = text, .log = true,
                           .overrides = (const char *const[]){"broker.log_level=info", NULL}};
    cr_assert_eq(bbt_broker_start_ex(&B, &so), 0, "broker (status %#x)", B.exit_status);
    cr_assert_geq(bbt_log_count(&B, "the model writes its input: inputs are copied"), 1,
                  "init says why the inputs are copied");
    bb_client *c;
    bb_model *m;
    bb_request *r;
    cr_assert_eq(bb_connect(B.sock, NULL, &c), 0);
    cr_assert_eq(bb_model_open(c, "doubler", &m), 0);
    cr_assert_eq(bb_request_new(m, 784 * sizeof(float), 10 * sizeof(float), &r), 0);
    float *shm = bb_request_input(r);
    for (int k = 0; k < 784; k++) shm[k] = 1.0f;
    for (int round = 0; round < 2; round++) {
        cr_assert_eq(bb_submit(r, NULL), 0);
        cr_assert_eq(bb_wait(r, 30000000000ll), 0);
        cr_assert_eq(bb_request_status(r), 0, "%s", bb_strerror(bb_request_status(r)));
        size_t len;
        const float *y = bb_request_output(r, &len);
        cr_assert_eq(len, 10 * sizeof(float));
        for (int k = 0; k < 10; k++)
            cr_assert_eq(y[k], 2.0f, "round %d: output[%d] = %g", round, k, y[k]);
        for (int k = 0; k < 784; k++)
            cr_assert_eq(shm[k], 1.0f, "round %d: the client's input[%d] became %g", round, k,
                         shm[k]);
    }
    bb_request_free(r);
    bb_disconnect(c);
    bbt_broker_stop(&B);
}

Test(torch, params_are_checked)
{
    char pt[512], tuple[512], batch1[512], m[600], t[600], b1[600], err[512];
    need_file("fmnist.pt", pt, sizeof pt);
    need_file("tuple.pt", tuple, sizeof tuple);
    need_file("batch1.pt", batch1, sizeof batch1);
    snprintf(m, sizeof m, "model=%s", pt);
    snprintf(t, sizeof t, "model=%s", tuple);
    snprintf(b1, sizeof b1, "model=%s", batch1);
    struct {
        const char *kv[6];
        const char *msg;
    } cases[] = {
        {{m, "output_shape=10", NULL}, "are required"},
        {{m, "input_shape=1,,28", "output_shape=10", NULL}, "positive dimensions"},
        {{m, "input_shape=784", "output_shape=0", NULL}, "positive dimensions"},
        {{m, "input_shape=784", "output_shape=10", "dtype=float8", NULL}, "dtype = \"float8\""},
        {{m, "input_shape=784", "output_shape=10", "threads=0", NULL}, "threads = \"0\""},
        {{m, "input_shape=784", "output_shape=10", "device=tpu", NULL}, "expected cpu or cuda:N"},
        {{m, "input_shape=784", "output_shape=10", "device=cuda:0", NULL}, "has no CUDA"},
        {{m, "input_shape=784", "output_shape=10", "weights=x", NULL}, "unknown param \"weights\""},
        {{"model=/nonexistent.pt", "input_shape=784", "output_shape=10", NULL},
         "/nonexistent.pt: No such file"},
        {{m, "input_shape=1,28,27", "output_shape=10", NULL}, "does not fit input [1,1,28,27]"},
        {{m, "input_shape=784", "output_shape=12", NULL}, "expected [1,12]"},
        {{m, "input_shape=784", "output_shape=10", "dtype=int64", NULL}, "does not fit"},
        {{t, "input_shape=784", "output_shape=10", NULL}, "not a tensor"},
        /* Fits one request, not two: the message names the batch that failed. */
        {{b1, "input_shape=784", "output_shape=10", NULL}, "does not fit input [2,784]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bbt_plugin p;
        int rc = bbt_plugin_open(&p, "torch", cases[i].kv, err, sizeof err);
        cr_assert_lt(rc, 0, "case %zu accepted", i);
        cr_assert(strstr(err, cases[i].msg), "case %zu: \"%s\" does not say \"%s\"", i, err,
                  cases[i].msg);
        cr_log_info("case %zu: %s", i, err);
    }
}

/* A FIFO named as the model: refused as not a regular file at once, not an
 * open() that waits for a writer forever (batchbroker --check hung there,
 * deaf to SIGTERM). */
Test(torch, a_fifo_as_model_is_refused_without_waiting, .timeout = 30)
{
    char path[108], kv[160], err[512];
    bbt_unique_path(path, sizeof path, ".fifo");
    cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo %s", path);
    snprintf(kv, sizeof kv, "model=%s", path);
    const char *kvs[] = {kv, "input_shape=784", "output_shape=10", NULL};
    struct bbt_plugin p;
    int rc = bbt_plugin_open(&p, "torch", kvs, err, sizeof err);
    unlink(path);
    cr_assert_lt(rc, 0, "a FIFO was accepted as a model");
    cr_assert(strstr(err, path) && strstr(err, "not a regular file"), "%s", err);
}

/* batchbroker --check with a bad TorchScript file: exit 2, the message names
 * the model and the file. */
static void expect_check_refuses(const char *model, const char *in_shape, const char *why)
{
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "[model.clothes]\nbackend = torch\nparam.model = %s\nparam.input_shape = %s\n"
             "param.output_shape = 10\n",
             model, in_shape);
    bbt_expect_check_refuses("clothes", cfg, model, why);
}

Test(torch, check_refuses_bad_torchscript_files_with_a_clear_message)
{
    char pt[512], w[512], path[108];
    need_file("fmnist.pt", pt, sizeof pt);
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    FILE *f = fopen(pt, "rb");
    cr_assert_not_null(f);
    static char buf[1 << 21];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_gt(len, 1000);

    bbt_unique_path(path, sizeof path, ".pt");
    f = fopen(path, "wb");
    fwrite(buf, 1, len / 2, f);
    fclose(f);
    expect_check_refuses(path, "1,28,28", "truncated");
    unlink(path);

    uint64_t rng = 5;
    for (size_t i = 0; i < len; i++) buf[i] = (char)bbt_rand(&rng);
    f = fopen(path, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    expect_check_refuses(path, "1,28,28", "random bytes");
    unlink(path);

    if (access(w, R_OK) == 0) expect_check_refuses(w, "1,28,28", "a .bbdense file");
    expect_check_refuses(pt, "1,28,27", "mismatched input shape");
    expect_check_refuses("/nonexistent/model.pt", "784", "missing");
}

/* Bytes flipped where a TorchScript file keeps its structure (the zip
 * headers and pickles at the start, the central directory at the end):
 * refused with a message or loaded, never a crash. (Flips in the tensor data
 * load silently: libtorch checks no checksum there.) */
Test(torch, mutated_files_are_refused_or_loaded_never_a_crash)
{
    char pt[512], path[108];
    need_file("fmnist.pt", pt, sizeof pt);
    FILE *f = fopen(pt, "rb");
    cr_assert_not_null(f);
    static unsigned char orig[1 << 21], buf[1 << 21];
    size_t len = fread(orig, 1, sizeof orig, f);
    fclose(f);
    cr_assert_gt(len, 20000);
    uint64_t rng = 11;
    unsigned refused = 0;
    for (int i = 0; i < 30; i++) {
        memcpy(buf, orig, len);
        for (int k = 0; k < 3; k++) {
            size_t at = bbt_rand(&rng) % 6000;
            buf[bbt_rand(&rng) & 1 ? at : len - 1 - at] ^= (unsigned char)(1 + bbt_rand(&rng) % 255);
        }
        bbt_unique_path(path, sizeof path, ".pt");
        f = fopen(path, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        char m[160], err[512];
        snprintf(m, sizeof m, "model=%s", path);
        const char *kv[] = {m, "input_shape=784", "output_shape=10", NULL};
        struct bbt_plugin p;
        if (bbt_plugin_open(&p, "torch", kv, err, sizeof err) == 0) {
            bbt_plugin_close(&p);
        } else {
            cr_assert(strstr(err, path), "the message does not name the file: %s", err);
            refused++;
        }
        unlink(path);
    }
    cr_log_info("%u of 30 mutated files refused, the rest loaded", refused);
}
