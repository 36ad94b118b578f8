/* bbctl profile: sample a running broker for a while and write one
 * self-contained HTML report (inline CSS and SVG; no script, font or image
 * from anywhere) of what its models did in that window:
 *
 *   - where a request's time goes: the four phases of docs/operations.md as
 *     shares of the end-to-end latency, with their percentiles;
 *   - latency percentiles and outcomes per priority;
 *   - batch sizes over time (a heat map of the broker's log2 buckets);
 *   - the adaptive controller's batch target and wait over time, and the
 *     throughput.
 *
 * Every figure is a difference of two of the broker's cumulative dumps
 * (METRICS / BB_METRICS_DUMP): the first taken when profiling starts, the
 * last when it ends (after --seconds, or at SIGINT/SIGTERM), with one dump a
 * tick in between for the time series. The percentiles come from the same
 * log-linear histograms, with the same arithmetic (common/hist_internal.h),
 * as the broker's own bb_model_stats figures. The numbers also go into an
 * HTML comment ("bb-profile-data", one "key value..." line each) for
 * programs and tests. */
#include "profile.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchbroker/client.h"
#include "fetch.h"
#include "hist_internal.h"

#define MAX_MODELS 64
#define MAX_COLUMNS 120   /* heat-map columns; ticks are merged beyond */
#define CHART_W 860
#define PLOT_X 70         /* left margin of a chart for its axis labels */

static const char *const prio_names[4] = {"critical", "high", "normal", "low"};
static const char *const phase_names[BB_PHASES] = {"queue wait", "formation", "backend",
                                                   "delivery"};
static const char *const phase_keys[BB_PHASES] = {"queue_wait", "formation", "backend",
                                                  "delivery"};
static const char *const phase_colors[BB_PHASES] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759"};
static const char *const phase_help[BB_PHASES] = {
    "from the client's submit to the dispatcher clock reading that cut the request's batch: "
    "time in the submission ring and in the queue, waiting for company or a free executor",
    "from that reading to the backend's start: the rest of the dispatcher's pass, picking "
    "the requests, and the hand-off to an executor thread",
    "the backend's process() call",
    "from process() returning to every completion of the batch published and its clients "
    "woken"};

struct sample {
    double t; /* seconds since the first dump */
    uint64_t batches, completed;
    uint64_t batch_size[BB_BATCH_SIZE_BUCKETS];
    uint32_t target, wait_us;
};

struct prof {
    uint32_t id;
    struct bb_wire_dump *first, *last;
    struct sample *s;
    size_t n, cap;
};

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t completed_of(const struct bb_wire_dump *d)
{
    uint64_t n = 0;
    for (int p = 0; p < 4; p++)
        n += d->requests[p][BB_OUTCOME_COMPLETED];
    return n;
}

static int add_sample(struct prof *p, const struct bb_wire_dump *d)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        struct sample *s = realloc(p->s, cap * sizeof *s);
        if (!s)
            return BB_ENOMEM;
        p->s = s;
        p->cap = cap;
    }
    struct sample *s = &p->s[p->n++];
    s->t = (double)(d->now_ns - p->first->now_ns) / 1e9;
    s->batches = d->batches;
    s->completed = completed_of(d);
    memcpy(s->batch_size, d->batch_size, sizeof s->batch_size);
    s->target = d->batch_target;
    s->wait_us = d->wait_us;
    return 0;
}

/* ---- numbers over the window ---- */

struct window {
    double seconds;
    uint64_t outcomes[4][BB_OUTCOMES], completed, batches, batched;
    uint64_t batch_size[BB_BATCH_SIZE_BUCKETS];
    uint64_t lat_sum_ns, phase_count, timed_lat_sum_ns, phase_sum_ns[BB_PHASES];
    double lat_mean_us, timed_mean_us, phase_mean_us[BB_PHASES], phase_share[BB_PHASES];
    double phase_total_mean_us;
    double lat_pct[4][4], all_pct[4]; /* p50 p90 p99 p99.9, µs */
    double phase_pct[BB_PHASES][3];   /* p50 p90 p99 */
    uint64_t lat_count[4];
};

