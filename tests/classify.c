/* Fashion-MNIST classification helpers of the backend suites: classify.h. */
#include "classify.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bbdense.h"

#define IN_BYTES (BB_FMNIST_DIM * sizeof(float))
#define OUT_CAP 64u /* more than the 40 bytes of 10 logits: a backend must say len */
#define WAIT_NS (30ll * 1000000000ll)

const char *bbt_model_path(const char *file, char *buf, size_t len)
{
    const char *dir = getenv("BB_MODEL_DIR");
    snprintf(buf, len, "%s/%s", dir && dir[0] ? dir : BB_MODEL_DIR, file);
    return buf;
}

void bbt_need_fmnist(struct bb__fmnist *d, const char *model_file)
{
    char path[512], err[512];
    bbt_model_path(model_file, path, sizeof path);
    if (access(path, R_OK) != 0)
        cr_skip_test("no %s: the demo model is trained at build time when a Python with "
                     "PyTorch and the Fashion-MNIST dataset are present (scripts/deps.sh "
                     "installs python3-torch and dataset-fashion-mnist)",
                     path);
    if (bb__fmnist_load(NULL, "t10k", d, err, sizeof err) < 0)
        cr_skip_test("Fashion-MNIST test set not readable (%s): install dataset-fashion-mnist "
                     "or set BB_FMNIST_DIR",
                     err);
}

void *bbt_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED, "mmap %zu bytes", len);
    return p;
}

static void plugin_log(void *ctx, int level, const char *msg)
{
    (void)ctx;
    cr_log_info("backend (level %d): %s", level, msg);
}

int bbt_plugin_open(struct bbt_plugin *p, const char *name, const char *const *kv, char *err,
                    size_t errlen)
{
    char path[600];
    memset(p, 0, sizeof *p);
    snprintf(path, sizeof path, "%s/bb_backend_%s.so", bbt_plugin_dir(), name);
    p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        snprintf(err, errlen, "%s", dlerror());
        return -1;
    }
    bb_backend_entry_fn entry;
    void *sym = dlsym(p->dl, BB_BACKEND_ENTRY_SYMBOL);
    memcpy(&entry, &sym, sizeof entry);
    p->ops = sym ? entry() : NULL;
    if (!p->ops || p->ops->abi_version != BB_BACKEND_ABI_VERSION) {
        snprintf(err, errlen, "%s: not a backend of ABI %u", path, BB_BACKEND_ABI_VERSION);
        dlclose(p->dl);
        p->dl = NULL;
        return -1;
    }
    struct bb_param params[16];
    char keys[16][64];
    size_t n = 0;
    for (; kv && kv[n] && n < 16; n++) {
        const char *eq = strchr(kv[n], '=');
        cr_assert_not_null(eq, "param \"%s\" has no '='", kv[n]);
        snprintf(keys[n], sizeof keys[n], "%.*s", (int)(eq - kv[n]), kv[n]);
        params[n] = (struct bb_param){keys[n], eq + 1};
    }
    err[0] = '\0';
    int rc;
    if (p->ops->init2) {
        /* As the broker would for the only instance of a model whose
         * batches are at most BBT_PLUGIN_MAX_BATCH. */
        struct bb_init_args a = {.size = sizeof a, .instance = 0, .instances = 1,
                                 .numa_node = -1, .max_batch_size = BBT_PLUGIN_MAX_BATCH,
                                 .model = name, .params = params, .nparams = n,
                                 .log = plugin_log};
        rc = p->ops->init2(&a, &p->state, err, errlen);
    } else {
        rc = p->ops->init(params, n, &p->state, err, errlen);
    }
    if (rc < 0) {
        p->state = NULL;
        dlclose(p->dl);
        p->dl = NULL;
        p->ops = NULL;
    }
    return rc;
}

void bbt_plugin_close(struct bbt_plugin *p)
{
    if (p->ops && p->state) p->ops->fini(p->state);
    if (p->dl) dlclose(p->dl);
    memset(p, 0, sizeof *p);
}

