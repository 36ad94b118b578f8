/* Building .bbdense weight files in the backend suites (blas, cuda), and a
 * double-precision forward pass to hold the backends' outputs against. */
#ifndef BB_TEST_NETFILE_H
#define BB_TEST_NETFILE_H

#include <stddef.h>
#include <stdint.h>

#include "bbdense.h"

struct bbt_layer_spec {
    uint32_t in, out, act;
};

/* Little-endian store. */
void bbt_put32(unsigned char *p, uint32_t v);

/* Recompute the trailing CRC-32 of a file image of len bytes. */
void bbt_seal(unsigned char *buf, size_t len);

/* A valid file image of the n layers in s, weights and biases from a fixed
 * generator in [-0.5, 0.5). Caller frees. */
unsigned char *bbt_make_net(const struct bbt_layer_spec *s, uint32_t n, uint64_t seed, size_t *len);

/* Write len bytes to a fresh unique ".bbdense" path (returned in path). */
void bbt_write_bytes(char *path, size_t pathlen, const void *buf, size_t len);

/* bbt_make_net written to a fresh unique path and parsed into *net (free
 * with bbd_free, unlink path). */
void bbt_net_file(const struct bbt_layer_spec *s, uint32_t n, uint64_t seed, char *path,
                  size_t pathlen, struct bbd_net *net);

/* Double-precision forward pass of one input row (at most 64 wide). */
void bbt_reference_row(const struct bbd_net *net, const float *x, double *y);

/* One batch of n rows of random inputs in [-1, 1] (from seed) through plugin
 * p, an instance of the network net: every request must succeed with its
 * whole output, within 1e-5 (absolute and relative) of bbt_reference_row;
 * softmax rows must sum to 1. */
struct bbt_plugin;
void bbt_check_against_reference(struct bbt_plugin *p, const struct bbd_net *net, uint32_t n,
                                 uint64_t seed, const char *what);

#endif