static const double pcts[4] = {0.50, 0.90, 0.99, 0.999};

static void window_of(const struct bb_wire_dump *a, const struct bb_wire_dump *b,
                      struct window *w)
{
    static uint64_t h[BB_HIST_BUCKETS], all[BB_HIST_BUCKETS];
    memset(w, 0, sizeof *w);
    memset(all, 0, sizeof all);
    w->seconds = (double)(b->now_ns - a->now_ns) / 1e9;
    for (int p = 0; p < 4; p++) {
        for (int o = 0; o < BB_OUTCOMES; o++)
            w->outcomes[p][o] = b->requests[p][o] - a->requests[p][o];
        w->completed += w->outcomes[p][BB_OUTCOME_COMPLETED];
        w->lat_sum_ns += b->latency_sum_ns[p] - a->latency_sum_ns[p];
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++) {
            h[f] = b->latency[p][f] - a->latency[p][f];
            all[f] += h[f];
            w->lat_count[p] += h[f];
        }
        for (int k = 0; k < 4; k++)
            w->lat_pct[p][k] = (double)bb__hist_quantile(h, pcts[k]) / 1e3;
    }
    for (int k = 0; k < 4; k++)
        w->all_pct[k] = (double)bb__hist_quantile(all, pcts[k]) / 1e3;
    w->batches = b->batches - a->batches;
    w->batched = b->batched - a->batched;
    for (uint32_t k = 0; k < BB_BATCH_SIZE_BUCKETS; k++)
        w->batch_size[k] = b->batch_size[k] - a->batch_size[k];
    w->phase_count = b->phase_count - a->phase_count;
    w->timed_lat_sum_ns = b->timed_latency_sum_ns - a->timed_latency_sum_ns;
    w->timed_mean_us =
        w->phase_count ? (double)w->timed_lat_sum_ns / (double)w->phase_count / 1e3 : 0;
    uint64_t phase_total = 0;
    for (int k = 0; k < BB_PHASES; k++) {
        w->phase_sum_ns[k] = b->phase_sum_ns[k] - a->phase_sum_ns[k];
        phase_total += w->phase_sum_ns[k];
        for (uint32_t f = 0; f < BB_HIST_BUCKETS; f++)
            h[f] = b->phase[k][f] - a->phase[k][f];
        for (int q = 0; q < 3; q++)
            w->phase_pct[k][q] = (double)bb__hist_quantile(h, pcts[q]) / 1e3;
    }
    for (int k = 0; k < BB_PHASES; k++) {
        w->phase_share[k] = phase_total ? 100.0 * (double)w->phase_sum_ns[k] / (double)phase_total : 0;
        w->phase_mean_us[k] =
            w->phase_count ? (double)w->phase_sum_ns[k] / (double)w->phase_count / 1e3 : 0;
        w->phase_total_mean_us += w->phase_mean_us[k];
    }
    w->lat_mean_us = w->completed ? (double)w->lat_sum_ns / (double)w->completed / 1e3 : 0;
}

/* ---- HTML and SVG ---- */

static void esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else
            fputc(*s, f);
    }
}

/* A duration in µs the way a person reads it. */
static const char *dur(double us, char *buf, size_t n)
{
    if (us >= 1e6)
        snprintf(buf, n, "%.3g s", us / 1e6);
    else if (us >= 1e3)
        snprintf(buf, n, "%.3g ms", us / 1e3);
    else
        snprintf(buf, n, "%.3g µs", us);
    return buf;
}

/* A step of 1, 2 or 5 x 10^k that cuts span into at most max pieces. */
static double nice_step(double span, int max)
{
    if (!(span > 0))
        return 1;
    double base = pow(10, floor(log10(span / max)));
    static const double m[] = {1, 2, 5};
    for (int i = 0; i < 3; i++)
        if (span / (base * m[i]) <= max)
            return base * m[i];
    return base * 10;
}

