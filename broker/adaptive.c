/*
 * Adaptive batch sizing.
 *
 * Model: a batch of n requests takes S(n) = a + b*n, fitted by least squares
 * over the last BB_ADAPT_WINDOW batches. With k executors and an arrival
 * rate L the backend keeps up at all only if L*b < k.
 *
 * Dispatching whenever an executor is free (batch target 1, no wait) batches
 * by itself: requests that arrive while a batch runs form the next one, of
 * about L*a/(k - L*b). That is the policy for optimize = latency, and for
 * optimize = throughput while the backend is lightly used (under
 * GREEDY_UTIL at batch size 1): a request never waits for company that will
 * not come.
 *
 * Under load, optimize = throughput grows the batch target, to spend less of
 * the backend on per-batch cost, as far as the batch fills within
 * max_wait_us and a request's expected p99 (its wait for the batch, the batch
 * ahead of it, its own) fits the planning budget: a share of latency_slo_us
 * that feedback from measured SLO violations shrinks and grows (AIMD).
 *
 * Whatever it plans, the target never exceeds the most requests recently
 * queued at once (the peak of this interval or the last): a batch of more
 * does not form, so waiting for it only holds the requests there are. One
 * client with one request in flight has one queued at a time, and is
 * therefore never held, however fast it asks. (Queued, not queued and
 * running: a closed-loop client's next request often arrives before the
 * home has reaped the batch its last answer came in, and counting that one
 * would let the target grow to 2 and hold the lone request.) And growing a batch pays only while the
 * per-batch cost is a sizeable share of a request's (GAIN_MIN): a backend
 * whose time is nearly linear in the batch size (a CPU) gains little from
 * waiting, one with a large fixed cost per batch (a GPU) gains a lot.
 *
 * The fit leaves out the batches far off it (a preempted executor's), and
 * a change detector watches the last BB_ADAPT_RECENT batches: when the
 * median of their times against the fit's predictions is off by more than
 * 30%, the backend has sped up or slowed down, and the window restarts from
 * those batches. The median, not the mean: single batches several times
 * their time (a preemption, a small batch's call overhead) restarted the
 * window several times a second on a 2-CPU host.
 */
#include "adaptive.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HEADROOM 1.2
#define CHANGE_THRESHOLD 0.30
#define CHANGE_EVERY 4          /* batches between two looks of the change detector */
#define MIN_R2 0.30
#define OUTLIER_MADS 4.0    /* bb__adaptive_fit: off by this many median deviations */
#define OUTLIER_MIN 0.25    /* ... and by at least 25% */
#define GREEDY_UTIL 0.5     /* below this backend use, never wait for company */
#define FILL_SPREAD 1.2     /* Poisson arrivals fill a batch later than the mean */
#define BUDGET_MIN 0.25     /* the SLO feedback never shrinks the budget below */
#define GAIN_MIN 0.10       /* grow a batch while a/n is over this share of a/n + b */

void bb__adaptive_init(struct bb__adaptive *a, const struct bb__adaptive_cfg *cfg)
{
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    if (a->cfg.instances == 0)
        a->cfg.instances = 1;
    a->target = cfg->start_target ? cfg->start_target : cfg->max_batch_size;
    if (a->target > cfg->max_batch_size)
        a->target = cfg->max_batch_size;
    a->wait_us = cfg->max_wait_us;
    a->best_size = a->target;
    a->score = 1.0;
    a->budget = 0.8;
}

