/*
 * bb-classify: several client processes classify the Fashion-MNIST test set
 * through the broker, each with a few requests in flight, and the parent
 * prints the accuracy, the throughput, the latency percentiles and the
 * broker's average batch size. The workload of scripts/run.sh: a real model
 * (scripts/train_fmnist.py) on real data, served by a backend plugin.
 *
 *   bb-classify [-s SOCKET] [-m MODEL] [-p PROCS] [-k INFLIGHT] [-n IMAGES]
 *
 * Each request is one image, 784 float32 (pixel / 255), and its answer the
 * 10 class scores; the predicted class is the largest. Images come from
 * $BB_FMNIST_DIR, else the directory the build found.
 *
 * Exit status: 0 if every image got an answer, 1 if any request failed (or a
 * process died), 2 on bad usage or a missing dataset.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "fmnist_internal.h"

#define WAIT_NS (10ll * 1000000000ll)
#define MAX_INFLIGHT 256
#define NO_ANSWER 0xff

static const char *const class_names[BB_FMNIST_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

/* Written by the client processes (one image each), read by the parent
 * after waitpid. */
struct results {
    uint8_t *pred;     /* [n] class, NO_ANSWER if none */
    uint32_t *lat_us;  /* [n] submit to answer */
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* One process: images id, id + procs, ... with `inflight` requests reused
 * round robin. Returns the exit status. */
static int client(const char *sock, const char *model, const struct bb__fmnist *d, uint32_t n,
                  int id, int procs, int inflight, struct results *res)
{
    bb_client *c;
    bb_model *m;
    int rc = bb_connect(sock, NULL, &c);
    if (rc == 0) rc = bb_model_open(c, model, &m);
    if (rc < 0) {
        fprintf(stderr, "bb-classify: process %d: %s\n", id, bb_strerror(rc));
        return 1;
    }
    bb_request *r[MAX_INFLIGHT];
    int64_t img[MAX_INFLIGHT];
    uint64_t t0[MAX_INFLIGHT];
    for (int k = 0; k < inflight; k++) {
        rc = bb_request_new(m, BB_FMNIST_DIM * sizeof(float), 64, &r[k]);
        if (rc < 0) {
            fprintf(stderr, "bb-classify: process %d: bb_request_new: %s\n", id, bb_strerror(rc));
            return 1;
        }
        img[k] = -1;
    }
    int status = 0;
    uint32_t next = (uint32_t)id, pending = 0;
    for (int k = 0;; k = (k + 1) % inflight) {
        if (img[k] >= 0) {
            rc = bb_wait(r[k], WAIT_NS);
            if (rc == 0) rc = bb_request_status(r[k]);
            size_t len = 0;
            const float *out = rc == 0 ? bb_request_output(r[k], &len) : NULL;
            if (out && len == BB_FMNIST_CLASSES * sizeof(float)) {
                float v[BB_FMNIST_CLASSES];
                memcpy(v, out, sizeof v);
                res->pred[img[k]] = (uint8_t)bb__argmax(v, BB_FMNIST_CLASSES);
                res->lat_us[img[k]] = (uint32_t)((now_ns() - t0[k]) / 1000u);
            } else if (status == 0) {
                fprintf(stderr, "bb-classify: image %lld: %s\n", (long long)img[k],
                        rc < 0 ? bb_strerror(rc) : "answer is not 10 class scores");
                status = 1;
            }
            img[k] = -1;
            pending--;
        }
        if (next < n) {
            memcpy(bb_request_input(r[k]), d->x + (size_t)next * BB_FMNIST_DIM,
                   BB_FMNIST_DIM * sizeof(float));
            t0[k] = now_ns();
            rc = bb_submit(r[k], NULL);
            if (rc < 0) {
                fprintf(stderr, "bb-classify: submit: %s\n", bb_strerror(rc));
                return 1;
            }
            img[k] = next;
            next += (uint32_t)procs;
            pending++;
        } else if (!pending) {
            break;
        }
    }
    for (int k = 0; k < inflight; k++) bb_request_free(r[k]);
    bb_disconnect(c);
    return status;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The model's broker-side figures, from a connection that is closed again
 * before any fork (a live client must not cross fork()). */
static int read_stats(const char *sock, const char *model, struct bb_model_stats *s)
{
    bb_client *c;
    bb_model *m;
    int rc = bb_connect(sock, NULL, &c);
    if (rc < 0) return rc;
    rc = bb_model_open(c, model, &m);
    if (rc == 0) rc = bb_model_stats(m, s);
    bb_disconnect(c);
    return rc;
}

static void usage(FILE *f)
{
    char def[108];
    fprintf(f, "usage: bb-classify [-s SOCKET] [-m MODEL] [-p PROCS] [-k INFLIGHT] [-n IMAGES]\n"
               "  -s  broker socket (default: %s)\n"
               "  -m  model (default fmnist)\n"
               "  -p  client processes (default 4)\n"
               "  -k  requests in flight per process (default 16, at most 256)\n"
               "  -n  images of the test set to classify (default all)\n",
            bb_default_socket(def, sizeof def) >= 0 ? def : "none");
}

/* A whole number in [min, max], or -1: "4x", "abc" and 2^32 + 5 are not 4, 0 (all
 * images) and 5. */
static long parse_num(const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || end == s || *end || v < min || v > max ? -1 : v;
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *model = "fmnist";
    int procs = 4, inflight = 16, c;
    long limit = 0;
    while ((c = getopt(argc, argv, "s:m:p:k:n:h")) != -1) {
        switch (c) {
        case 's': sock = optarg; break;
        case 'm': model = optarg; break;
        case 'p': procs = (int)parse_num(optarg, 1, 1024); break;
        case 'k': inflight = (int)parse_num(optarg, 1, MAX_INFLIGHT); break;
        case 'n': limit = parse_num(optarg, 0, UINT32_MAX); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || procs < 0 || inflight < 0 || limit < 0) {
        usage(stderr);
        return 2;
    }
    struct bb__fmnist d;
    char err[512];
    if (bb__fmnist_load(NULL, "t10k", &d, err, sizeof err) < 0) {
        fprintf(stderr, "bb-classify: %s (install dataset-fashion-mnist or set BB_FMNIST_DIR)\n",
                err);
        return 2;
    }
    uint32_t n = limit && (uint32_t)limit < d.n ? (uint32_t)limit : d.n;
    struct bb_model_stats s0 = {0}, s1 = {0};
    int rc = read_stats(sock, model, &s0);
    if (rc < 0) {
        fprintf(stderr, "bb-classify: model %s: %s\n", model, bb_strerror(rc));
        return 1;
    }
    struct results res;
    size_t bytes = (size_t)n * (1 + sizeof(uint32_t));
    void *shared = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        perror("bb-classify: mmap");
        return 1;
    }
    res.lat_us = shared;
    res.pred = (uint8_t *)(res.lat_us + n);
    memset(res.pred, NO_ANSWER, n);

    printf("bb-classify: %u Fashion-MNIST test images, %d client processes x %d in flight, "
           "model %s\n",
           n, procs, inflight, model);
    fflush(stdout);
    uint64_t t0 = now_ns();
    int failed = 0;
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) _exit(client(sock, model, &d, n, p, procs, inflight, &res));
        if (pids[p] < 0) {
            perror("bb-classify: fork");
            failed = 1;
            procs = p;
            break;
        }
    }
    for (int p = 0; p < procs; p++) {
        int st;
        if (waitpid(pids[p], &st, 0) != pids[p] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    read_stats(sock, model, &s1);

    uint32_t answered = 0, correct = 0, confusion[BB_FMNIST_CLASSES][2] = {{0}};
    uint32_t *lat = malloc(n * sizeof *lat);
    for (uint32_t i = 0; i < n; i++) {
        if (res.pred[i] == NO_ANSWER) continue;
        lat[answered++] = res.lat_us[i];
        correct += res.pred[i] == d.y[i];
        confusion[d.y[i]][0]++;
        confusion[d.y[i]][1] += res.pred[i] == d.y[i];
    }
    qsort(lat, answered, sizeof *lat, cmp_u32);
    if (answered) {
        uint64_t batches = s1.batches - s0.batches;
        uint64_t reqs = (s1.completed + s1.failed) - (s0.completed + s0.failed);
        printf("answered   %u of %u images in %.2f s: %.0f images/s\n", answered, n, secs,
               answered / secs);
        printf("accuracy   %.2f%% (%u correct)\n", 100.0 * correct / answered, correct);
        printf("latency    p50 %u us, p90 %u us, p99 %u us, max %u us (submit to answer)\n",
               lat[answered / 2], lat[(uint32_t)(answered * 0.9)], lat[(uint32_t)(answered * 0.99)],
               lat[answered - 1]);
        if (batches)
            printf("batches    %llu, %.1f requests per batch on average\n",
                   (unsigned long long)batches, (double)reqs / (double)batches);
        printf("per class ");
        for (uint32_t k = 0; k < BB_FMNIST_CLASSES; k++)
            if (confusion[k][0])
                printf(" %s %.0f%%%s", class_names[k], 100.0 * confusion[k][1] / confusion[k][0],
                       k + 1 < BB_FMNIST_CLASSES ? "," : "");
        printf("\n");
    }
    if (answered < n) {
        fprintf(stderr, "bb-classify: %u image(s) got no answer\n", n - answered);
        failed = 1;
    }
    free(lat);
    free(pids);
    bb__fmnist_free(&d);
    munmap(shared, bytes);
    return failed;
}