static void size_label(uint32_t k, uint32_t max, char *buf, size_t n)
{
    uint32_t hi = 1u << k, lo = k ? (1u << (k - 1)) + 1 : 1;
    if (hi > max)
        hi = max;
    if (lo >= hi)
        snprintf(buf, n, "%u", hi);
    else
        snprintf(buf, n, "%u-%u", lo, hi);
}

static uint32_t size_bucket(uint32_t n)
{
    uint32_t k = n <= 1 ? 0 : 32u - (uint32_t)__builtin_clz(n - 1);
    return k < BB_BATCH_SIZE_BUCKETS ? k : BB_BATCH_SIZE_BUCKETS - 1;
}

static void time_axis(FILE *f, double t_end, int x0, int w, int y)
{
    double step = nice_step(t_end, 10);
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' class='axis'/>\n", x0, y, x0 + w, y);
    for (double t = 0; t <= t_end + 1e-9; t += step) {
        double x = x0 + (t_end > 0 ? t / t_end : 0) * w;
        fprintf(f, "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' class='axis'/>"
                   "<text x='%.1f' y='%d' class='tick' text-anchor='middle'>%g s</text>\n",
                x, y, x, y + 4, x, y + 16, t);
    }
}

static void phase_section(FILE *f, const struct window *w)
{
    char b1[32], b2[32], b3[32], b4[32];
    fprintf(f, "<h3>Where the time goes</h3>\n");
    if (!w->phase_count) {
        fprintf(f, "<p class='note'>No request was timed: the broker's profiler is off "
                   "(<code>[broker] profile</code>) or nothing completed.</p>\n");
        return;
    }
    fprintf(f, "<svg width='%d' height='64' role='img' aria-label='phase shares'>\n", CHART_W);
    double x = 0;
    for (int k = 0; k < BB_PHASES; k++) {
        double wd = w->phase_share[k] / 100.0 * CHART_W;
        fprintf(f, "<rect x='%.2f' y='4' width='%.2f' height='34' fill='%s'><title>%s %.2f%%"
                   "</title></rect>\n",
                x, wd, phase_colors[k], phase_names[k], w->phase_share[k]);
        if (wd > 70)
            fprintf(f, "<text x='%.2f' y='26' class='inbar'>%s %.1f%%</text>\n", x + 6,
                    phase_names[k], w->phase_share[k]);
        x += wd;
    }
    x = 0;
    for (int k = 0; k < BB_PHASES; k++) {
        fprintf(f, "<rect x='%.0f' y='48' width='12' height='12' fill='%s'/>"
                   "<text x='%.0f' y='58' class='tick'>%s %.2f%%</text>\n",
                x, phase_colors[k], x + 16, phase_names[k], w->phase_share[k]);
        x += CHART_W / 4.0;
    }
    fprintf(f, "</svg>\n<table>\n<tr><th>phase</th><th>share</th><th>mean</th><th>p50</th>"
               "<th>p90</th><th>p99</th><th class='l'>what it is</th></tr>\n");
    for (int k = 0; k < BB_PHASES; k++)
        fprintf(f, "<tr><td><span class='sw' style='background:%s'></span>%s</td>"
                   "<td>%.2f%%</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
                   "<td class='l'>%s</td></tr>\n",
                phase_colors[k], phase_names[k], w->phase_share[k],
                dur(w->phase_mean_us[k], b1, sizeof b1), dur(w->phase_pct[k][0], b2, sizeof b2),
                dur(w->phase_pct[k][1], b3, sizeof b3), dur(w->phase_pct[k][2], b4, sizeof b4),
                phase_help[k]);
    fprintf(f, "<tr class='sum'><td>end to end</td><td>100%%</td><td>%s</td><td>%s</td>"
               "<td>%s</td><td>%s</td><td class='l'>submit to completion, the broker's "
               "latency</td></tr>\n</table>\n",
            dur(w->lat_mean_us, b1, sizeof b1), dur(w->all_pct[0], b2, sizeof b2),
            dur(w->all_pct[1], b3, sizeof b3), dur(w->all_pct[2], b4, sizeof b4));
    double diff = w->timed_mean_us > 0 ? 100.0 * (w->phase_total_mean_us - w->timed_mean_us) /
                                             w->timed_mean_us
                                       : 0;
    fprintf(f, "<p class='note'>%llu of the %llu completed requests were timed (the profiler "
               "times every batch up to <code>profile_max_rate</code> batches a second, one in "
               "a few above). Their four phase means add up to %s against their own "
               "end-to-end mean of %s (%+.3f%%); the end-to-end row is every completed "
               "request. A percentile of the whole is not the sum of the phases' "
               "percentiles.</p>\n",
            (unsigned long long)w->phase_count, (unsigned long long)w->completed,
            dur(w->phase_total_mean_us, b1, sizeof b1), dur(w->timed_mean_us, b2, sizeof b2),
            diff);
}

