/* Executors (executor.c): a model's backend instances and their threads. */
#ifndef BB_BROKER_EXECUTOR_H
#define BB_BROKER_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>

struct bb__batch;
struct bb__instance;
struct bb__model;

/* Create the model's backend instances (init with its param.* keys), their
 * batches, and (instances > 0) one thread each. -1 with a message in err. */
int bb__executor_start(struct bb__model *m, char *err, size_t errlen);
/* Stop the threads after their current batch; fini every instance. */
void bb__executor_stop(struct bb__model *m);

/* Hand a formed batch to a free executor, or run and reap it here and return
 * true (instances = 0, inline_max_us, inline_quiet_max_us). */
bool bb__executor_submit(struct bb__model *m, struct bb__batch *b);
/* Around the batcher's cuts, which may run batches on the dispatcher: false
 * where the registration thread holds what they need (instances = 0 with an
 * ABI 1 register_memory: instance 0's lock); cut nothing then, and try again
 * soon. Unlock after a true. */
bool bb__executor_inline_lock(struct bb__model *m);
void bb__executor_inline_unlock(struct bb__model *m);
/* Whether bb__executor_submit would run a synchronous batch on the
 * dispatcher now (instances = 0, or while every executor idles a quick one,
 * inline_max_us, or one that nothing would overlap, inline_quiet_max_us). */
bool bb__executor_runs_here(const struct bb__model *m);
/* Run a batch on an instance and publish its completions to the clients;
 * clock_start: read the clock when process() starts even if the batch is not
 * profiled (executors: their batches' run time must not include the wait). */
void bb__batch_run(struct bb__model *m, struct bb__instance *in, struct bb__batch *b,
                   bool clock_start);
/* Dispatcher side: account for a finished batch and let go of its clients. */
void bb__batch_reap(struct bb__batch *b);
/* A free batch for the model (one per executor exists). */
struct bb__batch *bb__batch_get(struct bb__model *m);
void bb__batch_put(struct bb__model *m, struct bb__batch *b);

#endif
