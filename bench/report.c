/* The human table on stdout and the --json file. Latencies in microseconds,
 * CPU in seconds, all over the measured window only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "report.h"

static const char *const prio_names[5] = {"default", "critical", "high", "normal", "low"};

static double param_us(const struct bench_model *m, const char *key)
{
    for (size_t i = 0; i < m->nparams; i++)
        if (!strcmp(m->params[i].key, key)) return atof(m->params[i].value);
    return 0;
}

static int param_is(const struct bench_model *m, const char *key, const char *val)
{
    for (size_t i = 0; i < m->nparams; i++)
        if (!strcmp(m->params[i].key, key)) return !strcmp(m->params[i].value, val);
    return 0;
}

static int is_synthetic(const struct bench_model *m)
{
    const char *b = strrchr(m->backend, '/');
    b = b ? b + 1 : m->backend;
    return !strcmp(b, "synthetic") || !strcmp(b, "bb_backend_synthetic.so");
}

void bench_summarize(const struct bench_opts *o, const struct bench_run_result *r,
                     struct bench_summary *s)
{
    memset(s, 0, sizeof *s);
    s->tput = r->seconds > 0 ? (double)r->completed / r->seconds : 0;
    s->p50 = (double)bench_hist_quantile(&r->lat, 0.50) / 1e3;
    s->p90 = (double)bench_hist_quantile(&r->lat, 0.90) / 1e3;
    s->p99 = (double)bench_hist_quantile(&r->lat, 0.99) / 1e3;
    s->p999 = (double)bench_hist_quantile(&r->lat, 0.999) / 1e3;
    s->max = (double)r->lat.max / 1e3;
    s->mean = bench_hist_mean(&r->lat) / 1e3;
    if (r->has_broker_stats) {
        s->batches = r->b1.batches - r->b0.batches;
        s->batch_reqs = r->b1.completed + r->b1.failed - r->b0.completed - r->b0.failed;
        s->batch_avg = s->batches ? (double)s->batch_reqs / (double)s->batches : r->b1.avg_batch_size;
        s->has_batch = 1;
    } else if (r->has_batch_hist) {
        for (uint32_t k = 1; k <= BENCH_MAX_BATCH; k++) {
            s->batches += r->batch_count[k];
            s->batch_reqs += (uint64_t)k * r->batch_count[k];
        }
        s->batch_avg = s->batches ? (double)s->batch_reqs / (double)s->batches : 0;
        s->has_batch = 1;
    }
    s->cpu_total = (r->cpu_server > 0 ? r->cpu_server : 0) + r->cpu_clients;
    s->cpu_per_req_us = r->completed ? s->cpu_total / (double)r->completed * 1e6 : 0;
    /* The synthetic backend's cost is known: time per batch and per item. The
     * server's own CPU is what it used beyond that (in spin mode the backend
     * burns the server's CPU; in sleep mode it does not). */
    if (is_synthetic(&o->model) && s->has_batch && r->cpu_server >= 0) {
        s->backend_s = ((double)s->batches * param_us(&o->model, "batch_us") +
                        (double)s->batch_reqs * param_us(&o->model, "item_us")) / 1e6;
        if (s->backend_s > 0) {
            int sleeps = param_is(&o->model, "mode", "sleep");
            s->own_s = r->cpu_server - (sleeps ? 0 : s->backend_s);
            s->overhead_ratio = s->own_s / s->backend_s;
            s->has_overhead = 1;
        }
    }
}