void bbt_plugin_predict(struct bbt_plugin *p, const struct bb__fmnist *d, uint32_t batch,
                        uint8_t *pred)
{
    struct bb_view *in = calloc(batch, sizeof *in);
    struct bb_outbuf *out = calloc(batch, sizeof *out);
    uint8_t *prio = calloc(batch, 1);
    float *logits = calloc((size_t)batch * OUT_CAP, 1);
    cr_assert(in && out && prio && logits);
    char msg[256];
    for (uint32_t first = 0; first < d->n; first += batch) {
        uint32_t n = d->n - first < batch ? d->n - first : batch;
        for (uint32_t i = 0; i < n; i++) {
            in[i] = (struct bb_view){d->x + (size_t)(first + i) * BB_FMNIST_DIM, IN_BYTES};
            out[i] = (struct bb_outbuf){.ptr = (char *)logits + (size_t)i * OUT_CAP,
                                        .cap = OUT_CAP};
            prio[i] = BB_PRIORITY_NORMAL;
        }
        msg[0] = '\0';
        struct bb_batch b = {.n = n, .inputs = in, .outputs = out, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg};
        int rc = p->ops->process(p->state, &b);
        cr_assert_eq(rc, 0, "%s: batch at image %u failed: %d %s", p->ops->name, first, rc, msg);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(out[i].status, 0, "image %u: status %d", first + i, out[i].status);
            cr_assert_eq(out[i].len, BB_FMNIST_CLASSES * sizeof(float), "image %u: len %zu",
                         first + i, out[i].len);
            pred[first + i] = (uint8_t)bb__argmax((const float *)out[i].ptr, BB_FMNIST_CLASSES);
        }
    }
    free(in);
    free(out);
    free(prio);
    free(logits);
}

/* One client process: its images are those with index % nclients == id. */
static int client_main(const struct bbt_broker *b, const char *model, const struct bb__fmnist *d,
                       int id, int nclients, int inflight, uint8_t *pred, char *err, size_t errlen)
{
    bb_client *c;
    bb_model *m;
    int rc = bbt_connect(b, &c);
    if (rc < 0) {
        snprintf(err, errlen, "client %d: connect: %s", id, bb_strerror(rc));
        return 1;
    }
    if ((rc = bb_model_open(c, model, &m)) < 0) {
        snprintf(err, errlen, "client %d: model_open %s: %s", id, model, bb_strerror(rc));
        return 1;
    }
    bb_request *r[64];
    int64_t pending[64];
    if (inflight > 64) inflight = 64;
    for (int k = 0; k < inflight; k++) {
        if ((rc = bb_request_new(m, IN_BYTES, OUT_CAP, &r[k])) < 0) {
            snprintf(err, errlen, "client %d: request_new: %s", id, bb_strerror(rc));
            return 1;
        }
        pending[k] = -1;
    }
    uint32_t next = (uint32_t)id, left = 0;
    for (uint32_t i = (uint32_t)id; i < d->n; i += (uint32_t)nclients) left++;
    for (int k = 0; left; k = (k + 1) % inflight) {
        if (pending[k] >= 0) {
            rc = bb_wait(r[k], WAIT_NS);
            if (rc == 0) rc = bb_request_status(r[k]);
            size_t len = 0;
            const float *o = rc == 0 ? bb_request_output(r[k], &len) : NULL;
            if (rc < 0 || !o || len != BB_FMNIST_CLASSES * sizeof(float)) {
                snprintf(err, errlen, "client %d: image %lld: %s (output %zu bytes)", id,
                         (long long)pending[k], rc < 0 ? bb_strerror(rc) : "bad output", len);
                return 1;
            }
            pred[pending[k]] = (uint8_t)bb__argmax(o, BB_FMNIST_CLASSES);
            pending[k] = -1;
            left--;
        }
        if (next < d->n) {
            memcpy(bb_request_input(r[k]), d->x + (size_t)next * BB_FMNIST_DIM, IN_BYTES);
            if ((rc = bb_submit(r[k], NULL)) < 0) {
                snprintf(err, errlen, "client %d: submit: %s", id, bb_strerror(rc));
                return 1;
            }
            pending[k] = next;
            next += (uint32_t)nclients;
        }
    }
    for (int k = 0; k < inflight; k++) bb_request_free(r[k]);
    bb_disconnect(c);
    return 0;
}

