/* Deduplication of identical inputs (dedup.c). */
#ifndef BB_BROKER_DEDUP_H
#define BB_BROKER_DEDUP_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

struct bb__group;
struct bb__model;
struct bb__req;
struct bb__stamps;

int bb__dedup_init(struct bb__model *m);
void bb__dedup_fini(struct bb__model *m);
/* Returns 2 when r was answered from the cache, 1 when it joined an
 * in-flight twin (nothing more to do), 0 when r goes on as a new group's
 * representative (its views now point at the group's private buffers), 3
 * when it goes on undeduplicated (dedup_memory_mb is used up), or a negative
 * BB_E* code. */
int bb__dedup_submit(struct bb__model *m, struct bb__req *r, uint64_t now);
/* Detach r from its group; promotes another member if r represented it. */
void bb__dedup_leave(struct bb__model *m, struct bb__req *r);
/* The group's batch (stamps t; profile: its phases were timed) finished:
 * answer every member, fill the cache. */
void bb__dedup_complete(struct bb__model *m, struct bb__group *g, int status, size_t out_len,
                        const struct bb__stamps *t, bool profile);
/* The group's representative was taken into a batch. */
void bb__dedup_dispatched(struct bb__model *m, struct bb__group *g);
void bb__dedup_expire_cache(struct bb__model *m, uint64_t now);

#endif