/* Least squares over the samples not marked out (out may be NULL). */
static struct bb__fit ols(const double *xs, const double *ys, uint32_t n, const bool *out)
{
    struct bb__fit f = {0};
    double sx = 0, sy = 0, m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (!out || !out[i]) {
            sx += xs[i];
            sy += ys[i];
            m++;
        }
    if (m == 0)
        return f;
    double mx = sx / m, my = sy / m, sxx = 0, sxy = 0, syy = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (out && out[i])
            continue;
        double dx = xs[i] - mx, dy = ys[i] - my;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if (m < 4 || sxx < 1e-9) {
        /* One batch size only: the split between a and b is unknown; the
         * conservative reading is that all of it is per-batch cost. */
        f.a_ns = my;
        f.b_ns = 0;
        f.r2 = 0;
        return f;
    }
    f.b_ns = sxy / sxx;
    f.a_ns = my - f.b_ns * mx;
    if (f.b_ns < 0) { /* noise: time does not fall with size */
        f.b_ns = 0;
        f.a_ns = my; /* the least-squares constant */
    } else if (f.a_ns < 0) {
        /* Time grows faster than the batch (superlinear, as the blas
         * backend's GEMMs were measured): the least-squares line through 0. */
        double sxy0 = 0, sxx0 = 0;
        for (uint32_t i = 0; i < n; i++)
            if (!out || !out[i]) {
                sxy0 += xs[i] * ys[i];
                sxx0 += xs[i] * xs[i];
            }
        f.a_ns = 0;
        f.b_ns = sxy0 / sxx0;
    }
    /* r2 of the line returned: a clamped line explains less of the
     * variation than the unclamped one (a flat line none), whose r2 made it
     * valid. Floored at 0: a line through 0 can fit worse than the mean. */
    double ssr = 0;
    for (uint32_t i = 0; i < n; i++)
        if (!out || !out[i]) {
            double r = ys[i] - (f.a_ns + f.b_ns * xs[i]);
            ssr += r * r;
        }
    f.r2 = syy > 0 ? fmax(0, 1 - ssr / syy) : 1.0;
    f.valid = f.r2 >= MIN_R2 || syy <= 1e-9 * my * my * m;
    return f;
}

/* The k-th smallest of v[0..n) (0-based), which v then holds at k with the
 * smaller ones before it and the larger after: Hoare's selection, linear on
 * average. The change detector takes a median every few batches, and with
 * batches of a few requests qsort's calls to a comparison were 9% of a
 * spinning dispatcher's time. */
static double select_kth(double *v, uint32_t n, uint32_t k)
{
    uint32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = v[lo + (hi - lo) / 2];
        uint32_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                double t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    return v[k];
}

/* Reorders v. */
static double median(double *v, uint32_t n)
{
    double hi = select_kth(v, n, n / 2);
    if (n % 2)
        return hi;
    double lo = v[0]; /* the largest of the lower half */
    for (uint32_t i = 1; i < n / 2; i++)
        if (v[i] > lo)
            lo = v[i];
    return (lo + hi) / 2;
}

/* Least squares, then again without the outliers: the samples off the fit
 * by more than OUTLIER_MADS times the median relative deviation (at least
 * OUTLIER_MIN). A batch whose executor was preempted takes several times
 * its time on a crowded host, and a few of those pulled the plain fit
 * off every other batch, or its r2 under MIN_R2: the refit is tried for a
 * first fit that is not valid, too (not where all batches had one size,
 * which no refit can tell apart). The limit is at least the median
 * deviation, so at least half the samples are kept. */
struct bb__fit bb__adaptive_fit(const struct bb__adaptive *a)
{
    uint32_t n = a->count;
    struct bb__fit f = ols(a->xs, a->ys, n, NULL);
    bool sizes = false;
    for (uint32_t i = 1; i < n && !sizes; i++)
        sizes = a->xs[i] != a->xs[0];
    if (n < 8 || !sizes)
        return f;
    bool out[BB_ADAPT_WINDOW];
    double dev[BB_ADAPT_WINDOW];
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < n; i++) {
            double pred = f.a_ns + f.b_ns * a->xs[i];
            dev[i] = fabs(a->ys[i] / (pred > 1 ? pred : 1) - 1);
        }
        double sorted[BB_ADAPT_WINDOW];
        memcpy(sorted, dev, n * sizeof *dev);
        double limit = OUTLIER_MADS * median(sorted, n);
        if (limit < OUTLIER_MIN)
            limit = OUTLIER_MIN;
        uint32_t kept = 0;
        for (uint32_t i = 0; i < n; i++) {
            out[i] = dev[i] > limit;
            kept += !out[i];
        }
        if (kept == n)
            break; /* nothing to drop */
        struct bb__fit g = ols(a->xs, a->ys, n, out);
        if (!g.valid && f.valid)
            break;
        f = g;
    }
    return f;
}

/* The median of the last BB_ADAPT_RECENT batches' times against the fit's
 * prediction: a batch that met a preemption, or small ones off by their
 * call overhead, do not move it; a backend that sped up or slowed down
 * moves them all. */
static double recent_ratio(const struct bb__adaptive *a)
{
    double ratio[BB_ADAPT_RECENT];
    for (uint32_t i = 0; i < BB_ADAPT_RECENT; i++) {
        uint32_t j = (a->head + BB_ADAPT_WINDOW - 1 - i) % BB_ADAPT_WINDOW;
        double pred = a->fit.a_ns + a->fit.b_ns * a->xs[j];
        ratio[i] = a->ys[j] / (pred > 1 ? pred : 1);
    }
    return median(ratio, BB_ADAPT_RECENT);
}

