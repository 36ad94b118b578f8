/* Helpers shared by the scheduling suites (tests/test_sched_*.c): one
 * broker per test (B), requests with checked payloads, the recording backend's
 * log (tests/plugins/sched_recorder.c: every batch's size, bytes, and each
 * input's id and priority), and flooding client processes. Criterion-only,
 * like test_util.h. */
#ifndef BB_TEST_SCHED_UTIL_H
#define BB_TEST_SCHED_UTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "harness.h"
#include "test_util.h"

#ifndef BB_SCHED_RECORDER
#error "BB_SCHED_RECORDER must name the recording backend plugin"
#endif

/* The broker of the running test. */
extern struct bbt_broker B;

/* Each suite's .fini: stop brokers, remove the recorder logs. */
void sch_fini(void);

/* A slow single-request-per-batch model: what is queued while a batch runs
 * is served in the order of the levels, one per batch. */
#define SLOW_ONE(name, us, extra)                                                          \
    "[model." name "]\nbackend = synthetic\nparam.batch_us = " #us "\nparam.mode = sleep\n" \
    "instances = 1\nmax_batch_size = 1\nmax_wait_us = 0\n" extra

#define REC_MODEL(name, batch_us, extra)                                                   \
    "[model." name "]\nbackend = " BB_SCHED_RECORDER "\nparam.batch_us = " #batch_us       \
    "\nparam.file = %s\ninstances = 1\nmax_wait_us = 0\n" extra

/* A model on the recording backend: its log file is the printf argument of
 * sch_start_cfg (sch_rec_path()). */

#define REC_MAX_BATCHES 512
#define REC_MAX_ITEMS 64

struct rec_batch {
    unsigned n;
    size_t bytes;
    uint64_t ids[REC_MAX_ITEMS];
    unsigned prios[REC_MAX_ITEMS];
};

/* The batches sch_rec_read parsed last. */
extern struct rec_batch sch_recs[REC_MAX_BATCHES];

struct flood_shared {
    _Atomic int ready;        /* the flood's requests are all submitted */
    _Atomic int stop;         /* parent: stop resubmitting */
    _Atomic uint64_t done;    /* flood completions seen so far */
    _Atomic uint64_t end_ns;  /* when the flood stopped resubmitting */
    _Atomic int go;           /* barrier for the dedup children */
    _Atomic int connected;
};

struct flood_arg {
    struct flood_shared *sh;
    const char *model;
    int prio;
    int depth;                /* requests kept in flight */
    uint64_t run_ns;          /* stop after this long even without `stop` */
    uint32_t timeout_us;      /* each request's own timeout (0: none) */
};

/* Start a broker from INI text built like printf. */
__attribute__((format(printf, 1, 2))) void sch_start_cfg(const char *fmt, ...);

/* A fresh log path for the recorder; removed at the end of the test. */
const char *sch_rec_path(void);

/* The request completed with 0 and its output is the echo of input `id`. */
bool sch_echo_ok(const bb_request *r, uint64_t id);

/* A request of in_len/out_cap bytes, its input filled for `id`. */
bb_request *sch_req_new(bb_model *m, size_t in_len, size_t out_cap, uint64_t id);

/* Connect a client, open model `name`, and keep its one executor busy with
 * request 1 (`bytes` in and out, tag 1), dispatched before this returns. */
bb_request *sch_blocked(const char *name, size_t bytes, bb_client **c, bb_model **m);

/* Submit with these options; asserts bb_submit returned 0. */
void sch_submit(bb_request *r, int prio, uint32_t timeout_us, uint32_t flags, uint64_t tag);

/* Wait (bounded) for completion; returns the request's status. */
int sch_finish(bb_request *r, int timeout_ms);

/* Wait until the model has rejected `n` requests. */
void sch_wait_rejected(bb_model *m, uint64_t n);

/* Wait until `queued` requests sit in the model's queues. */
void sch_wait_queued(bb_model *m, uint32_t queued);

/* Tags of the next n completions of client c, in completion order. */
int sch_collect(bb_client *c, int n, uint64_t *tags, int timeout_ms);

/* A MAP_SHARED page for a test and its child processes. */
void *sch_shared_page(size_t len);

/* Fork a client process; it must connect by itself (never fork a live
 * client) and reports through its exit status: 0 = all good. */
pid_t sch_spawn(int (*fn)(void *), void *arg);

/* Wait (bounded) for a child; it must exit 0. */
void sch_reap_ok(pid_t pid, const char *what);

/* Parse the recorder's log into sch_recs; returns the number of batches. */
int sch_rec_read(const char *path);

/* How many times input `id` reached the backend. */
int sch_rec_count(int nb, uint64_t id);

/* Keep `depth` requests of one priority in flight, resubmitting each as it
 * completes, and check every answer. Exit code: 0, or the failing step. */
int sch_flood_main(void *p);

/* Wait (bounded) until *flag reaches want. */
void sch_wait_flag(_Atomic int *flag, int want, const char *what);

#endif
