/* Batching strategies (strategy.c): the built-ins and the loader for custom
 * ones, behind include/batchbroker/strategy.h. */
#ifndef BB_BROKER_STRATEGY_H
#define BB_BROKER_STRATEGY_H

#include <stddef.h>

struct bb__model;

/* Set m->strategy from m->cfg.strategy; -1 with a message in err. */
int bb__strategy_load(struct bb__model *m, char *err, size_t errlen);
void bb__strategy_unload(struct bb__model *m);

#endif