bool bb__adaptive_batch(struct bb__adaptive *a, uint32_t n, uint64_t service_ns)
{
    if (n == 0)
        return false;
    a->xs[a->head] = n;
    a->ys[a->head] = (double)service_ns;
    a->head = (a->head + 1) % BB_ADAPT_WINDOW;
    if (a->count < BB_ADAPT_WINDOW)
        a->count++;
    /* Every CHANGE_EVERY batches: the median is a selection of 16, and a change
     * found a few batches later costs nothing. */
    if (!a->fit.valid || a->count < 2 * BB_ADAPT_RECENT || a->head % CHANGE_EVERY)
        return false;
    if (fabs(recent_ratio(a) - 1) <= CHANGE_THRESHOLD)
        return false;
    /* The backend changed speed: keep only the recent batches. */
    double xs[BB_ADAPT_RECENT], ys[BB_ADAPT_RECENT];
    for (uint32_t i = 0; i < BB_ADAPT_RECENT; i++) {
        uint32_t j = (a->head + BB_ADAPT_WINDOW - BB_ADAPT_RECENT + i) % BB_ADAPT_WINDOW;
        xs[i] = a->xs[j];
        ys[i] = a->ys[j];
    }
    memcpy(a->xs, xs, sizeof xs);
    memcpy(a->ys, ys, sizeof ys);
    a->count = BB_ADAPT_RECENT;
    a->head = BB_ADAPT_RECENT % BB_ADAPT_WINDOW;
    a->fit = bb__adaptive_fit(a);
    a->changes++;
    return true;
}

static uint32_t clampu(double v, uint32_t lo, uint32_t hi)
{
    if (!(v >= lo))
        return lo;
    if (v >= hi)
        return hi;
    return (uint32_t)v;
}

/* Whether a batch target of c is worth waiting for (bb__adaptive_decide):
 * it fills within max_fill, a request's expected p99 - its wait for the
 * batch to fill (with FILL_SPREAD for the Poisson spread), then the batch
 * running ahead of it, then its own - stays within slo, and the company
 * still pays. */
static bool grows(double c, double lam, double a, double b, double max_fill, double slo,
                  double n_pays)
{
    double fill = FILL_SPREAD * (c - 1) / lam;
    return fill <= max_fill && fill + 2 * (a + b * c) <= slo && c - 1 < n_pays;
}

void bb__adaptive_decide(const struct bb__adaptive_cfg *cfg, const struct bb__fit *fit,
                         double rate_rps, double budget, uint32_t *target, uint32_t *wait_us,
                         double *best)
{
    uint32_t max = cfg->max_batch_size;
    double k = cfg->instances ? cfg->instances : 1;
    double lam = rate_rps / 1e9; /* requests per ns */
    double a = fit->a_ns, b = fit->b_ns;
    *best = 1;
    *target = 1;
    *wait_us = 0;
    if (lam <= 0)
        return;
    if (k <= HEADROOM * lam * b) {
        /* No batch size keeps up: the largest batches, as full as they get. */
        *best = max;
        *target = max;
        *wait_us = cfg->max_wait_us;
        return;
    }
    /* Dispatching whenever an executor is free batches by itself: what
     * queued during one batch forms the next, about L*a/(k - L*b) requests
     * once the backend is busy, and nobody waits for company. That is the
     * latency policy, and the throughput policy too while the backend is
     * lightly used (waiting would only trade latency for idle time). */
    double util1 = lam * (a + b) / k;
    double n_nat = lam * a / (k - lam * b);
    *best = n_nat > 1 ? n_nat : 1;
    if (cfg->optimize == BB_OPTIMIZE_LATENCY || util1 < GREEDY_UTIL)
        return;
    /* Throughput under load: larger batches spend less of the backend on
     * per-batch cost. The target is the largest n that grows() allows: it
     * fills within max_wait_us, its p99 stays within the share `budget` of
     * the SLO, and the company still pays. */
    double max_fill = (double)cfg->max_wait_us * 1000;
    double slo = cfg->slo_us ? budget * (double)cfg->slo_us * 1000 : INFINITY;
    /* Past a/n <= GAIN_MIN * (a/n + b), i.e. n >= a (1 - GAIN_MIN) / (GAIN_MIN b),
     * more company saves less than GAIN_MIN of a request's backend time. */
    double n_pays = b > 0 ? a * (1 - GAIN_MIN) / (GAIN_MIN * b) : INFINITY;
    /* The largest such n, by bisection: each bound only tightens as n grows
     * (b >= 0, which the fit ensures; in floating point too, every step is
     * monotone), so this is the n that trying every size in turn found, in
     * at most 17 tries instead of up to 65535 (84 us a decision at
     * max_batch_size = 65536 with b = 0). */
    uint32_t lo = 1, hi = max; /* lo grows, or is 1; no size past hi does */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        if (grows(mid, lam, a, b, max_fill, slo, n_pays))
            lo = mid;
        else
            hi = mid - 1;
    }
    double n = lo;
    if (n < 2)
        return; /* no room for waiting: greedy */
    *best = n;
    *target = (uint32_t)n;
    /* The oldest request waits at most what the budget leaves after two
     * batch times, and never past max_wait_us. */
    double wait = slo - 2 * (a + b * n);
    if (wait > max_fill)
        wait = max_fill;
    *wait_us = clampu(wait / 1000, 0, cfg->max_wait_us);
}