void bbt_broker_predict(const struct bbt_broker *b, const char *model,
                        const struct bb__fmnist *d, int nclients, int inflight, uint8_t *pred)
{
    enum { ERR = 256 };
    char *errs = bbt_shared((size_t)nclients * ERR);
    pid_t pids[16];
    cr_assert(nclients <= 16);
    fflush(NULL);
    for (int i = 0; i < nclients; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0, "fork");
        if (pids[i] == 0)
            _exit(client_main(b, model, d, i, nclients, inflight, pred, errs + i * ERR, ERR));
    }
    for (int i = 0; i < nclients; i++) {
        int st = bbt_waitpid_bounded(pids[i], 120000);
        cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "client process %d failed (status %#x): %s", i, st, errs + i * ERR);
    }
    munmap(errs, (size_t)nclients * ERR);
}

/* Unit roundoff of float32 and gamma_n = n u / (1 - n u). */
static double gamma_n(double n)
{
    const double u = ldexp(1.0, -24);
    return n * u / (1.0 - n * u);
}

uint32_t bbt_reference(const char *weights_path, const struct bb__fmnist *d, uint16_t *cand)
{
    struct bbd_net net;
    char err[512];
    cr_assert_eq(bbd_load(weights_path, &net, err, sizeof err), 0, "%s", err);
    cr_assert_eq(net.in_dim, BB_FMNIST_DIM);
    cr_assert_eq(net.out_dim, BB_FMNIST_CLASSES);
    size_t width = net.in_dim > net.max_dim ? net.in_dim : net.max_dim;
    /* Exact values (v) and error bounds (e) of the current layer's input. */
    double *v = malloc(width * sizeof *v), *e = malloc(width * sizeof *e);
    double *nv = malloc(width * sizeof *nv), *ne = malloc(width * sizeof *ne);
    cr_assert(v && e && nv && ne);
    uint32_t certified = 0;
    for (uint32_t img = 0; img < d->n; img++) {
        uint32_t dim = net.in_dim;
        for (uint32_t k = 0; k < dim; k++) {
            v[k] = d->x[(size_t)img * dim + k]; /* the float32 input, exactly */
            e[k] = 0;
        }
        for (uint32_t l = 0; l < net.nlayers; l++) {
            const struct bbd_layer *L = &net.layers[l];
            cr_assert(L->act == BBD_ACT_IDENTITY || L->act == BBD_ACT_RELU,
                      "reference: layer %u activation %s", l, bbd_act_name(L->act));
            /* K products and K sums with the bias: gamma_{K+2} covers any
             * order, with or without FMA; doubled for the slack of double
             * arithmetic here. */
            double g = 2.0 * gamma_n((double)L->in + 2.0);
            for (uint32_t j = 0; j < L->out; j++) {
                const float *w = L->w + (size_t)j * L->in;
                double z = L->b[j], mag = fabs((double)L->b[j]), prop = 0;
                for (uint32_t k = 0; k < L->in; k++) {
                    double wk = w[k];
                    z += wk * v[k];
                    mag += fabs(wk) * (fabs(v[k]) + e[k]);
                    prop += fabs(wk) * e[k];
                }
                double ej = prop + g * mag;
                if (L->act == BBD_ACT_RELU && z <= 0) {
                    /* relu is 1-Lipschitz: max(0, z+err) is within err of 0. */
                    ej = z + ej > 0 ? z + ej : 0;
                    z = 0;
                }
                nv[j] = z;
                ne[j] = ej;
            }
            memcpy(v, nv, L->out * sizeof *v);
            memcpy(e, ne, L->out * sizeof *e);
            dim = L->out;
        }
        uint32_t top = 0;
        for (uint32_t c = 1; c < dim; c++)
            if (v[c] > v[top]) top = c;
        uint16_t mask = 0;
        for (uint32_t c = 0; c < dim; c++)
            if (c == top || v[top] - v[c] <= e[top] + e[c]) mask |= (uint16_t)(1u << c);
        cand[img] = mask;
        certified += mask == (1u << top);
    }
    free(v);
    free(e);
    free(nv);
    free(ne);
    bbd_free(&net);
    return certified;
}

