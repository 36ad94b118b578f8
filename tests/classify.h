/* Fashion-MNIST classification for the backend suites (test_backend_*.c): the
 * same images through a backend called in this process, through a broker from
 * several client processes, and through an exact reference.
 *
 * Why predictions can be compared exactly. A float32 network's outputs depend
 * on the order of its sums, which differs between a GEMV and a GEMM, between
 * batch sizes and between libraries, so two correct runs may disagree in the
 * last bits. bbt_reference() evaluates the network in double precision and
 * bounds, for every image, how far any float32 evaluation can be from the
 * exact logits whatever the summation order (the classic bound
 * gamma_n * sum |w_k x_k| per dot product, carried through the layers). An
 * image whose top class leads every other by more than the two bounds is
 * "certified": every correct float32 evaluation must predict exactly that
 * class. For the few others (near ties) the candidates are the classes within
 * the bounds of the top. So the suites require exact equality on every
 * certified image and membership in the candidates on the rest, and a run
 * that differs anywhere else is wrong, not unlucky. */
#ifndef BB_TEST_CLASSIFY_H
#define BB_TEST_CLASSIFY_H

#include <stddef.h>
#include <stdint.h>

#include "batchbroker/backend.h"
#include "fmnist_internal.h"
#include "harness.h"

#ifndef BB_MODEL_DIR
#define BB_MODEL_DIR "models"
#endif

/* "$BB_MODEL_DIR/<file>" (environment first, then the build's directory). */
const char *bbt_model_path(const char *file, char *buf, size_t len);

/* Skip the test (with the reason) unless the test set and the model file are
 * there; loads the test set into *d. */
void bbt_need_fmnist(struct bb__fmnist *d, const char *model_file);

/* A backend plugin loaded into this process and one instance of it. */
struct bbt_plugin {
    void *dl;
    const struct bb_backend_ops *ops;
    void *state;
};

/* Load bbt_plugin_dir()/bb_backend_<name>.so and init it with params given
 * as "key=value" strings (NULL-terminated); an init2 backend is told it is
 * the only instance, with batches of at most BBT_PLUGIN_MAX_BATCH requests.
 * Returns 0, or the init's code (or -1) with a message in err. */
#define BBT_PLUGIN_MAX_BATCH 256u
int bbt_plugin_open(struct bbt_plugin *p, const char *name, const char *const *kv, char *err,
                    size_t errlen);
void bbt_plugin_close(struct bbt_plugin *p);

/* Classify every image in-process, `batch` at a time (the last batch may be
 * smaller), inputs laid out contiguously; pred[i] is the argmax of the
 * outputs. Asserts every request succeeds. */
void bbt_plugin_predict(struct bbt_plugin *p, const struct bb__fmnist *d, uint32_t batch,
                        uint8_t *pred);

/* Classify every image through the broker: nclients processes, each with its
 * own client and `inflight` requests in flight, take the images round robin.
 * pred must be n bytes of MAP_SHARED memory. Asserts every process and
 * request succeeds. */
void bbt_broker_predict(const struct bbt_broker *b, const char *model,
                        const struct bb__fmnist *d, int nclients, int inflight, uint8_t *pred);

/* Candidates per image (bit c set: class c may be the argmax of a correct
 * float32 evaluation of the network in weights_path). Asserts the file
 * loads; layers must use identity or relu. Returns the number of certified
 * images (exactly one candidate). */
uint32_t bbt_reference(const char *weights_path, const struct bb__fmnist *d, uint16_t *cand);

/* Assert that pred agrees with the candidates everywhere: exactly on every
 * certified image, which pins it to the prediction of every other correct
 * run. `other` (another run, or NULL) is compared for the log: only near
 * ties may differ. Returns the accuracy against the labels. */
double bbt_assert_predictions(const char *what, const uint8_t *pred, const uint8_t *other,
                              const uint16_t *cand, const struct bb__fmnist *d);

/* Issue 12's acceptance check: the whole test set in-process through p
 * (batches of 64) and through a broker serving model "fmnist" (its section's
 * backend and param lines in backend_lines) from 4 client processes x 16 in
 * flight; both held to the exact reference of fmnist.bbdense (the same
 * weights as fmnist.pt), and at least 85% accurate. extra: another run's
 * predictions to check the same way (NULL for none). */
void bbt_fmnist_acceptance(const char *what, struct bbt_plugin *p, const char *backend_lines,
                           const struct bb__fmnist *d, const uint8_t *extra,
                           const char *extra_what);

/* `batchbroker --check` on config (a whole config file's text) must exit 2
 * with a message naming "model <model>" and file. */
void bbt_expect_check_refuses(const char *model, const char *config, const char *file,
                              const char *why);

/* Shared anonymous memory of len bytes (for results written by children). */
void *bbt_shared(size_t len);

#endif
