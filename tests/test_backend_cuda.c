/* cuda backend (backends/cuda.cu). Without a usable GPU (cudaGetDeviceCount
 * fails or finds none) every test that needs one skips and says why; the
 * file checks, which come before the device is opened, run everywhere.
 * With a GPU: activations against a double reference, per-request sizes,
 * registered (mapped) and staged rows, graphs on and off, synchronous and
 * asynchronous (two batches in flight), and the full
 * Fashion-MNIST test set through a broker from 4 client processes, whose
 * segments the broker registers with the backend. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "bbdense.h"
#include "classify.h"
#include "netfile.h"

static void fini_all(void)
{
    bbt_cleanup_all();
}

TestSuite(cuda, .fini = fini_all, .timeout = 300);

static void need_gpu(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess)
        cr_skip_test("no usable CUDA device (cudaGetDeviceCount: %s); scripts/gpu-check.sh "
                     "runs this suite on a GPU machine",
                     cudaGetErrorString(e));
    if (n == 0) cr_skip_test("no CUDA device found; scripts/gpu-check.sh runs this suite on one");
}

static struct bbt_plugin open_cuda(const char *weights, const char *graph)
{
    char w[600], g[32], err[512];
    snprintf(w, sizeof w, "weights=%s", weights);
    snprintf(g, sizeof g, "graph=%s", graph);
    const char *kv[] = {w, g, NULL};
    struct bbt_plugin p;
    int rc = bbt_plugin_open(&p, "cuda", kv, err, sizeof err);
    cr_assert_eq(rc, 0, "cuda init: %s", err);
    return p;
}

static int run(struct bbt_plugin *p, uint32_t n, struct bb_view *in, struct bb_outbuf *o)
{
    static uint8_t prio[256];
    char msg[256] = "";
    struct bb_batch b = {.n = n, .inputs = in, .outputs = o, .priorities = prio,
                         .errmsg = msg, .errmsg_cap = sizeof msg};
    int rc = p->ops->process(p->state, &b);
    cr_assert_eq(rc, 0, "process: %d %s", rc, msg);
    return rc;
}

Test(cuda, files_are_checked_before_the_device)
{
    char err[512];
    struct bbt_plugin p;
    const char *kv1[] = {"weights=/nonexistent/x.bbdense", NULL};
    cr_assert_lt(bbt_plugin_open(&p, "cuda", kv1, err, sizeof err), 0);
    cr_assert(strstr(err, "/nonexistent/x.bbdense: No such file"), "%s", err);
    const char *kv2[] = {"weights=/etc/passwd", "graph=maybe", NULL};
    cr_assert_lt(bbt_plugin_open(&p, "cuda", kv2, err, sizeof err), 0);
    cr_assert(strstr(err, "graph = \"maybe\""), "%s", err);
    /* Only digits: no sign, no blanks (strtol would take " +1" and "-0"). */
    const char *bad_devices[] = {"device=+1", "device= 1", "device=-0", "device=1x"};
    for (size_t i = 0; i < sizeof bad_devices / sizeof bad_devices[0]; i++) {
        const char *kvd[] = {"weights=/etc/passwd", bad_devices[i], NULL};
        cr_assert_lt(bbt_plugin_open(&p, "cuda", kvd, err, sizeof err), 0);
        cr_assert(strstr(err, "expected a device ordinal or auto"), "%s: %s", bad_devices[i], err);
    }
    const char *kv3[] = {"weights=/etc/passwd", NULL};
    cr_assert_lt(bbt_plugin_open(&p, "cuda", kv3, err, sizeof err), 0);
    cr_assert(strstr(err, "/etc/passwd: not a .bbdense file"), "%s", err);
    /* A FIFO: refused at once, not an open() waiting for a writer forever. */
    char fifo[108], wf[160];
    bbt_unique_path(fifo, sizeof fifo, ".fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo %s", fifo);
    snprintf(wf, sizeof wf, "weights=%s", fifo);
    const char *kv5[] = {wf, NULL};
    int frc = bbt_plugin_open(&p, "cuda", kv5, err, sizeof err);
    unlink(fifo);
    cr_assert_lt(frc, 0);
    cr_assert(strstr(err, fifo) && strstr(err, "not a regular file"), "%s", err);

    const struct bbt_layer_spec s[] = {{16, 8, BBD_ACT_RELU}, {8, 4, BBD_ACT_IDENTITY}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 2, 8, &len);
    char path[108], cfg[1024];
    bbt_write_bytes(path, sizeof path, b, len - 5);
    snprintf(cfg, sizeof cfg, "[model.gpu]\nbackend = cuda\nparam.weights = %s\n", path);
    bbt_expect_check_refuses("gpu", cfg, path, "truncated");
    unlink(path);

    /* A good file on a machine without a GPU: refused, saying so. */
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        bbt_write_bytes(path, sizeof path, b, len);
        char w[160];
        snprintf(w, sizeof w, "weights=%s", path);
        const char *kv4[] = {w, NULL};
        cr_assert_lt(bbt_plugin_open(&p, "cuda", kv4, err, sizeof err), 0);
        cr_assert(strstr(err, "no usable CUDA device"), "%s", err);
        cr_log_info("without a GPU: %s", err);
        unlink(path);
    }
    free(b);
}