static void priority_section(FILE *f, const struct window *w)
{
    char b[4][32];
    fprintf(f, "<h3>Latency by priority</h3>\n<table>\n<tr><th>priority</th><th>completed</th>"
               "<th>failed</th><th>timed out</th><th>rejected</th><th>cancelled</th>"
               "<th>p50</th><th>p90</th><th>p99</th><th>p99.9</th></tr>\n");
    double top = 1;
    int rows = 0;
    for (int p = 0; p < 4; p++) {
        uint64_t any = 0;
        for (int o = 0; o < BB_OUTCOMES; o++)
            any += w->outcomes[p][o];
        if (!any)
            continue;
        const uint64_t *o = w->outcomes[p];
        fprintf(f, "<tr><td>%s</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td>"
                   "<td>%llu</td>",
                prio_names[p], (unsigned long long)o[BB_OUTCOME_COMPLETED],
                (unsigned long long)o[BB_OUTCOME_FAILED], (unsigned long long)o[BB_OUTCOME_TIMED_OUT],
                (unsigned long long)o[BB_OUTCOME_REJECTED],
                (unsigned long long)o[BB_OUTCOME_CANCELLED]);
        for (int k = 0; k < 4; k++)
            fprintf(f, "<td>%s</td>", w->lat_count[p] ? dur(w->lat_pct[p][k], b[k], sizeof b[k]) : "-");
        fprintf(f, "</tr>\n");
        if (w->lat_count[p]) {
            rows++;
            if (w->lat_pct[p][3] > top)
                top = w->lat_pct[p][3];
        }
    }
    fprintf(f, "</table>\n");
    if (!rows)
        return;
    /* p50, p99 and p99.9 per priority on a log scale from 0.1 µs. */
    double lo = 0.1, hi = pow(10, ceil(log10(top)));
    int h = 30 + rows * 34;
    int pw = CHART_W - PLOT_X - 20;
    fprintf(f, "<svg width='%d' height='%d' role='img' aria-label='latency by priority'>\n",
            CHART_W, h);
    for (double v = lo; v <= hi * 1.0001; v *= 10) {
        double x = PLOT_X + log10(v / lo) / log10(hi / lo) * pw;
        fprintf(f, "<line x1='%.1f' y1='4' x2='%.1f' y2='%d' class='grid'/>"
                   "<text x='%.1f' y='%d' class='tick' text-anchor='middle'>%s</text>\n",
                x, x, h - 20, x, h - 6, dur(v, b[0], sizeof b[0]));
    }
    static const char *const shades[3] = {"#4e79a7", "#a0cbe8", "#d4e6f5"};
    static const int which[3] = {3, 2, 0}; /* widest first, so the narrower show on top */
    int row = 0;
    for (int p = 0; p < 4; p++) {
        if (!w->lat_count[p])
            continue;
        double y = 8 + row * 34;
        fprintf(f, "<text x='%d' y='%.0f' class='tick' text-anchor='end'>%s</text>\n", PLOT_X - 6,
                y + 16, prio_names[p]);
        for (int i = 0; i < 3; i++) {
            double v = w->lat_pct[p][which[i]];
            double x = v > lo ? log10(v / lo) / log10(hi / lo) * pw : 0;
            fprintf(f, "<rect x='%d' y='%.0f' width='%.1f' height='24' fill='%s'>"
                       "<title>%s p%s %s</title></rect>\n",
                    PLOT_X, y, x, shades[2 - i], prio_names[p],
                    which[i] == 3 ? "99.9" : which[i] == 2 ? "99" : "50", dur(v, b[1], sizeof b[1]));
        }
        row++;
    }
    fprintf(f, "</svg>\n<p class='note'>Bars: p50 (dark), p99, p99.9 (light), log scale.</p>\n");
}

