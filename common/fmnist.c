/* Reader of the Fashion-MNIST IDX files (fmnist_internal.h). */
#include "fmnist_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#ifndef BB_FMNIST_DEFAULT_DIR
#define BB_FMNIST_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#endif

const char *bb__fmnist_dir(void)
{
    const char *e = getenv("BB_FMNIST_DIR");
    return e && e[0] ? e : BB_FMNIST_DEFAULT_DIR;
}

uint32_t bb__argmax(const float *v, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One IDX file of ndim dimensions: dims out, data malloc'ed. */
static int read_idx(const char *path, uint32_t ndim, uint32_t *dims, uint8_t **data, char *err,
                    size_t errlen)
{
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return -1;
    }
    unsigned char head[16];
    unsigned hlen = 4 + 4 * ndim;
    size_t total = 1;
    int ok = gzread(f, head, hlen) == (int)hlen && be32(head) == (0x800u | ndim);
    for (uint32_t i = 0; ok && i < ndim; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        ok = dims[i] > 0 && dims[i] <= 1000000;
        total *= dims[i];
    }
    *data = ok ? malloc(total) : NULL;
    if (!ok || !*data || gzread(f, *data, (unsigned)total) != (int)total) {
        snprintf(err, errlen, "%s: not a complete IDX file of %u dimension(s)", path, ndim);
        free(*data);
        *data = NULL;
        gzclose(f);
        return -1;
    }
    gzclose(f);
    return 0;
}

int bb__fmnist_load(const char *dir, const char *split, struct bb__fmnist *d, char *err,
                    size_t errlen)
{
    memset(d, 0, sizeof *d);
    if (!dir) dir = bb__fmnist_dir();
    char path[1024];
    uint32_t idims[3], ldims[1];
    uint8_t *pix = NULL, *lab = NULL;
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", dir, split);
    if (read_idx(path, 3, idims, &pix, err, errlen) < 0) return -1;
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    if (read_idx(path, 1, ldims, &lab, err, errlen) < 0) {
        free(pix);
        return -1;
    }
    if (idims[0] != ldims[0] || idims[1] * idims[2] != BB_FMNIST_DIM) {
        snprintf(err, errlen, "%s: %u labels for %u images of %ux%u", dir, ldims[0], idims[0],
                 idims[1], idims[2]);
        free(pix);
        free(lab);
        return -1;
    }
    d->n = idims[0];
    d->x = malloc((size_t)d->n * BB_FMNIST_DIM * sizeof *d->x);
    if (!d->x) {
        snprintf(err, errlen, "out of memory for %u images", d->n);
        free(pix);
        free(lab);
        return -1;
    }
    for (size_t i = 0; i < (size_t)d->n * BB_FMNIST_DIM; i++) d->x[i] = (float)pix[i] / 255.0f;
    for (uint32_t i = 0; i < d->n; i++)
        if (lab[i] >= BB_FMNIST_CLASSES) {
            snprintf(err, errlen, "%s: label %u of image %u", dir, lab[i], i);
            free(pix);
            free(lab);
            bb__fmnist_free(d);
            return -1;
        }
    d->y = lab;
    free(pix);
    return 0;
}

void bb__fmnist_free(struct bb__fmnist *d)
{
    if (!d) return;
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}