Test(cuda, every_activation_matches_a_double_reference)
{
    need_gpu();
    for (uint32_t act = 0; act < BBD_NACT; act++) {
        const struct bbt_layer_spec s[] = {{12, 9, BBD_ACT_RELU}, {9, 5, act}};
        char path[108];
        struct bbd_net net;
        bbt_net_file(s, 2, 10 + act, path, sizeof path, &net);
        struct bbt_plugin p = open_cuda(path, act % 2 ? "on" : "off");
        bbt_check_against_reference(&p, &net, 33, act, "cuda");
        bbt_check_against_reference(&p, &net, 1, act, "cuda");
        bbt_plugin_close(&p);
        bbd_free(&net);
        unlink(path);
    }
}

Test(cuda, a_request_of_the_wrong_size_fails_alone)
{
    need_gpu();
    const struct bbt_layer_spec s[] = {{8, 3, BBD_ACT_SIGMOID}};
    size_t len;
    unsigned char *b = bbt_make_net(s, 1, 5, &len);
    char path[108];
    bbt_write_bytes(path, sizeof path, b, len);
    struct bbt_plugin p = open_cuda(path, "on");
    float x[3][9] = {{0}}, out[3][4];
    struct bb_view in[3] = {{x[0], 32}, {x[1], 36}, {x[2], 32}};
    struct bb_outbuf o[3] = {{.ptr = out[0], .cap = 12}, {.ptr = out[1], .cap = 12},
                             {.ptr = out[2], .cap = 8}};
    run(&p, 3, in, o);
    cr_assert_eq(o[0].status, 0);
    cr_assert_eq(o[0].len, 12);
    cr_assert_eq(o[1].status, BB_EINVAL);
    cr_assert_eq(o[2].status, BB_ETOOBIG);
    bbt_plugin_close(&p);
    unlink(path);
    free(b);
}

/* The asynchronous path as the broker drives it: submit, then the stream's
 * callback completes the batch (on a thread of the CUDA runtime). */
static _Atomic int completions;
static int completed_rc;

static void on_complete(struct bb_batch *b, int rc)
{
    (void)b;
    completed_rc = rc;
    atomic_fetch_add(&completions, 1);
}

static void wait_completions(int n)
{
    for (int i = 0; i < 10000 && atomic_load(&completions) < n; i++) usleep(1000);
    cr_assert_eq(atomic_load(&completions), n, "batches not completed within 10 s");
}

/* Rows in a registered segment (read and written by the kernels in place,
 * some at odd addresses) and the same rows in unregistered memory (staged),
 * graphs on and off, run by process() or by submit() with two batches in
 * flight: the same bits. */
