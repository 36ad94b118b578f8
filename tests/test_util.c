/* Criterion helpers shared by the broker suites: see test_util.h. */
#include "test_util.h"

#include <string.h>

bb_client *bbt_connect_ok(const struct bbt_broker *b, const struct bb_client_opts *opts)
{
    bb_client *c = NULL;
    int rc = bb_connect(b->sock, opts, &c);
    cr_assert_eq(rc, 0, "bb_connect: %s", bb_strerror(rc));
    return c;
}

void bbt_fresh_client_works(const struct bbt_broker *b)
{
    bb_client *c = bbt_connect_ok(b, NULL);
    bb_model *m = bbt_open_ok(c, "echo");
    char out[32];
    size_t n = 0;
    int rc = bb_infer(m, "still here", 10, out, sizeof out, &n, NULL, 10000000000ll);
    cr_assert_eq(rc, 0, "bb_infer with a fresh client: %s", bb_strerror(rc));
    cr_assert(n == 10 && memcmp(out, "still here", 10) == 0, "a fresh client's answer");
    bb_disconnect(c);
}

bb_model *bbt_open_ok(bb_client *c, const char *name)
{
    bb_model *m = NULL;
    int rc = bb_model_open(c, name, &m);
    cr_assert_eq(rc, 0, "bb_model_open(%s): %s", name, bb_strerror(rc));
    return m;
}

struct bb_model_stats bbt_stats_of(bb_model *m)
{
    struct bb_model_stats st;
    int rc = bb_model_stats(m, &st);
    cr_assert_eq(rc, 0, "bb_model_stats: %s", bb_strerror(rc));
    return st;
}

struct bb_model_stats bbt_settled_stats(bb_model *m)
{
    /* Served by another worker than the model's home, STATS reads counters
     * the home is still writing: a batch's completions can show before its
     * batch count. Settled means everything is accounted for and two reads
     * in a row agree. */
    struct bb_model_stats st = bbt_stats_of(m), prev = {0};
    for (int i = 0; i < 1000; i++) {
        if (i > 0 && st.queued == 0 &&
            st.completed + st.failed + st.rejected + st.timed_out + st.cancelled >= st.submitted &&
            st.completed == prev.completed && st.batches == prev.batches)
            break;
        bbt_msleep(2);
        prev = st;
        st = bbt_stats_of(m);
    }
    return st;
}

void bbt_wait_dispatched(bb_model *m, uint64_t submitted)
{
    for (int i = 0; i < 1000; i++) {
        struct bb_model_stats st = bbt_stats_of(m);
        if (st.submitted >= submitted && st.queued == 0)
            return;
        bbt_msleep(2);
    }
    cr_assert_fail("the broker never dispatched request %llu", (unsigned long long)submitted);
}