static void batch_section(FILE *f, const struct prof *p, const struct window *w)
{
    uint32_t max = p->first->max_batch_size ? p->first->max_batch_size : 1;
    uint32_t rows = size_bucket(max) + 1;
    char lab[32];
    fprintf(f, "<h3>Batch sizes over time</h3>\n");
    if (!w->batches) {
        fprintf(f, "<p class='note'>No batch ran in the window.</p>\n");
        return;
    }
    /* Columns: runs of consecutive sample intervals, at most MAX_COLUMNS. */
    size_t intervals = p->n > 1 ? p->n - 1 : 0;
    size_t per = intervals > MAX_COLUMNS ? (intervals + MAX_COLUMNS - 1) / MAX_COLUMNS : 1;
    size_t cols = intervals ? (intervals + per - 1) / per : 0;
    int pw = CHART_W - PLOT_X - 20, rh = 18, h = (int)rows * rh + 40;
    double t_end = p->s[p->n - 1].t;
    fprintf(f, "<svg width='%d' height='%d' role='img' aria-label='batch sizes over time'>\n",
            CHART_W, h);
    for (uint32_t k = 0; k < rows; k++) {
        size_label(k, max, lab, sizeof lab);
        fprintf(f, "<text x='%d' y='%u' class='tick' text-anchor='end'>%s</text>\n", PLOT_X - 6,
                (rows - 1 - k) * rh + 13, lab);
    }
    for (size_t c = 0; c < cols; c++) {
        const struct sample *a = &p->s[c * per];
        size_t e = (c + 1) * per < intervals ? (c + 1) * per : intervals;
        const struct sample *b = &p->s[e];
        uint64_t n = b->batches - a->batches;
        double x0 = PLOT_X + (t_end > 0 ? a->t / t_end : 0) * pw;
        double x1 = PLOT_X + (t_end > 0 ? b->t / t_end : 1) * pw;
        for (uint32_t k = 0; k < rows; k++) {
            uint64_t m = b->batch_size[k] - a->batch_size[k];
            double share = n ? (double)m / (double)n : 0;
            /* White to deep blue by the column's share of batches; grey: none ran. */
            char fill[32] = "#eeeeee";
            if (n)
                snprintf(fill, sizeof fill, "rgb(%d,%d,%d)", (int)(255 - share * (255 - 33)),
                         (int)(255 - share * (255 - 80)), (int)(255 - share * (255 - 150)));
            size_label(k, max, lab, sizeof lab);
            fprintf(f, "<rect x='%.2f' y='%u' width='%.2f' height='%d' fill='%s'>"
                       "<title>%.2f-%.2f s, size %s: %.1f%% of %llu batches</title></rect>\n",
                    x0, (rows - 1 - k) * rh, x1 - x0 + 0.3, rh - 1, fill, a->t, b->t, lab,
                    100 * share, (unsigned long long)n);
        }
    }
    time_axis(f, t_end, PLOT_X, pw, (int)rows * rh + 2);
    fprintf(f, "</svg>\n<p class='note'>Rows: batch size (requests); shade: the share of that "
               "interval's batches (white none, blue all; grey: no batch).</p>\n");
    /* The whole window's distribution. */
    fprintf(f, "<table>\n<tr><th>size</th>");
    for (uint32_t k = 0; k < rows; k++) {
        size_label(k, max, lab, sizeof lab);
        fprintf(f, "<th>%s</th>", lab);
    }
    fprintf(f, "</tr>\n<tr><td>batches</td>");
    for (uint32_t k = 0; k < rows; k++)
        fprintf(f, "<td>%llu</td>", (unsigned long long)w->batch_size[k]);
    fprintf(f, "</tr>\n<tr><td>share</td>");
    for (uint32_t k = 0; k < rows; k++)
        fprintf(f, "<td>%.1f%%</td>", 100.0 * (double)w->batch_size[k] / (double)w->batches);
    fprintf(f, "</tr>\n</table>\n");
}

