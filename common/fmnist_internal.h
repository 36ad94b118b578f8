/* Fashion-MNIST as the tests, the benchmark and the demo read it: the IDX
 * files of Debian's dataset-fashion-mnist (gzipped, big-endian header, uint8
 * pixels), turned into the model's input, float32 pixel / 255, 784 per image
 * (scripts/train_fmnist.py trains on exactly that). */
#ifndef BB_COMMON_FMNIST_INTERNAL_H
#define BB_COMMON_FMNIST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define BB_FMNIST_DIM 784u
#define BB_FMNIST_CLASSES 10u

struct bb__fmnist {
    uint32_t n;   /* images */
    float *x;     /* [n][784] */
    uint8_t *y;   /* [n] labels 0..9 */
};

/* Load split "t10k" or "train" from dir (NULL: bb__fmnist_dir()). Returns 0,
 * or -1 with a message naming the file in err. */
int bb__fmnist_load(const char *dir, const char *split, struct bb__fmnist *d, char *err,
                    size_t errlen);

void bb__fmnist_free(struct bb__fmnist *d);

/* $BB_FMNIST_DIR if set, else the build's BB_FMNIST_DEFAULT_DIR. */
const char *bb__fmnist_dir(void);

/* Index of the largest of n values (the first on a tie). */
uint32_t bb__argmax(const float *v, uint32_t n);

#endif