/* A variant of the broker (--variant): "broker:SETTINGS". */
static int is_variant(const struct bench_run_result *r)
{
    return !strncmp(r->name, "broker:", 7);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median over rounds of a's throughput / b's in the same round. */
static double median_round_ratio(const struct bench_run_result *a, const struct bench_run_result *b)
{
    double v[BENCH_MAX_ROUNDS];
    int n = 0;
    for (int k = 0; k < a->nrounds && k < b->nrounds; k++)
        if (b->round_tput[k] > 0) v[n++] = a->round_tput[k] / b->round_tput[k];
    if (!n) return NAN;
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void fmt_opt(char *buf, size_t n, double v, const char *fmt)
{
    if (v < 0) snprintf(buf, n, "-");
    else snprintf(buf, n, fmt, v);
}

/* A server of several threads: the CPU of each in the window, by name, most
 * first ("iou-sqp-PID x2": two of that name). */
static void print_threads(FILE *f, const struct bench_run_result *r)
{
    if (r->nserver_threads < 2 && !(r->nserver_threads == 1 && r->server_threads[0].threads > 1))
        return;
    fprintf(f, "%-8s   server threads:", "");
    for (int i = 0; i < r->nserver_threads; i++) {
        const struct bench_thread_cpu *t = &r->server_threads[i];
        fprintf(f, "%s %s", i ? "," : "", t->name);
        if (t->threads > 1) fprintf(f, " x%d", t->threads);
        fprintf(f, " %.2f s", t->cpu_s);
    }
    fprintf(f, "\n");
}

void bench_print_table(FILE *f, const struct bench_opts *o, struct bench_run_result *const *runs,
                       int n)
{
    const struct bench_model *m = &o->model;
    fprintf(f, "\nmodel %s: backend %s, max_batch_size %u, max_wait_us %u", m->name,
            m->backend, m->max_batch_size, m->max_wait_us);
    for (size_t i = 0; i < m->nparams; i++) fprintf(f, ", %s=%s", m->params[i].key, m->params[i].value);
    fprintf(f, "\nload: %u client(s) x %u thread(s)%s, ", o->clients, o->threads,
            o->client_per_thread ? " (a bb_client per thread)" : "");
    if (o->lanes > 1) fprintf(f, "%u lanes a client, ", o->lanes);
    if (o->rate > 0) fprintf(f, "open loop %.0f req/s (max %u in flight/thread)", o->rate, o->concurrency);
    else fprintf(f, "closed loop, %u in flight/thread", o->concurrency);
    fprintf(f, ", payload %zu", o->pmin);
    if (o->pmax != o->pmin) fprintf(f, "-%zu", o->pmax);
    fprintf(f, " B, wait %s, %.1f s after %.1f s warm-up\n\n",
            o->wait == BENCH_WAIT_SPIN ? "spin" : "sleep", o->duration_s, o->warmup_s);
    fprintf(f, "%-12s %12s %9s %9s %9s %9s %9s %7s %8s %8s %8s %s\n", "run", "requests/s", "p50 us",
            "p90 us", "p99 us", "p99.9 us", "max us", "batch", "srv cpu", "cli cpu", "cpu/req",
            "errors");
    struct bench_summary base = {0}, s;
    const struct bench_run_result *broker = NULL;
    for (int i = 0; i < n; i++) {
        const struct bench_run_result *r = runs[i];
        if (!r->ok) {
            fprintf(f, "%-12s failed: %s\n", r->name, r->error);
            continue;
        }
        bench_summarize(o, r, &s);
        char srv[16], batch[16];
        fmt_opt(srv, sizeof srv, r->cpu_server, "%.2f s");
        fmt_opt(batch, sizeof batch, s.has_batch ? s.batch_avg : -1, "%.1f");
        fprintf(f, "%-12s %12.0f %9.2f %9.2f %9.2f %9.2f %9.1f %7s %8s %6.2f s %5.2f us %llu",
                r->name, s.tput, s.p50, s.p90, s.p99, s.p999, s.max, batch, srv, r->cpu_clients,
                s.cpu_per_req_us, (unsigned long long)(r->failed + r->bad_output));
        if (r->first_error) fprintf(f, " (%s)", bb_errname(r->first_error));
        if (o->dataset && r->completed)
            fprintf(f, "  accuracy %.2f%%", 100.0 * (double)r->correct / (double)r->completed);
        fprintf(f, "\n");
        if (s.has_overhead)
            fprintf(f, "%-8s   server's own CPU %.3f s vs backend %.3f s: %.1f%%\n", "",
                    s.own_s, s.backend_s, 100 * s.overhead_ratio);
        print_threads(f, r);
        if (!strcmp(r->name, "broker")) {
            broker = r;
            base = s;
        }
    }
    for (int p = 1; p < 5 && o->prio_weight[0] + o->prio_weight[1] + o->prio_weight[2] + o->prio_weight[3] > 0; p++)
        for (int i = 0; i < n; i++) {
            const struct bench_hist *h = &runs[i]->lat_prio[p];
            if (!runs[i]->ok || !h->count) continue;
            fprintf(f, "%-8s %-8s p50 %.2f us, p99 %.2f us, %llu requests\n", runs[i]->name,
                    prio_names[p], (double)bench_hist_quantile(h, 0.5) / 1e3,
                    (double)bench_hist_quantile(h, 0.99) / 1e3, (unsigned long long)h->count);
        }
    if (!broker) return;
    if (broker->nrounds > 1) {
        fprintf(f, "\nthroughput by round (%d rounds, alternating):\n", broker->nrounds);
        for (int i = 0; i < n; i++) {
            fprintf(f, "%-24s", runs[i]->name);
            for (int k = 0; k < runs[i]->nrounds; k++) fprintf(f, " %10.0f", runs[i]->round_tput[k]);
            if (runs[i] != broker)
                fprintf(f, "   broker/this: median %.3fx", median_round_ratio(broker, runs[i]));
            fprintf(f, "\n");
        }
    }
    fprintf(f, "\nbroker / baseline  throughput      p50      p99    p99.9  cpu/req\n");
    for (int i = 0; i < n; i++) {
        if (runs[i] == broker || !runs[i]->ok) continue;
        bench_summarize(o, runs[i], &s);
        fprintf(f, "vs %-15s %9.3fx %7.3fx %7.3fx %7.3fx %7.3fx\n", runs[i]->name,
                s.tput ? base.tput / s.tput : 0, s.p50 ? base.p50 / s.p50 : 0,
                s.p99 ? base.p99 / s.p99 : 0, s.p999 ? base.p999 / s.p999 : 0,
                s.cpu_per_req_us ? base.cpu_per_req_us / s.cpu_per_req_us : 0);
    }
}

/* ---- JSON ---- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.6g", v);
    else fprintf(f, "null");
}

static void json_latency(FILE *f, const struct bench_hist *h)
{
    fprintf(f, "{\"p50\": ");
    json_num(f, (double)bench_hist_quantile(h, 0.5) / 1e3);
    fprintf(f, ", \"p90\": ");
    json_num(f, (double)bench_hist_quantile(h, 0.9) / 1e3);
    fprintf(f, ", \"p99\": ");
    json_num(f, (double)bench_hist_quantile(h, 0.99) / 1e3);
    fprintf(f, ", \"p999\": ");
    json_num(f, (double)bench_hist_quantile(h, 0.999) / 1e3);
    fprintf(f, ", \"max\": ");
    json_num(f, (double)h->max / 1e3);
    fprintf(f, ", \"min\": ");
    json_num(f, h->count ? (double)h->min / 1e3 : 0);
    fprintf(f, ", \"mean\": ");
    json_num(f, bench_hist_mean(h) / 1e3);
    fprintf(f, ", \"count\": %llu}", (unsigned long long)h->count);
}

static void json_run(FILE *f, const struct bench_opts *o, const struct bench_run_result *r,
                     const char *ind)
{
    struct bench_summary s;
    bench_summarize(o, r, &s);
    fprintf(f, "%s\"ok\": %s,\n", ind, r->ok ? "true" : "false");
    if (!r->ok) {
        fprintf(f, "%s\"error\": ", ind);
        json_str(f, r->error);
        fprintf(f, ",\n");
    }
    fprintf(f, "%s\"throughput_rps\": ", ind);
    json_num(f, s.tput);
    fprintf(f, ",\n%s\"completed\": %llu, \"failed\": %llu, \"bad_output\": %llu,", ind,
            (unsigned long long)r->completed, (unsigned long long)r->failed,
            (unsigned long long)r->bad_output);
    if (o->dataset) {
        fprintf(f, " \"accuracy\": ");
        json_num(f, r->completed ? (double)r->correct / (double)r->completed : NAN);
        fprintf(f, ",");
    }
    fprintf(f, " \"first_error\": ");
    json_str(f, r->first_error ? bb_errname(r->first_error) : "");
    fprintf(f, ",\n%s\"seconds\": ", ind);
    json_num(f, r->seconds);
    if (r->nrounds > 1) {
        fprintf(f, ",\n%s\"round_throughput_rps\": [", ind);
        for (int k = 0; k < r->nrounds; k++) {
            fprintf(f, "%s", k ? ", " : "");
            json_num(f, r->round_tput[k]);
        }
        fprintf(f, "]");
    }
    fprintf(f, ",\n%s\"latency_us\": ", ind);
    json_latency(f, &r->lat);
    fprintf(f, ",\n%s\"latency_by_priority_us\": {", ind);
    const char *sep = "";
    for (int p = 0; p < 5; p++) {
        if (!r->lat_prio[p].count) continue;
        fprintf(f, "%s\"%s\": ", sep, prio_names[p]);
        json_latency(f, &r->lat_prio[p]);
        sep = ", ";
    }
    fprintf(f, "},\n%s\"batch\": {\"avg\": ", ind);
    if (s.has_batch) json_num(f, s.batch_avg);
    else fprintf(f, "null");
    fprintf(f, ", \"batches\": %llu, \"hist\": {", (unsigned long long)s.batches);
    if (r->has_broker_stats) {
        /* The broker counts batches in log2 buckets: key K holds the sizes
         * in (K/2, K]. */
        sep = "";
        for (int k = 0; k < BENCH_BROKER_BUCKETS; k++) {
            uint64_t c = r->b1.batch_size_hist[k] - r->b0.batch_size_hist[k];
            if (!c) continue;
            fprintf(f, "%s\"%u\": %llu", sep, 1u << k, (unsigned long long)c);
            sep = ", ";
        }
        fprintf(f, "}, \"hist_kind\": \"log2\"");
    } else {
        sep = "";
        for (uint32_t k = 1; r->has_batch_hist && k <= BENCH_MAX_BATCH; k++) {
            if (!r->batch_count[k]) continue;
            fprintf(f, "%s\"%u\": %llu", sep, k, (unsigned long long)r->batch_count[k]);
            sep = ", ";
        }
        fprintf(f, "}, \"hist_kind\": \"%s\"", r->has_batch_hist ? "distribution" : "none");
    }
    fprintf(f, "},\n%s\"cpu_s\": {\"broker\": ", ind);
    if (r->cpu_server >= 0) json_num(f, r->cpu_server);
    else fprintf(f, "null");
    fprintf(f, ", \"clients\": ");
    json_num(f, r->cpu_clients);
    fprintf(f, ", \"broker_threads\": [");
    for (int i = 0; i < r->nserver_threads; i++) {
        const struct bench_thread_cpu *t = &r->server_threads[i];
        fprintf(f, "%s{\"name\": ", i ? ", " : "");
        json_str(f, t->name);
        fprintf(f, ", \"threads\": %d, \"cpu_s\": ", t->threads);
        json_num(f, t->cpu_s);
        fprintf(f, "}");
    }
    fprintf(f, "]},\n%s\"cpu_us_per_request\": ", ind);
    json_num(f, s.cpu_per_req_us);
    if (s.has_overhead) {
        fprintf(f, ",\n%s\"backend_overhead\": {\"backend_s\": ", ind);
        json_num(f, s.backend_s);
        fprintf(f, ", \"own_s\": ");
        json_num(f, s.own_s);
        fprintf(f, ", \"ratio\": ");
        json_num(f, s.overhead_ratio);
        fprintf(f, "}");
    }
    if (r->has_broker_stats) {
        const struct bench_broker_stats *a = &r->b0, *b = &r->b1;
        fprintf(f, ",\n%s\"broker_stats\": {\"completed\": %llu, \"failed\": %llu, "
                   "\"timed_out\": %llu, \"rejected\": %llu, \"cancelled\": %llu, "
                   "\"batches\": %llu, \"avg_queue_wait_us\": ",
                ind, (unsigned long long)(b->completed - a->completed),
                (unsigned long long)(b->failed - a->failed),
                (unsigned long long)(b->timed_out - a->timed_out),
                (unsigned long long)(b->rejected - a->rejected),
                (unsigned long long)(b->cancelled - a->cancelled),
                (unsigned long long)(b->batches - a->batches));
        json_num(f, b->avg_queue_wait_us);
        fprintf(f, ", \"latency_p50_us\": ");
        json_num(f, b->latency_p50_us);
        fprintf(f, ", \"latency_p99_us\": ");
        json_num(f, b->latency_p99_us);
        fprintf(f, "}");
    }
}

