/* Summaries, the human table and the JSON file. */
#ifndef BB_BENCH_REPORT_H
#define BB_BENCH_REPORT_H

#include <stdio.h>

#include "bench.h"

struct bench_summary {
    double tput, p50, p90, p99, p999, max, mean; /* requests/s; microseconds */
    int has_batch;
    double batch_avg;
    uint64_t batches, batch_reqs;                /* in the measured window */
    double cpu_total, cpu_per_req_us;
    int has_overhead;                            /* synthetic backend only */
    double backend_s, own_s, overhead_ratio;
};

void bench_summarize(const struct bench_opts *o, const struct bench_run_result *r,
                     struct bench_summary *s);
void bench_print_table(FILE *f, const struct bench_opts *o, struct bench_run_result *const *runs,
                       int n);
int bench_write_json(const char *path, const struct bench_opts *o,
                     struct bench_run_result *const *runs, int n);

#endif
