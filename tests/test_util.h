/* Helpers shared by the Criterion suites that talk to a real broker
 * (test_client, test_robustness, test_sched_*). They assert with
 * Criterion, so this file (and test_util.c) is compiled into Criterion suites
 * only; the Criterion-free helpers (brokers, bbt_msleep, bbt_fill/bbt_check)
 * are in harness.h, which tsan_stress.c uses too. */
#ifndef BB_TEST_UTIL_H
#define BB_TEST_UTIL_H

#include <stdint.h>

#include <criterion/criterion.h>

#include "batchbroker/client.h"
#include "harness.h"

/* Start broker *b with `-o` overrides (no config file); the test fails if it
 * does not come up. */
#define BBT_START_OK(b, ...)                                                                 \
    do {                                                                                     \
        const char *ov_[] = {__VA_ARGS__, NULL};                                             \
        cr_assert_eq(bbt_broker_start(b, NULL, ov_), 0, "broker did not start (status %#x)", \
                     (b)->exit_status);                                                      \
    } while (0)

/* bb_connect to b's socket (one attempt: the broker is up once
 * bbt_broker_start returned); opts may be NULL. Asserts success. */
bb_client *bbt_connect_ok(const struct bbt_broker *b, const struct bb_client_opts *opts);

/* One bb_infer round trip on model "echo" with a fresh client: the broker
 * still serves. Asserts success and the answer. */
void bbt_fresh_client_works(const struct bbt_broker *b);

/* bb_model_open; asserts success. */
bb_model *bbt_open_ok(bb_client *c, const char *name);

/* bb_model_stats; asserts success. */
struct bb_model_stats bbt_stats_of(bb_model *m);

/* Statistics once every submission is accounted for. The broker updates its
 * figures when it reaps a batch, just after the clients can see the
 * completions, so a read right after the last bb_wait may lag by a batch;
 * read from another worker, one batch's completions may show before its
 * count: settled is accounted for and the same in two reads in a row.
 * Bounded (about 2 s); returns the last figures read either way. */
struct bb_model_stats bbt_settled_stats(bb_model *m);

/* Wait until the broker has taken `submitted` requests and none is queued:
 * the last one is running (or done). Fails the test after about 2 s. */
void bbt_wait_dispatched(bb_model *m, uint64_t submitted);

#endif