Test(cuda, registered_and_staged_rows_give_the_same_bits)
{
    need_gpu();
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.bbdense");
    char w[512];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    enum { N = 48, IN = 3136, OUT = 40, HALF = N / 2 };
    size_t seg = 1 << 20;
    char *shm = mmap(NULL, seg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *heap = malloc(seg);
    cr_assert(shm != MAP_FAILED && heap);
    const struct bb_segment sg = {.size = sizeof sg, .id = 7, .base = shm, .len = seg,
                                  .numa_node = -1};
    float res[8][N][10];
    for (int mode = 0; mode < 8; mode++) {
        int registered = mode & 1, async = mode & 4;
        struct bbt_plugin p = open_cuda(w, mode & 2 ? "on" : "off");
        char *base = registered ? shm : heap;
        if (registered) cr_assert_eq(p.ops->register_segment(p.state, &sg), 0);
        struct bb_view in[N];
        struct bb_outbuf o[N];
        uint32_t ids[N];
        for (int i = 0; i < N; i++) {
            /* Every third row one byte off alignment, rows out of order. */
            char *ip = base + (size_t)(N - 1 - i) * (IN + 8) + (i % 3 == 0);
            char *op = base + 512 * 1024 + (size_t)i * 64 + (i % 3 == 1);
            memcpy(ip, d.x + (size_t)i * 784, IN);
            in[i] = (struct bb_view){ip, IN};
            o[i] = (struct bb_outbuf){.ptr = op, .cap = OUT};
            ids[i] = registered ? sg.id : 0;
        }
        if (async) {
            /* Two batches of half the rows each, both in flight. */
            static uint8_t prio[N];
            char msg[2][256];
            struct bb_batch b[2];
            atomic_store(&completions, 0);
            for (int k = 0; k < 2; k++) {
                b[k] = (struct bb_batch){.n = HALF, .inputs = in + k * HALF,
                                         .outputs = o + k * HALF, .priorities = prio,
                                         .errmsg = msg[k], .errmsg_cap = sizeof msg[k],
                                         .segments = ids + k * HALF, .complete = on_complete};
                cr_assert_eq(p.ops->submit(p.state, &b[k]), 0, "submit: %s", msg[k]);
            }
            wait_completions(2);
            cr_assert_eq(completed_rc, 0);
        } else {
            static uint8_t prio[N];
            char msg[256] = "";
            struct bb_batch b = {.n = N, .inputs = in, .outputs = o, .priorities = prio,
                                 .errmsg = msg, .errmsg_cap = sizeof msg, .segments = ids};
            cr_assert_eq(p.ops->process(p.state, &b), 0, "process: %s", msg);
        }
        for (int i = 0; i < N; i++) {
            cr_assert_eq(o[i].len, OUT);
            memcpy(res[mode][i], o[i].ptr, OUT);
        }
        if (registered) p.ops->unregister_segment(p.state, &sg);
        bbt_plugin_close(&p);
    }
    for (int mode = 1; mode < 8; mode++)
        cr_assert_eq(memcmp(res[0], res[mode], sizeof res[0]), 0, "mode %d differs from mode 0",
                     mode);
    munmap(shm, seg);
    free(heap);
    bb__fmnist_free(&d);
}

Test(cuda, fmnist_through_the_broker_from_4_processes_matches_in_process)
{
    need_gpu();
    struct bb__fmnist d;
    bbt_need_fmnist(&d, "fmnist.bbdense");
    char w[512], lines[700];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    /* In-process rows are heap memory (staged); the broker registers the
     * clients' segments (mapped). */
    struct bbt_plugin p = open_cuda(w, "on");
    snprintf(lines, sizeof lines, "backend = cuda\nparam.weights = %s\n", w);
    bbt_fmnist_acceptance("cuda", &p, lines, &d, NULL, NULL);
    bbt_plugin_close(&p);
    bb__fmnist_free(&d);
}
