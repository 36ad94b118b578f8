/* libFuzzer harness: the .bbdense weight-file loader of the blas and cuda
 * backends (backends/bbdense.c, docs/backends/model-format.md).
 *
 * Input: one control byte, then the file image. Control bit 0 sets the
 * header's body length to what the image holds, bit 1 writes the image's
 * true CRC-32 into its trailer: without them nearly every mutation would
 * stop at those two checks, and with both clear the fuzzer still reaches
 * them. The image goes through bbd_load from a memfd, as a model file would.
 *
 * Whatever the input, the loader must return 0 with a network that keeps
 * its promises (the layers chain, every parameter finite, 64-byte aligned
 * arrays inside the one allocation, the dimensions bbdense.h bounds), or an
 * error with a message naming the file; never crash, leak or read outside
 * the image. A loaded network's activations run once over a row of its
 * widest layer. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "batchbroker/client.h"
#include "bbdense.h"

#define CTL_FIX_BODY 1u
#define CTL_FIX_CRC 2u

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void check_net(const struct bbd_net *net)
{
    if (net->nlayers == 0 || net->nlayers > BBD_MAX_LAYERS || !net->layers || !net->params)
        abort();
    if (net->in_dim != net->layers[0].in || net->out_dim != net->layers[net->nlayers - 1].out)
        abort();
    uint32_t widest = 0;
    size_t nparams = 0;
    for (uint32_t l = 0; l < net->nlayers; l++) {
        const struct bbd_layer *L = &net->layers[l];
        if (!L->in || !L->out || L->in > BBD_MAX_DIM || L->out > BBD_MAX_DIM ||
            L->act >= BBD_NACT)
            abort();
        if (l && L->in != net->layers[l - 1].out)
            abort();
        if ((uintptr_t)L->w % 64 || (uintptr_t)L->b % 64 || L->w < net->params || L->b < L->w)
            abort();
        /* Every weight and bias is read here: ASan sees one past the end. */
        for (size_t i = 0; i < (size_t)L->in * L->out; i++)
            if (!isfinite(L->w[i]))
                abort();
        for (size_t i = 0; i < L->out; i++)
            if (!isfinite(L->b[i]))
                abort();
        nparams += (size_t)L->in * L->out + L->out;
        if (L->out > widest)
            widest = L->out;
    }
    if (nparams != net->nparams || widest != net->max_dim)
        abort();
    float *row = malloc((size_t)widest * sizeof *row);
    if (!row)
        return;
    for (uint32_t l = 0; l < net->nlayers; l++) {
        const struct bbd_layer *L = &net->layers[l];
        memcpy(row, L->b, L->out * sizeof *row);
        bbd_activate(L->act, row, 1, L->out, L->out);
        for (uint32_t i = 0; i < L->out; i++)
            if (isnan(row[i]))
                abort();
    }
    free(row);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    size_t len = size - 1;
    unsigned char *img = malloc(len ? len : 1);
    if (!img)
        return 0;
    memcpy(img, data + 1, len);
    if ((ctl & CTL_FIX_BODY) && len >= BBD_HEADER_BYTES + 4) {
        uint64_t body = len - BBD_HEADER_BYTES - 4;
        put_le32(img + 24, (uint32_t)body);
        put_le32(img + 28, (uint32_t)(body >> 32));
    }
    if ((ctl & CTL_FIX_CRC) && len >= 4)
        put_le32(img + len - 4, (uint32_t)crc32(crc32(0L, Z_NULL, 0), img, (uInt)(len - 4)));

    int fd = memfd_create("fuzz.bbdense", MFD_CLOEXEC);
    if (fd < 0 || (len && write(fd, img, len) != (ssize_t)len))
        abort();
    free(img);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    struct bbd_net net;
    char err[256] = "";
    int rc = bbd_load(path, &net, err, sizeof err);
    close(fd);
    if (rc == 0) {
        check_net(&net);
    } else {
        if (rc != BB_EINVAL && rc != BB_ENOMEM)
            abort();
        if (!strstr(err, path)) /* the message names the file */
            abort();
        if (net.layers || net.params || net.nlayers)
            abort(); /* zeroed on failure */
    }
    bbd_free(&net);
    return 0;
}