double bbt_assert_predictions(const char *what, const uint8_t *pred, const uint8_t *other,
                              const uint16_t *cand, const struct bb__fmnist *d)
{
    uint32_t correct = 0, ties = 0, differ = 0;
    for (uint32_t i = 0; i < d->n; i++) {
        /* Certified (one candidate): this is exact equality with the
         * reference, hence with every other correct run. */
        cr_assert(pred[i] < BB_FMNIST_CLASSES && (cand[i] >> pred[i] & 1),
                  "%s: image %u predicted %u, the exact evaluation allows only mask %#x", what, i,
                  pred[i], cand[i]);
        if (cand[i] & (cand[i] - 1)) ties++;
        if (other && other[i] != pred[i]) differ++;
        correct += pred[i] == d->y[i];
    }
    cr_log_info("%s: accuracy %.2f%%, %u near-tie image(s) not certified, %u prediction(s) "
                "differ from the in-process run (near ties only)",
                what, 100.0 * correct / d->n, ties, differ);
    return (double)correct / d->n;
}

void bbt_expect_check_refuses(const char *model, const char *config, const char *file,
                              const char *why)
{
    char cfgpath[108], out[2048], err[4096], plugin_arg[300], name[160];
    cr_assert_eq(bbt_write_file(cfgpath, sizeof cfgpath, ".ini", config), 0);
    snprintf(plugin_arg, sizeof plugin_arg, "broker.plugin_dir=%s", bbt_plugin_dir());
    const char *argv[] = {bbt_broker_bin(), "--check", "--config", cfgpath, "-o", plugin_arg, NULL};
    int st = bbt_run(argv, out, sizeof out, err, sizeof err, 60000);
    unlink(cfgpath);
    cr_assert(st != -1 && WIFEXITED(st), "%s: status %#x", why, st);
    cr_assert_eq(WEXITSTATUS(st), 2, "%s: exit %d, stderr: %s", why, WEXITSTATUS(st), err);
    snprintf(name, sizeof name, "model %s", model);
    cr_assert(strstr(err, name), "%s: stderr does not name the model: %s", why, err);
    cr_assert(strstr(err, file), "%s: stderr does not name %s: %s", why, file, err);
    cr_log_info("%s: %s", why, err);
}

void bbt_fmnist_acceptance(const char *what, struct bbt_plugin *p, const char *backend_lines,
                           const struct bb__fmnist *d, const uint8_t *extra, const char *extra_what)
{
    char w[512], cfg[1536];
    bbt_model_path("fmnist.bbdense", w, sizeof w);
    uint16_t *cand = calloc(d->n, sizeof *cand);
    uint8_t *inproc = calloc(d->n, 1), *broker = bbt_shared(d->n);
    cr_assert(cand && inproc);
    uint32_t certified = bbt_reference(w, d, cand);
    bbt_plugin_predict(p, d, 64, inproc);

    snprintf(cfg, sizeof cfg, "[model.fmnist]\nmax_batch_size = 64\nmax_wait_us = 300\n%s",
             backend_lines);
    struct bbt_broker b;
    cr_assert_eq(bbt_broker_start(&b, cfg, NULL), 0, "broker did not start (status %#x)",
                 b.exit_status);
    memset(broker, 0xff, d->n);
    bbt_broker_predict(&b, "fmnist", d, 4, 16, broker);
    bbt_broker_stop(&b);

    char label[128];
    cr_log_info("%s: %u of %u images certified", what, certified, d->n);
    snprintf(label, sizeof label, "%s in-process, batch 64", what);
    double acc = bbt_assert_predictions(label, inproc, NULL, cand, d);
    if (extra) {
        snprintf(label, sizeof label, "%s in-process, %s", what, extra_what);
        bbt_assert_predictions(label, extra, inproc, cand, d);
    }
    snprintf(label, sizeof label, "%s through the broker, 4 processes", what);
    double bacc = bbt_assert_predictions(label, broker, inproc, cand, d);
    cr_assert_eq(acc, bacc);
    cr_assert_geq(bacc, 0.85, "accuracy %.4f", bacc);
    free(cand);
    free(inproc);
    munmap(broker, d->n);
}
