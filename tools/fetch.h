/* bbctl's METRICS round trips (fetch.c). */
#ifndef BBCTL_FETCH_H
#define BBCTL_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "batchbroker/protocol.h"

/* Ask the broker on operator session sock for a METRICS document (format
 * BB_METRICS_*). Returns 0 with a malloc'ed, NUL-terminated copy in *out
 * (*len bytes without the NUL), or BB_EDISCONNECTED, BB_ETIMEDOUT, BB_EPROTO, BB_ENOMODEL,
 * BB_EINVAL, BB_ENOMEM, BB_ESYS. */
int bbctl_fetch(int sock, uint32_t format, uint32_t model_id, char **out, size_t *len);

/* One model's dump; BB_EPROTO if it is not this build's layout. */
int bbctl_dump(int sock, uint32_t model_id, struct bb_wire_dump *out);

#endif