/* A line chart of one value per sample. */
static void series(FILE *f, const struct prof *p, const char *title, const char *unit,
                   double (*value)(const struct prof *p, size_t i), const char *color)
{
    double top = 0;
    for (size_t i = 0; i < p->n; i++)
        if (value(p, i) > top)
            top = value(p, i);
    double step = nice_step(top > 0 ? top : 1, 4);
    top = ceil((top > 0 ? top : 1) / step) * step;
    int pw = CHART_W - PLOT_X - 20, ph = 110, h = ph + 36;
    double t_end = p->s[p->n - 1].t;
    fprintf(f, "<h4>%s</h4>\n<svg width='%d' height='%d' role='img' aria-label='%s'>\n", title,
            CHART_W, h, title);
    for (double v = 0; v <= top * 1.0001; v += step) {
        double y = 6 + ph - v / top * ph;
        fprintf(f, "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' class='grid'/>"
                   "<text x='%d' y='%.1f' class='tick' text-anchor='end'>%g%s</text>\n",
                PLOT_X, y, PLOT_X + pw, y, PLOT_X - 6, y + 4, v, unit);
    }
    fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", color);
    for (size_t i = 0; i < p->n; i++) {
        double x = PLOT_X + (t_end > 0 ? p->s[i].t / t_end : 0) * pw;
        double y = 6 + ph - value(p, i) / top * ph;
        fprintf(f, "%.1f,%.1f ", x, y);
    }
    fprintf(f, "'/>\n");
    time_axis(f, t_end, PLOT_X, pw, ph + 6);
    fprintf(f, "</svg>\n");
}

static double v_target(const struct prof *p, size_t i)
{
    return p->s[i].target;
}

static double v_wait(const struct prof *p, size_t i)
{
    return p->s[i].wait_us;
}

static double v_rate(const struct prof *p, size_t i)
{
    if (i == 0)
        return p->n > 1 ? v_rate(p, 1) : 0;
    double dt = p->s[i].t - p->s[i - 1].t;
    return dt > 0 ? (double)(p->s[i].completed - p->s[i - 1].completed) / dt : 0;
}

static void data_block(FILE *f, const struct prof *p, const struct window *w)
{
    fprintf(f, "<!-- bb-profile-data\nmodel %s\nwindow_s %.6f\n", p->first->name, w->seconds);
    static const char *const onames[BB_OUTCOMES] = {"completed", "failed", "timed_out",
                                                    "rejected", "cancelled"};
    for (int o = 0; o < BB_OUTCOMES; o++) {
        uint64_t n = 0;
        for (int q = 0; q < 4; q++)
            n += w->outcomes[q][o];
        fprintf(f, "%s %llu\n", onames[o], (unsigned long long)n);
    }
    fprintf(f, "batches %llu\nbatched %llu\n", (unsigned long long)w->batches,
            (unsigned long long)w->batched);
    for (uint32_t k = 0; k < BB_BATCH_SIZE_BUCKETS; k++)
        fprintf(f, "batch_size %u %llu\n", 1u << k, (unsigned long long)w->batch_size[k]);
    fprintf(f, "latency_sum_ns %llu\nlatency_mean_us %.4f\nphase_count %llu\n"
               "timed_latency_sum_ns %llu\ntimed_latency_mean_us %.4f\n",
            (unsigned long long)w->lat_sum_ns, w->lat_mean_us, (unsigned long long)w->phase_count,
            (unsigned long long)w->timed_lat_sum_ns, w->timed_mean_us);
    for (int k = 0; k < BB_PHASES; k++)
        fprintf(f, "phase %s sum_ns %llu share %.4f mean_us %.4f p50_us %.3f p99_us %.3f\n",
                phase_keys[k], (unsigned long long)w->phase_sum_ns[k], w->phase_share[k],
                w->phase_mean_us[k], w->phase_pct[k][0], w->phase_pct[k][2]);
    for (int q = 0; q < 4; q++)
        if (w->lat_count[q])
            fprintf(f, "priority %s count %llu p50_us %.3f p90_us %.3f p99_us %.3f p999_us %.3f\n",
                    prio_names[q], (unsigned long long)w->lat_count[q], w->lat_pct[q][0],
                    w->lat_pct[q][1], w->lat_pct[q][2], w->lat_pct[q][3]);
    fprintf(f, "end\n-->\n");
}

