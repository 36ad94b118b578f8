/* Built-in scenarios of bb-bench (--scenario NAME): several runs with their
 * own brokers and one combined report. */
#ifndef BB_BENCH_SCENARIO_H
#define BB_BENCH_SCENARIO_H

#include "bench.h"

struct bench_scenario_args {
    const char *json;       /* --json FILE, or NULL */
    const char *trace;      /* --trace FILE (time series), or NULL */
    double phase_s;         /* --duration: seconds per phase; 0 = the scenario's */
    uint32_t slo_us;        /* --slo-us; 0 = the scenario's (20000) */
    const char *optimize;   /* --optimize: the adaptive run's goal; NULL = throughput */
};

/* Adaptive batch sizing against a static grid (issue 5); the exit status. */
int bench_scenario_adaptive(struct bench_opts *o, const struct bench_scenario_args *args);

#endif
