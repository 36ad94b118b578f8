/* Loader of the .bbdense weight file (bbdense.h). Order of the checks: sizes
 * first (so that nothing is read past the end), then the checksum (so that a
 * corrupt file is called corrupt, not "layer 3 has 4294967295 inputs"), then
 * the meaning of every field. */
#include "bbdense.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "batchbroker/client.h"

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Little-endian reads whatever the host's order and alignment. */
static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static float lef32(const unsigned char *p)
{
    uint32_t u = le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

const char *bbd_act_name(uint32_t act)
{
    static const char *const names[BBD_NACT] = {"identity", "relu", "tanh", "sigmoid",
                                                "softmax"};
    return act < BBD_NACT ? names[act] : "?";
}

void bbd_free(struct bbd_net *net)
{
    if (!net) return;
    free(net->layers);
    free(net->params);
    memset(net, 0, sizeof *net);
}

int bbd_parse(const void *buf, size_t len, struct bbd_net *net, char *err, size_t errlen)
{
    const unsigned char *p = buf;
    memset(net, 0, sizeof *net);
    if (len < BBD_HEADER_BYTES + 4)
        return fail(err, errlen, BB_EINVAL, "truncated: %zu bytes, a header alone is %u", len,
                    BBD_HEADER_BYTES + 4);
    if (memcmp(p, BBD_MAGIC, 8))
        return fail(err, errlen, BB_EINVAL, "not a .bbdense file (bad magic)");
    uint32_t version = le32(p + 8), nlayers = le32(p + 12);
    uint32_t flags = le32(p + 16), reserved = le32(p + 20);
    uint64_t body = le64(p + 24);
    if (version != BBD_VERSION)
        return fail(err, errlen, BB_EINVAL, "format version %u, this backend reads %u", version,
                    BBD_VERSION);
    if (body != len - BBD_HEADER_BYTES - 4)
        return fail(err, errlen, BB_EINVAL, "%s: header says %llu bytes of layers, file has %zu",
                    body > len - BBD_HEADER_BYTES - 4 ? "truncated" : "trailing bytes",
                    (unsigned long long)body, len - BBD_HEADER_BYTES - 4);
    uint32_t want = le32(p + len - 4);
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    /* zlib takes uInt lengths: feed a large file in pieces. */
    for (size_t off = 0, n; off < len - 4; off += n) {
        n = len - 4 - off < (1u << 30) ? len - 4 - off : (1u << 30);
        crc = (uint32_t)crc32(crc, p + off, (uInt)n);
    }
    if (crc != want)
        return fail(err, errlen, BB_EINVAL, "corrupt: CRC-32 %08x, the file says %08x", crc, want);
    if (flags || reserved)
        return fail(err, errlen, BB_EINVAL, "header fields flags/reserved must be 0");
    if (nlayers == 0 || nlayers > BBD_MAX_LAYERS)
        return fail(err, errlen, BB_EINVAL, "%u layers (1 to %u)", nlayers, BBD_MAX_LAYERS);
    if (body < (uint64_t)nlayers * BBD_LAYER_BYTES)
        return fail(err, errlen, BB_EINVAL, "truncated layer table");

    /* The table: dimensions chain, activations known, sizes add up. */
    const unsigned char *t = p + BBD_HEADER_BYTES;
    uint64_t nparams = 0;
    for (uint32_t l = 0; l < nlayers; l++, t += BBD_LAYER_BYTES) {
        uint32_t in = le32(t), out = le32(t + 4), act = le32(t + 8), res = le32(t + 12);
        if (in == 0 || out == 0 || in > BBD_MAX_DIM || out > BBD_MAX_DIM)
            return fail(err, errlen, BB_EINVAL, "layer %u is %u -> %u (dimensions 1 to %u)", l,
                        in, out, BBD_MAX_DIM);
        if (act >= BBD_NACT)
            return fail(err, errlen, BB_EINVAL, "layer %u: unknown activation id %u", l, act);
        if (res)
            return fail(err, errlen, BB_EINVAL, "layer %u: reserved field is %u, must be 0", l,
                        res);
        if (l > 0 && in != le32(t - BBD_LAYER_BYTES + 4))
            return fail(err, errlen, BB_EINVAL, "layer %u takes %u inputs, layer %u gives %u", l,
                        in, l - 1, le32(t - BBD_LAYER_BYTES + 4));
        nparams += (uint64_t)in * out + out;
    }
    if (nparams > BBD_MAX_PARAMS)
        return fail(err, errlen, BB_EINVAL, "%llu parameters (at most %u)",
                    (unsigned long long)nparams, BBD_MAX_PARAMS);
    if (body != (uint64_t)nlayers * BBD_LAYER_BYTES + nparams * 4)
        return fail(err, errlen, BB_EINVAL,
                    "size mismatch: the layers need %llu bytes of parameters, file has %llu",
                    (unsigned long long)(nparams * 4),
                    (unsigned long long)(body - (uint64_t)nlayers * BBD_LAYER_BYTES));

    net->layers = calloc(nlayers, sizeof *net->layers);
    /* 64-byte aligned, each layer's arrays too (padding between them), so
     * that BLAS and GPU copies see aligned rows. */
    size_t total = 0;
    t = p + BBD_HEADER_BYTES;
    for (uint32_t l = 0; l < nlayers; l++, t += BBD_LAYER_BYTES) {
        size_t w = (size_t)le32(t) * le32(t + 4), b = le32(t + 4);
        total += (w + 15) / 16 * 16 + (b + 15) / 16 * 16;
    }
    if (!net->layers || posix_memalign((void **)&net->params, 64, total * sizeof(float))) {
        net->params = NULL;
        bbd_free(net);
        return fail(err, errlen, BB_ENOMEM, "out of memory for %zu parameters", total);
    }
    net->nlayers = nlayers;
    net->nparams = (size_t)nparams;
    const unsigned char *src = p + BBD_HEADER_BYTES + (size_t)nlayers * BBD_LAYER_BYTES;
    float *dst = net->params;
    t = p + BBD_HEADER_BYTES;
    for (uint32_t l = 0; l < nlayers; l++, t += BBD_LAYER_BYTES) {
        struct bbd_layer *L = &net->layers[l];
        L->in = le32(t);
        L->out = le32(t + 4);
        L->act = le32(t + 8);
        size_t nw = (size_t)L->in * L->out;
        for (int part = 0; part < 2; part++) {
            size_t n = part ? L->out : nw;
            for (size_t i = 0; i < n; i++, src += 4) {
                dst[i] = lef32(src);
                if (!isfinite(dst[i])) {
                    bbd_free(net);
                    return fail(err, errlen, BB_EINVAL, "layer %u: %s %zu is not finite", l,
                                part ? "bias" : "weight", i);
                }
            }
            if (part) L->b = dst;
            else L->w = dst;
            dst += (n + 15) / 16 * 16;
        }
        if (L->out > net->max_dim) net->max_dim = L->out;
    }
    net->in_dim = net->layers[0].in;
    net->out_dim = net->layers[nlayers - 1].out;
    return 0;
}

int bbd_load(const char *path, struct bbd_net *net, char *err, size_t errlen)
{
    memset(net, 0, sizeof *net);
    /* O_NONBLOCK: the open of a FIFO would otherwise wait for a writer
     * forever, before the regular-file check below could refuse it. Reads of
     * a regular file ignore the flag. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fail(err, errlen, BB_EINVAL, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, BB_EINVAL, "%s: not a regular file", path);
    }
    /* Header, table and the largest allowed parameter block. */
    uint64_t max = BBD_HEADER_BYTES + 4 + (uint64_t)BBD_MAX_LAYERS * BBD_LAYER_BYTES +
                   (uint64_t)BBD_MAX_PARAMS * 4;
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return fail(err, errlen, BB_EINVAL, "%s: %lld bytes, larger than any valid file", path,
                    (long long)st.st_size);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return fail(err, errlen, BB_ENOMEM, "%s: out of memory for %zu bytes", path, len);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    char why[200];
    int rc = got == len ? bbd_parse(buf, len, net, why, sizeof why)
                        : fail(why, sizeof why, BB_EINVAL, "read error");
    free(buf);
    if (rc < 0) fail(err, errlen, rc, "%s: %s", path, why);
    return rc;
}

void bbd_activate(uint32_t act, float *y, size_t rows, size_t dim, size_t ld)
{
    for (size_t r = 0; r < rows; r++) {
        float *v = y + r * ld;
        switch (act) {
        case BBD_ACT_RELU:
            /* Branch-free: clear every value whose sign bit is set. A
             * compare-and-branch mispredicts on half the values and cost a
             * sixth of a batch's time (perf, batch 64 of the demo model). */
            for (size_t j = 0; j < dim; j++) {
                uint32_t u;
                memcpy(&u, &v[j], sizeof u);
                u &= (uint32_t)((int32_t)u >> 31) ^ 0xffffffffu;
                memcpy(&v[j], &u, sizeof u);
            }
            break;
        case BBD_ACT_TANH:
            for (size_t j = 0; j < dim; j++) v[j] = tanhf(v[j]);
            break;
        case BBD_ACT_SIGMOID:
            for (size_t j = 0; j < dim; j++) v[j] = 1.0f / (1.0f + expf(-v[j]));
            break;
        case BBD_ACT_SOFTMAX: {
            /* Shifted by the max so that exp never overflows. */
            float m = v[0], s = 0.0f;
            for (size_t j = 1; j < dim; j++) m = v[j] > m ? v[j] : m;
            for (size_t j = 0; j < dim; j++) s += v[j] = expf(v[j] - m);
            for (size_t j = 0; j < dim; j++) v[j] /= s;
            break;
        }
        default:
            break;
        }
    }
}
