/* Scheduling against a real broker: max_batch_bytes: no batch exceeds it, and
 * a request larger than it fails with BB_ETOOBIG.
 * Each test starts its own broker (sched_util.h). */
#include <criterion/criterion.h>

#include "sched_util.h"

TestSuite(sched_batch_bytes, .fini = sch_fini, .timeout = 120);

Test(sched_batch_bytes, batches_never_exceed_max_batch_bytes)
{
    const char *log = sch_rec_path();
    sch_start_cfg(REC_MODEL("mb", 30000, "max_batch_size = 64\nmax_batch_bytes = 4096\n"
                                     "max_request_bytes = 8192\n"),
              log);
    bb_client *c;
    bb_model *m;
    bb_request *blocker = sch_blocked("mb", 64, &c, &m);
    static const size_t sizes[] = {100, 300, 700, 1000, 1500, 2048};
    bb_request *rs[30];
    for (int i = 0; i < 30; i++) {
        size_t s = sizes[i % 6];
        rs[i] = sch_req_new(m, s, s, 100 + (uint64_t)i);
        sch_submit(rs[i], 0, 0, 0, 100 + (uint64_t)i);
    }
    for (int i = 0; i < 30; i++) {
        cr_assert_eq(sch_finish(rs[i], 20000), 0, "request %d: %s", i,
                     bb_strerror(bb_request_status(rs[i])));
        cr_assert(sch_echo_ok(rs[i], 100 + (uint64_t)i));
    }
    cr_assert_eq(sch_finish(blocker, 5000), 0);
    int nb = sch_rec_read(log);
    unsigned items = 0, multi = 0;
    for (int b = 0; b < nb; b++) {
        cr_assert_leq(sch_recs[b].bytes, 4096, "batch %d held %zu bytes", b, sch_recs[b].bytes);
        items += sch_recs[b].n;
        multi += sch_recs[b].n > 1;
    }
    cr_assert_eq(items, 31);
    cr_assert_gt(multi, 0, "no batch held more than one request: the limit was never tested");
    /* One request over max_batch_bytes: BB_ETOOBIG, at submission. */
    bb_request *big = sch_req_new(m, 3000, 1100, 2);
    sch_submit(big, 0, 0, 0, 2);
    cr_assert_eq(sch_finish(big, 5000), BB_ETOOBIG, "%s", bb_strerror(bb_request_status(big)));
    /* Over max_request_bytes the client refuses it already. */
    bb_request *huge = NULL;
    cr_assert_eq(bb_request_new(m, 8000, 1000, &huge), BB_ETOOBIG);
    bb_disconnect(c);
}
