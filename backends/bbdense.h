/* The dense-network weight file of the blas and cuda backends (".bbdense",
 * docs/backends/model-format.md byte by byte): a stack of fully connected
 * layers, each y = act(W x + b) with W stored [out][in] row-major (PyTorch's
 * nn.Linear layout), float32 little-endian, a CRC-32 over the whole file.
 *
 * The loader trusts nothing in the file: every count, dimension and size is
 * checked before it is used, and every failure is a message that names the
 * file and what is wrong with it. */
#ifndef BB_BACKENDS_BBDENSE_H
#define BB_BACKENDS_BBDENSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BBD_MAGIC "BBDENSE" /* 8 bytes with its NUL */
#define BBD_VERSION 1u
#define BBD_HEADER_BYTES 32u
#define BBD_LAYER_BYTES 16u
#define BBD_MAX_LAYERS 64u
#define BBD_MAX_DIM 65536u
#define BBD_MAX_PARAMS (256u << 20) /* floats: a 1 GiB file */

enum bbd_act {
    BBD_ACT_IDENTITY = 0,
    BBD_ACT_RELU = 1,
    BBD_ACT_TANH = 2,
    BBD_ACT_SIGMOID = 3,
    BBD_ACT_SOFTMAX = 4, /* over the layer's outputs, per request */
    BBD_NACT
};

struct bbd_layer {
    uint32_t in, out, act;
    const float *w; /* [out][in] */
    const float *b; /* [out] */
};

struct bbd_net {
    uint32_t nlayers;
    uint32_t in_dim, out_dim; /* of the first and the last layer */
    uint32_t max_dim;         /* widest layer output */
    struct bbd_layer *layers;
    float *params;            /* one allocation, 64-byte aligned, owns w and b */
    size_t nparams;
};

/* Parse a whole file image. Returns 0, or BB_EINVAL with a message (without
 * the file name) in err. *net is zeroed on failure. */
int bbd_parse(const void *buf, size_t len, struct bbd_net *net, char *err, size_t errlen);

/* Read and parse `path`. Returns 0, BB_EINVAL (bad file) or BB_ENOMEM, with a
 * message naming the file in err. */
int bbd_load(const char *path, struct bbd_net *net, char *err, size_t errlen);

/* Release what bbd_parse/bbd_load allocated. Accepts a zeroed struct. */
void bbd_free(struct bbd_net *net);

/* "relu" for BBD_ACT_RELU; "?" for an unknown id. */
const char *bbd_act_name(uint32_t act);

/* Apply the activation of a layer to `rows` rows of `dim` values (bias already
 * added), in place; the CPU code the blas backend and the tests share. */
void bbd_activate(uint32_t act, float *y, size_t rows, size_t dim, size_t ld);

#ifdef __cplusplus
}
#endif
#endif