uint32_t bb__adaptive_target(const struct bb__adaptive *a)
{
    uint32_t out = a->peak > a->peak_prev ? a->peak : a->peak_prev;
    if (out < 1)
        out = 1;
    return a->target < out ? a->target : out;
}

bool bb__adaptive_tick(struct bb__adaptive *a, uint64_t now, double p99_us, bool force)
{
    if (a->interval_start_ns == 0) {
        a->interval_start_ns = now;
        return false;
    }
    uint64_t dt = now - a->interval_start_ns;
    if (!force && dt < a->cfg.interval_ns)
        return false;
    double secs = dt > 0 ? (double)dt / 1e9 : 1e-9;
    double rate = (double)a->arrivals / secs;
    /* Fast attack, slow decay: a burst is taken at once, a lull smoothed. */
    a->rate_rps = rate > a->rate_rps ? rate : 0.5 * a->rate_rps + 0.5 * rate;
    /* SLO feedback (AIMD on the share of the SLO the model may plan for):
     * more than 1% of the interval's completions over the SLO shrinks it,
     * a clean interval grows it back. */
    if (a->cfg.slo_us && a->completed >= 20) {
        if (a->interval_violations * 100 > a->completed)
            a->budget = fmax(BUDGET_MIN, a->budget * 0.7);
        else if (a->interval_violations == 0)
            a->budget = fmin(1.0, a->budget + 0.05);
    }
    a->throughput_rps = (double)a->completed / secs;
    a->p99_us = p99_us;
    struct bb__fit f = bb__adaptive_fit(a);
    if (f.valid || !a->fit.valid)
        a->fit = f; /* a poor fit does not replace a good one */

    /* Adaptation score: the share of the offered load served, times how well
     * latency kept to the SLO; 1 = all load served within the SLO. */
    double served = a->arrivals ? fmin(1.0, (double)a->completed / (double)a->arrivals) : 1.0;
    double slo = a->cfg.slo_us && p99_us > a->cfg.slo_us ? a->cfg.slo_us / p99_us : 1.0;
    a->score = served * slo;

    if (a->cfg.tune_ns && a->arrivals && a->tune_start_ns == 0) {
        a->tune_start_ns = now;
        a->tuning = true;
    }
    if (a->tuning && now - a->tune_start_ns >= a->cfg.tune_ns)
        a->tuning = false;
    if (a->tuning) {
        /* Sweep 1, 2, 4, ... max over tune_duration_s so the fit sees sizes. */
        uint32_t steps = 1;
        while ((1u << steps) < a->cfg.max_batch_size)
            steps++;
        uint64_t i = (now - a->tune_start_ns) * (steps + 1) / a->cfg.tune_ns;
        a->target = i >= 31 ? a->cfg.max_batch_size : clampu((double)(1u << i), 1, a->cfg.max_batch_size);
        a->wait_us = a->cfg.max_wait_us;
    } else if (a->count > 0) {
        uint32_t target, wait;
        double best;
        bb__adaptive_decide(&a->cfg, &a->fit, a->rate_rps, a->budget, &target, &wait, &best);
        /* With one size in the window the fit cannot split a from b: every
         * other interval, try three quarters of the target. */
        if (!a->fit.valid && target >= 4 && (a->dither++ & 1))
            target = target * 3 / 4;
        a->target = target;
        a->wait_us = wait;
        a->best_size = best;
    }
    a->interval_start_ns = now;
    a->arrivals = a->completed = a->interval_violations = 0;
    a->peak_prev = a->peak;
    a->peak = 0;
    return true;
}