static void model_section(FILE *f, const struct prof *p)
{
    struct window w;
    window_of(p->first, p->last, &w);
    char b1[32], stride[64];
    if (p->last->profile_stride == 0)
        snprintf(stride, sizeof stride, "off");
    else if (p->last->profile_stride == 1)
        snprintf(stride, sizeof stride, "on, every batch timed");
    else
        snprintf(stride, sizeof stride, "on, one batch in %u timed", p->last->profile_stride);
    fprintf(f, "<section>\n<h2>Model <code>");
    esc(f, p->first->name);
    fprintf(f, "</code></h2>\n");
    data_block(f, p, &w);
    fprintf(f, "<p class='meta'>%.1f s window &middot; %llu requests completed (%.0f/s) &middot; "
               "%llu batches, mean size %.2f (max_batch_size %u) &middot; mean latency %s "
               "&middot; profiler %s</p>\n",
            w.seconds, (unsigned long long)w.completed,
            w.seconds > 0 ? (double)w.completed / w.seconds : 0, (unsigned long long)w.batches,
            w.batches ? (double)w.batched / (double)w.batches : 0, p->first->max_batch_size,
            dur(w.lat_mean_us, b1, sizeof b1), stride);
    phase_section(f, &w);
    priority_section(f, &w);
    batch_section(f, p, &w);
    fprintf(f, "<h3>Adaptive controller</h3>\n");
    if (p->n < 2) {
        fprintf(f, "<p class='note'>Too short a window for a time series.</p>\n");
    } else {
        series(f, p, "Batch target (requests)", "", v_target, "#4e79a7");
        series(f, p, "Batch wait (µs)", "", v_wait, "#f28e2b");
        series(f, p, "Throughput (completed requests/s)", "", v_rate, "#59a14f");
    }
    fprintf(f, "</section>\n");
}

static void write_report(FILE *f, const char *socket, struct prof *ps, int n, double seconds)
{
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
    fprintf(f, "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
               "<title>batchbroker profile</title>\n<style>\n"
               "body{font-family:sans-serif;margin:24px auto;max-width:900px;color:#222}\n"
               "h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;margin-top:2em}\n"
               "table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 10px;"
               "text-align:right;border-bottom:1px solid #eee} th{background:#f4f4f4}\n"
               ".l{text-align:left;font-size:.85em;color:#555} tr.sum td{font-weight:bold}\n"
               ".sw{display:inline-block;width:10px;height:10px;margin-right:6px}\n"
               ".meta,.note{color:#555;font-size:.9em} svg{display:block;margin:6px 0}\n"
               "svg .tick{font-size:11px;fill:#444} svg .inbar{font-size:12px;fill:#fff}\n"
               "svg .axis{stroke:#888} svg .grid{stroke:#e4e4e4}\n"
               "</style>\n</head>\n<body>\n<h1>batchbroker profile</h1>\n<p class='meta'>Broker ");
    esc(f, socket);
    fprintf(f, ", %d model(s), %.1f s from %s (bbctl profile, protocol %u.%u).</p>\n", n, seconds,
            when, BB_ABI_MAJOR, BB_ABI_MINOR);
    for (int i = 0; i < n; i++)
        model_section(f, &ps[i]);
    fprintf(f, "</body>\n</html>\n");
}

static int usage_profile(void)
{
    fprintf(stderr, "usage: bbctl profile --html FILE [--seconds N] [--model NAME]\n"
                    "Try 'bbctl --help' for the commands.\n");
    return 2;
}