static void json_config(FILE *f, const struct bench_opts *o)
{
    const struct bench_model *m = &o->model;
    struct utsname u;
    uname(&u);
    fprintf(f, "  \"config\": {\"label\": ");
    json_str(f, o->label ? o->label : "");
    fprintf(f, ", \"socket\": ");
    json_str(f, o->socket);
    fprintf(f, ", \"broker_config\": ");
    json_str(f, o->config ? o->config : "");
    fprintf(f, ", \"spawned\": %s, \"model\": ", o->spawn ? "true" : "false");
    json_str(f, m->name);
    fprintf(f, ", \"backend\": ");
    json_str(f, m->backend);
    fprintf(f, ", \"params\": {");
    for (size_t i = 0; i < m->nparams; i++) {
        fprintf(f, "%s", i ? ", " : "");
        json_str(f, m->params[i].key);
        fprintf(f, ": ");
        json_str(f, m->params[i].value);
    }
    fprintf(f, "}, \"max_batch_size\": %u, \"max_wait_us\": %u, \"instances\": %u, "
               "\"broker_spin_us\": %ld,\n",
            m->max_batch_size, m->max_wait_us, m->instances, m->spin_us);
    fprintf(f, "    \"clients\": %u, \"threads\": %u, \"client_per_thread\": %s, \"lanes\": %u, "
               "\"concurrency\": %u, \"rate\": ", o->clients, o->threads,
            o->client_per_thread ? "true" : "false", o->lanes > 1 ? o->lanes : 1, o->concurrency);
    json_num(f, o->rate);
    fprintf(f, ", \"mode\": \"%s\", \"duration_s\": ", o->rate > 0 ? "open" : "closed");
    json_num(f, o->duration_s);
    fprintf(f, ", \"warmup_s\": ");
    json_num(f, o->warmup_s);
    fprintf(f, ", \"payload_min\": %zu, \"payload_max\": %zu, \"out_cap\": %zu, \"wait\": \"%s\", "
               "\"spin_ns\": %lld,\n",
            o->pmin, o->pmax, o->out_cap, o->wait == BENCH_WAIT_SPIN ? "spin" : "sleep",
            (long long)o->spin_ns);
    fprintf(f, "    \"priority_mix\": [%g, %g, %g, %g], \"cpus\": [", o->prio_weight[0],
            o->prio_weight[1], o->prio_weight[2], o->prio_weight[3]);
    for (int i = 0; i < o->ncpus; i++) fprintf(f, "%s%d", i ? ", " : "", o->cpus[i]);
    fprintf(f, "], \"server_cpus\": [");
    for (int i = 0; i < o->nserver_cpus; i++) fprintf(f, "%s%d", i ? ", " : "", o->server_cpus[i]);
    fprintf(f, "], \"seed\": %llu,\n    \"host\": {\"cpus_online\": %ld, \"kernel\": ",
            (unsigned long long)o->seed, sysconf(_SC_NPROCESSORS_ONLN));
    json_str(f, u.release);
    fprintf(f, ", \"machine\": ");
    json_str(f, u.machine);
    fprintf(f, "}},\n");
}

