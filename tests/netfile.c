/* .bbdense files and a reference forward pass for the suites: netfile.h. */
#include "netfile.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "classify.h"
#include "harness.h"

void bbt_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

void bbt_seal(unsigned char *buf, size_t len)
{
    bbt_put32(buf + len - 4, (uint32_t)crc32(0L, buf, (uInt)(len - 4)));
}

/* A valid file image of the layers in s, weights from a fixed generator in
 * [-0.5, 0.5). Caller frees. */
unsigned char *bbt_make_net(const struct bbt_layer_spec *s, uint32_t n, uint64_t seed, size_t *len)
{
    size_t params = 0;
    for (uint32_t l = 0; l < n; l++) params += (size_t)s[l].in * s[l].out + s[l].out;
    size_t body = n * BBD_LAYER_BYTES + params * 4;
    *len = BBD_HEADER_BYTES + body + 4;
    unsigned char *b = calloc(1, *len);
    cr_assert_not_null(b);
    memcpy(b, BBD_MAGIC, 8);
    bbt_put32(b + 8, BBD_VERSION);
    bbt_put32(b + 12, n);
    bbt_put32(b + 24, (uint32_t)body);
    bbt_put32(b + 28, (uint32_t)((uint64_t)body >> 32));
    unsigned char *t = b + BBD_HEADER_BYTES, *p = t + n * BBD_LAYER_BYTES;
    for (uint32_t l = 0; l < n; l++, t += BBD_LAYER_BYTES) {
        bbt_put32(t, s[l].in);
        bbt_put32(t + 4, s[l].out);
        bbt_put32(t + 8, s[l].act);
        for (size_t i = 0; i < (size_t)s[l].in * s[l].out + s[l].out; i++, p += 4) {
            float f = (float)((bbt_rand(&seed) >> 40) / (double)(1 << 24) - 0.5);
            uint32_t u;
            memcpy(&u, &f, 4);
            bbt_put32(p, u);
        }
    }
    bbt_seal(b, *len);
    return b;
}

void bbt_write_bytes(char *path, size_t pathlen, const void *buf, size_t len)
{
    bbt_unique_path(path, pathlen, ".bbdense");
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Double-precision forward pass of a parsed net, one input row. */
void bbt_reference_row(const struct bbd_net *net, const float *x, double *y)
{
    double a[64], b[64];
    for (uint32_t k = 0; k < net->in_dim; k++) a[k] = x[k];
    for (uint32_t l = 0; l < net->nlayers; l++) {
        const struct bbd_layer *L = &net->layers[l];
        for (uint32_t j = 0; j < L->out; j++) {
            double z = L->b[j];
            for (uint32_t k = 0; k < L->in; k++) z += (double)L->w[(size_t)j * L->in + k] * a[k];
            b[j] = z;
        }
        double m = b[0], s = 0;
        for (uint32_t j = 0; j < L->out; j++) m = b[j] > m ? b[j] : m;
        for (uint32_t j = 0; j < L->out; j++) s += exp(b[j] - m);
        for (uint32_t j = 0; j < L->out; j++) {
            switch (L->act) {
            case BBD_ACT_RELU: a[j] = b[j] > 0 ? b[j] : 0; break;
            case BBD_ACT_TANH: a[j] = tanh(b[j]); break;
            case BBD_ACT_SIGMOID: a[j] = 1 / (1 + exp(-b[j])); break;
            case BBD_ACT_SOFTMAX: a[j] = exp(b[j] - m) / s; break;
            default: a[j] = b[j];
            }
        }
    }
    for (uint32_t j = 0; j < net->out_dim; j++) y[j] = a[j];
}


void bbt_check_against_reference(struct bbt_plugin *p, const struct bbd_net *net, uint32_t n,
                                 uint64_t seed, const char *what)
{
    uint32_t in = net->in_dim, out = net->out_dim;
    cr_assert(in <= 64 && out <= 64);
    float *x = calloc((size_t)n * in, sizeof *x), *y = calloc((size_t)n * out, sizeof *y);
    struct bb_view *views = calloc(n, sizeof *views);
    struct bb_outbuf *o = calloc(n, sizeof *o);
    uint8_t *prio = calloc(n, 1);
    cr_assert(x && y && views && o && prio);
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t k = 0; k < in; k++)
            x[(size_t)i * in + k] = (float)((bbt_rand(&seed) % 2001) / 1000.0 - 1);
        views[i] = (struct bb_view){x + (size_t)i * in, in * sizeof(float)};
        o[i] = (struct bb_outbuf){.ptr = y + (size_t)i * out, .cap = out * sizeof(float)};
    }
    char msg[256] = "";
    struct bb_batch batch = {.n = n, .inputs = views, .outputs = o, .priorities = prio,
                             .errmsg = msg, .errmsg_cap = sizeof msg};
    cr_assert_eq(p->ops->process(p->state, &batch), 0, "%s: %s", what, msg);
    uint32_t act = net->layers[net->nlayers - 1].act;
    for (uint32_t i = 0; i < n; i++) {
        double want[64], sum = 0;
        bbt_reference_row(net, x + (size_t)i * in, want);
        cr_assert_eq(o[i].status, 0, "%s: row %u status %d", what, i, o[i].status);
        cr_assert_eq(o[i].len, out * sizeof(float), "%s: row %u len %zu", what, i, o[i].len);
        for (uint32_t j = 0; j < out; j++) {
            double got = y[(size_t)i * out + j];
            cr_assert(fabs(got - want[j]) <= 1e-5 + 1e-5 * fabs(want[j]),
                      "%s, %s, batch %u, row %u, out %u: %g, want %g", what, bbd_act_name(act), n,
                      i, j, got, want[j]);
            sum += got;
        }
        if (act == BBD_ACT_SOFTMAX) cr_assert(fabs(sum - 1) < 1e-5, "softmax sums to %g", sum);
    }
    free(x);
    free(y);
    free(views);
    free(o);
    free(prio);
}

void bbt_net_file(const struct bbt_layer_spec *s, uint32_t n, uint64_t seed, char *path,
                  size_t pathlen, struct bbd_net *net)
{
    size_t len;
    unsigned char *b = bbt_make_net(s, n, seed, &len);
    bbt_write_bytes(path, pathlen, b, len);
    char err[256];
    cr_assert_eq(bbd_parse(b, len, net, err, sizeof err), 0, "%s", err);
    free(b);
}