int bbctl_profile_args(int argc, char **argv, struct bbctl_profile_args *out)
{
    *out = (struct bbctl_profile_args){.seconds = 10};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 < argc && !strcmp(a, "--html")) {
            out->html = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--model")) {
            out->only = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--seconds")) {
            char *end;
            out->seconds = strtod(argv[++i], &end);
            if (*end || end == argv[i] || !(out->seconds > 0 && out->seconds <= 86400)) {
                fprintf(stderr, "bbctl: profile: --seconds %s: want 0 < N <= 86400\n"
                                "Try 'bbctl --help' for the commands.\n", argv[i]);
                return 2;
            }
        } else {
            return usage_profile();
        }
    }
    return out->html ? 0 : usage_profile();
}

int bbctl_profile(int sock, const char *socket_path, const struct bbctl_profile_args *a)
{
    const char *html = a->html, *only = a->only;
    double seconds = a->seconds;
    /* Opened once the models are known: a mistyped --model leaves an
     * existing report as it was. */
    FILE *out = NULL;
    static struct prof ps[MAX_MODELS];
    static struct bb_wire_dump scratch;
    int n = 0, rc = 0;
    for (uint32_t id = 0; id < MAX_MODELS; id++) {
        rc = bbctl_dump(sock, id, &scratch);
        if (rc == BB_ENOMODEL) {
            rc = 0;
            break;
        }
        if (rc < 0)
            break;
        if (only && strcmp(only, scratch.name) != 0)
            continue;
        struct prof *p = &ps[n];
        p->id = id;
        p->first = malloc(sizeof *p->first);
        p->last = malloc(sizeof *p->last);
        if (!p->first || !p->last) {
            rc = BB_ENOMEM;
            break;
        }
        *p->first = scratch;
        n++;
        if ((rc = add_sample(p, p->first)) < 0)
            break;
    }
    if (rc == 0 && n == 0) {
        fprintf(stderr, "bbctl: profile: %s\n", only ? "no such model" : "the broker has no model");
        return 1;
    }
    if (rc == 0 && !(out = fopen(html, "w"))) {
        fprintf(stderr, "bbctl: profile: %s: %s\n", html, strerror(errno));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_stop}; /* no SA_RESTART: the sleep ends */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (rc == 0)
        fprintf(stderr, "bbctl: profiling %d model(s) for %g s (Ctrl-C ends it early)\n", n,
                seconds);
    /* About a hundred points a chart, between 10 and 1 a second. */
    double tick = seconds / 100;
    tick = tick < 0.1 ? 0.1 : tick > 1 ? 1 : tick;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 1; rc == 0; k++) {
        double due = k * tick > seconds ? seconds : k * tick;
        struct timespec at = {t0.tv_sec + (time_t)due,
                              t0.tv_nsec + (long)((due - (double)(time_t)due) * 1e9)};
        if (at.tv_nsec >= 1000000000L) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000L;
        }
        while (!stop_requested &&
               clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        for (int i = 0; i < n && rc == 0; i++) {
            rc = bbctl_dump(sock, ps[i].id, ps[i].last);
            if (rc == 0)
                rc = add_sample(&ps[i], ps[i].last);
        }
        if (stop_requested || due >= seconds)
            break;
    }
    if (rc < 0) {
        fprintf(stderr, "bbctl: profile: %s: %s\n", socket_path, bb_strerror(rc));
        if (out)
            fclose(out);
        return 1;
    }
    double took = ps[0].s[ps[0].n - 1].t;
    write_report(out, socket_path, ps, n, took);
    if (fclose(out) != 0) {
        fprintf(stderr, "bbctl: profile: %s: %s\n", html, strerror(errno));
        return 1;
    }
    fprintf(stderr, "bbctl: wrote %s (%.1f s)\n", html, took);
    for (int i = 0; i < n; i++) {
        free(ps[i].first);
        free(ps[i].last);
        free(ps[i].s);
    }
    return 0;
}