int bench_write_json(const char *path, const struct bench_opts *o,
                     struct bench_run_result *const *runs, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    const struct bench_run_result *broker = NULL;
    for (int i = 0; i < n; i++)
        if (!strcmp(runs[i]->name, "broker")) broker = runs[i];
    fprintf(f, "{\n");
    if (broker) json_run(f, o, broker, "  ");
    else fprintf(f, "  \"ok\": false, \"error\": \"broker not run\", \"throughput_rps\": null,\n"
                    "  \"latency_us\": null, \"batch\": null, \"cpu_s\": null");
    fprintf(f, ",\n");
    json_config(f, o);
    const char *sep = "\n";
    fprintf(f, "  \"variants\": {");
    for (int i = 0; i < n; i++) {
        if (!is_variant(runs[i])) continue;
        fprintf(f, "%s    \"%s\": {\n", sep, runs[i]->name + strlen("broker:"));
        json_run(f, o, runs[i], "      ");
        fprintf(f, "\n    }");
        sep = ",\n";
    }
    fprintf(f, "\n  },\n");
    fprintf(f, "  \"baselines\": {");
    sep = "\n";
    for (int i = 0; i < n; i++) {
        if (runs[i] == broker || is_variant(runs[i])) continue;
        fprintf(f, "%s    \"%s\": {\n", sep, runs[i]->name);
        json_run(f, o, runs[i], "      ");
        fprintf(f, "\n    }");
        sep = ",\n";
    }
    fprintf(f, "\n  },\n  \"ratios\": {");
    sep = "\n";
    struct bench_summary b, s;
    if (broker && broker->ok) {
        bench_summarize(o, broker, &b);
        for (int i = 0; i < n; i++) {
            if (runs[i] == broker || !runs[i]->ok) continue;
            bench_summarize(o, runs[i], &s);
            fprintf(f, "%s    \"%s\": {\"throughput\": ", sep, runs[i]->name);
            json_num(f, s.tput ? b.tput / s.tput : NAN);
            fprintf(f, ", \"p50\": ");
            json_num(f, s.p50 ? b.p50 / s.p50 : NAN);
            fprintf(f, ", \"p90\": ");
            json_num(f, s.p90 ? b.p90 / s.p90 : NAN);
            fprintf(f, ", \"p99\": ");
            json_num(f, s.p99 ? b.p99 / s.p99 : NAN);
            fprintf(f, ", \"p999\": ");
            json_num(f, s.p999 ? b.p999 / s.p999 : NAN);
            fprintf(f, ", \"cpu_per_request\": ");
            json_num(f, s.cpu_per_req_us ? b.cpu_per_req_us / s.cpu_per_req_us : NAN);
            if (broker->nrounds > 1 && runs[i]->nrounds == broker->nrounds) {
                fprintf(f, ", \"throughput_median_of_rounds\": ");
                json_num(f, median_round_ratio(broker, runs[i]));
            }
            fprintf(f, "}");
            sep = ",\n";
        }
    }
    fprintf(f, "\n  }\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}
