/* Unit tests of the adaptive estimator and controller on simulated traces:
 * no broker, no wall clock; the tests feed batches and advance time. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>

#include "adaptive.h"

#define MS 1000000ull

static struct bb__adaptive_cfg cfg_default(void)
{
    return (struct bb__adaptive_cfg){.max_batch_size = 64, .max_wait_us = 5000, .instances = 1,
                                     .optimize = BB_OPTIMIZE_THROUGHPUT, .slo_us = 20000,
                                     .start_target = 32, .interval_ns = 100 * MS};
}

/* A backend of a + b*n with a deterministic +-noise pattern. */
static void feed(struct bb__adaptive *a, double a_ns, double b_ns, int count, double noise)
{
    for (int i = 0; i < count; i++) {
        uint32_t n = 1 + (uint32_t)(i * 7 % 48);
        double t = a_ns + b_ns * n;
        t *= 1.0 + noise * ((i % 3) - 1);
        bb__adaptive_batch(a, n, (uint64_t)t);
    }
}

Test(adaptive, fit_recovers_linear_cost)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    feed(&a, 1e6, 5e4, 100, 0.02);
    struct bb__fit f = bb__adaptive_fit(&a);
    cr_assert(f.valid);
    cr_assert(fabs(f.a_ns - 1e6) < 0.1e6, "a = %f", f.a_ns);
    cr_assert(fabs(f.b_ns - 5e4) < 0.5e4, "b = %f", f.b_ns);
    cr_assert(f.r2 > 0.9, "r2 = %f", f.r2);
}

Test(adaptive, fit_with_one_size_is_not_valid)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    for (int i = 0; i < 20; i++)
        bb__adaptive_batch(&a, 8, 1400000);
    struct bb__fit f = bb__adaptive_fit(&a);
    cr_assert_not(f.valid);
    cr_assert_float_eq(f.a_ns, 1400000, 1, "all of it counted as per-batch cost");
    cr_assert_float_eq(f.b_ns, 0, 1e-9);
}

/* The fit of 32 batches, alternately of n0 requests taking t0 ns and of n1
 * taking t1. */
static struct bb__fit fit_of_two_sizes(uint32_t n0, uint64_t t0, uint32_t n1, uint64_t t1)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    for (int i = 0; i < 32; i++)
        bb__adaptive_batch(&a, i % 2 ? n1 : n0, i % 2 ? t1 : t0);
    return bb__adaptive_fit(&a);
}

/* A line clamped to b >= 0 or a >= 0 is refit by least squares under that
 * constraint, and its r2 is its own: it kept the r2 (1.0) and validity of
 * the line it replaced, so a flat line that explains none of the variation
 * passed for a valid constant cost. */
Test(adaptive, a_fit_clamped_to_no_per_request_cost_is_the_mean_and_not_valid)
{
    /* Time falls with size (1 request 100 us, 32 requests 50 us): a
     * constant, the mean, that explains nothing. */
    struct bb__fit f = fit_of_two_sizes(1, 100000, 32, 50000);
    cr_assert_float_eq(f.a_ns, 75000, 1e-6);
    cr_assert_float_eq(f.b_ns, 0, 1e-12);
    cr_assert_float_eq(f.r2, 0, 1e-9);
    cr_assert_not(f.valid, "a flat line through a falling cost is no model of it");
}

Test(adaptive, a_fit_clamped_to_no_per_batch_cost_is_the_line_through_0)
{
    /* Superlinear (8 requests 30 us, 16 requests 110 us, as the blas
     * backend's GEMM is measured: the unclamped line has a < 0): the
     * least-squares line through 0, b = sum(n t) / sum(n^2) = 6.25 us
     * (it was 5.83, the mean time over the mean size); it predicts 50 and
     * 100 us, so r2 = 1 - 500 / 3200. */
    struct bb__fit f = fit_of_two_sizes(8, 30000, 16, 110000);
    cr_assert_float_eq(f.a_ns, 0, 1e-12);
    cr_assert_float_eq(f.b_ns, 6250, 1e-6, "b = %f", f.b_ns);
    cr_assert_float_eq(f.r2, 1 - 500.0 / 3200, 1e-9, "r2 = %f", f.r2);
    cr_assert(f.valid);
}

static const struct bb__fit linear = {.a_ns = 1e6, .b_ns = 5e4, .r2 = 1, .valid = true};

Test(adaptive, low_load_does_not_wait_for_company)
{
    struct bb__adaptive_cfg c = cfg_default();
    uint32_t target, wait;
    double best;
    bb__adaptive_decide(&c, &linear, 100, 0.8, &target, &wait, &best); /* 100 req/s */
    cr_assert_eq(target, 1);
    cr_assert_eq(wait, 0);
    c.optimize = BB_OPTIMIZE_LATENCY;
    bb__adaptive_decide(&c, &linear, 100, 0.8, &target, &wait, &best);
    cr_assert_eq(target, 1);
    cr_assert_eq(wait, 0);
    /* Still greedy while the backend is under half busy at batch size 1. */
    c.optimize = BB_OPTIMIZE_THROUGHPUT;
    bb__adaptive_decide(&c, &linear, 400, 0.8, &target, &wait, &best);
    cr_assert_eq(target, 1, "400 req/s x 1.05 ms = 42%% busy: no waiting");
}

Test(adaptive, latency_mode_batches_naturally_under_load)
{
    struct bb__adaptive_cfg c = cfg_default();
    c.optimize = BB_OPTIMIZE_LATENCY;
    uint32_t target, wait;
    double best;
    /* 8000 req/s: unbatched capacity is ~950 req/s. Dispatching whenever the
     * executor is free, the queue that builds during a batch forms the next:
     * n = L*a / (1 - L*b) = 8 / 0.6. */
    bb__adaptive_decide(&c, &linear, 8000, 0.8, &target, &wait, &best);
    cr_assert_eq(target, 1);
    cr_assert_eq(wait, 0);
    cr_assert_float_eq(best, 8.0 / 0.6, 1e-6);
}

Test(adaptive, throughput_mode_grows_until_the_slo_binds)
{
    struct bb__adaptive_cfg c = cfg_default();
    c.max_wait_us = 100000;
    uint32_t t_lo, t_hi, w_lo, w_hi;
    double best;
    c.slo_us = 10000;
    bb__adaptive_decide(&c, &linear, 4000, 1.0, &t_lo, &w_lo, &best);
    c.slo_us = 40000;
    bb__adaptive_decide(&c, &linear, 4000, 1.0, &t_hi, &w_hi, &best);
    cr_assert_gt(t_lo, 1, "4000 req/s keeps the backend busy: batches grow");
    cr_assert_gt(t_hi, t_lo, "a looser SLO allows bigger batches (%u vs %u)", t_hi, t_lo);
    /* The plan fits the SLO: fill with spread, one batch ahead, its own. */
    double lam = 4000 / 1e9;
    double p99 = 1.2 * (t_lo - 1) / lam + 2 * (1e6 + 5e4 * t_lo);
    cr_assert_leq(p99, 10000e3);
    cr_assert_leq(w_lo * 1000.0 + 2 * (1e6 + 5e4 * t_lo), 10000e3 + 1000, "the wait fits too");
    /* A smaller budget (after SLO violations) plans smaller batches. */
    uint32_t t_cut, w_cut;
    bb__adaptive_decide(&c, &linear, 4000, 0.5, &t_cut, &w_cut, &best);
    cr_assert_lt(t_cut, t_hi);
}

Test(adaptive, throughput_mode_respects_max_wait)
{
    struct bb__adaptive_cfg c = cfg_default(); /* max_wait 5 ms, SLO 20 ms */
    uint32_t target, wait;
    double best;
    bb__adaptive_decide(&c, &linear, 6000, 1.0, &target, &wait, &best);
    cr_assert_leq(1.2 * (target - 1) / 6000.0, 0.005 + 1e-9, "fills within max_wait_us");
    cr_assert_leq(wait, c.max_wait_us);
    cr_assert_gt(target, 8);
}

Test(adaptive, saturation_takes_the_largest_batch)
{
    struct bb__adaptive_cfg c = cfg_default();
    uint32_t target, wait;
    double best;
    bb__adaptive_decide(&c, &linear, 50000, 0.8, &target, &wait, &best); /* beyond 1/b = 20000/s */
    cr_assert_eq(target, c.max_batch_size);
    cr_assert_eq(wait, c.max_wait_us);
}

Test(adaptive, more_instances_need_smaller_batches)
{
    struct bb__adaptive_cfg c = cfg_default();
    c.optimize = BB_OPTIMIZE_LATENCY;
    uint32_t t, wait;
    double b1, b4;
    bb__adaptive_decide(&c, &linear, 8000, 0.8, &t, &wait, &b1);
    c.instances = 4;
    bb__adaptive_decide(&c, &linear, 8000, 0.8, &t, &wait, &b4);
    cr_assert_lt(b4, b1);
}

Test(adaptive, detects_a_slower_backend)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    feed(&a, 1e6, 5e4, 128, 0.01);
    bb__adaptive_tick(&a, 1, 0, true);
    bb__adaptive_tick(&a, 1 + 200 * MS, 0, false);
    cr_assert(a.fit.valid);
    cr_assert_eq(a.changes, 0);
    /* The backend becomes three times slower. */
    bool changed = false;
    for (int i = 0; i < 40 && !changed; i++)
        changed = bb__adaptive_batch(&a, 1 + (uint32_t)(i * 5 % 40), (uint64_t)(3 * (1e6 + 5e4 * (1 + i * 5 % 40))));
    cr_assert(changed, "a 3x slowdown is detected");
    cr_assert_eq(a.changes, 1);
    cr_assert_eq(a.count, BB_ADAPT_RECENT, "the window restarts from the recent batches");
    struct bb__fit f = bb__adaptive_fit(&a);
    cr_assert(f.a_ns > 2e6, "the new fit sees the slower backend (a = %f)", f.a_ns);
}

/* A backend whose executor shares its CPU: 2 us a batch and 4 us a
 * request, but one batch in eight is preempted and takes four times its
 * time, and one in sixteen twenty times. The fit must see the backend, not
 * the preemptions (a plain least-squares fit put a, b and r2 well off),
 * and the window must not restart: it did, several times a second on a
 * 2-CPU host, while the change detector averaged each batch's relative
 * error (one batch 20x off moves the mean of 16 by 119%). */
static double preempted(uint32_t n, int i)
{
    double t = 2000.0 + 4000.0 * n;
    return i % 16 == 5 ? 20 * t : i % 8 == 1 ? 4 * t : t;
}

Test(adaptive, preempted_batches_move_neither_the_fit_nor_the_detector)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    static const uint32_t sizes[] = {1, 2, 32, 16, 64, 3, 40, 8, 48, 1, 24, 64, 4, 32, 2, 56};
    for (int i = 0; i < 128; i++)
        bb__adaptive_batch(&a, sizes[i % 16], (uint64_t)preempted(sizes[i % 16], i));
    bb__adaptive_tick(&a, 1, 0, true);
    bb__adaptive_tick(&a, 1 + 200 * MS, 0, false);
    struct bb__fit f = a.fit;
    cr_assert(f.valid, "r2 = %f", f.r2);
    cr_assert(fabs(f.a_ns - 2000) < 200 && fabs(f.b_ns - 4000) < 100, "a = %f, b = %f", f.a_ns,
              f.b_ns);
    for (int i = 0; i < 256; i++) {
        uint32_t n = sizes[(i * 7) % 16];
        cr_assert_not(bb__adaptive_batch(&a, n, (uint64_t)preempted(n, i)), "a change at batch %d",
                      i);
    }
    cr_assert_eq(a.changes, 0);
}

/* Preemptions bad enough to put a plain fit's r2 under MIN_R2 (one batch in
 * eight twenty times its time): the fit without them is valid. */
Test(adaptive, a_fit_ruined_by_outliers_is_refit_without_them)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    static const uint32_t sizes[] = {1, 2, 32, 16, 64, 3, 40, 8};
    for (int i = 0; i < 128; i++) {
        double t = 2000.0 + 4000.0 * sizes[i % 8];
        bb__adaptive_batch(&a, sizes[i % 8], (uint64_t)(i % 8 == 3 ? 20 * t : t));
    }
    struct bb__fit f = bb__adaptive_fit(&a);
    cr_assert(f.valid, "r2 = %f", f.r2);
    cr_assert(fabs(f.a_ns - 2000) < 200 && fabs(f.b_ns - 4000) < 100, "a = %f, b = %f", f.a_ns,
              f.b_ns);
}

Test(adaptive, tick_follows_the_arrival_rate)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    feed(&a, 1e6, 5e4, 100, 0.0);
    uint64_t t = 1;
    bb__adaptive_tick(&a, t, 0, true);
    /* Phase 1: 100 req/s for 1 s. */
    for (int i = 0; i < 10; i++) {
        bb__adaptive_arrival(&a, 10);
        t += 100 * MS;
        bb__adaptive_tick(&a, t, 0, false);
    }
    cr_assert_eq(a.target, 1);
    cr_assert_eq(a.wait_us, 0);
    /* Phase 2: a burst of 6000 req/s is taken at once (fast attack). */
    bb__adaptive_arrival(&a, 600);
    t += 100 * MS;
    bb__adaptive_tick(&a, t, 0, false);
    cr_assert_float_eq(a.rate_rps, 6000, 1);
    cr_assert_gt(a.target, 8, "target %u", a.target);
    /* Phase 3: back to 100 req/s; the rate decays and batching stops. */
    for (int i = 0; i < 20; i++) {
        bb__adaptive_arrival(&a, 10);
        t += 100 * MS;
        bb__adaptive_tick(&a, t, 0, false);
    }
    cr_assert_eq(a.target, 1);
}

Test(adaptive, slo_violations_shrink_the_plan)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    feed(&a, 1e6, 5e4, 100, 0.0);
    uint64_t t = 1;
    bb__adaptive_tick(&a, t, 0, true);
    double budget0 = a.budget;
    /* Intervals at 3000 req/s where 10% of completions miss the SLO. */
    for (int i = 0; i < 5; i++) {
        bb__adaptive_arrival(&a, 300);
        for (int j = 0; j < 300; j++)
            bb__adaptive_done(&a, j % 10 ? 1 * MS : 50 * MS);
        t += 100 * MS;
        bb__adaptive_tick(&a, t, 0, false);
    }
    cr_assert_lt(a.budget, budget0);
    cr_assert_geq(a.budget, 0.25, "the budget has a floor");
    double low = a.budget;
    /* Clean intervals grow it back. */
    for (int i = 0; i < 5; i++) {
        bb__adaptive_arrival(&a, 300);
        for (int j = 0; j < 300; j++)
            bb__adaptive_done(&a, 1 * MS);
        t += 100 * MS;
        bb__adaptive_tick(&a, t, 0, false);
    }
    cr_assert_gt(a.budget, low);
}

Test(adaptive, auto_tune_sweeps_sizes)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    c.tune_ns = 1000 * MS;
    bb__adaptive_init(&a, &c);
    uint64_t t = 1;
    bb__adaptive_tick(&a, t, 0, true);
    uint32_t seen_min = UINT32_MAX, seen_max = 0;
    for (int i = 0; i < 12; i++) {
        bb__adaptive_arrival(&a, 5);
        t += 100 * MS;
        bb__adaptive_tick(&a, t, 0, false);
        if (a.tuning) {
            seen_min = a.target < seen_min ? a.target : seen_min;
            seen_max = a.target > seen_max ? a.target : seen_max;
        }
    }
    cr_assert_eq(seen_min, 1);
    cr_assert_geq(seen_max, 32);
    cr_assert_not(a.tuning, "the sweep ends after tune_duration");
}

Test(adaptive, score_reflects_slo_attainment)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    bb__adaptive_tick(&a, 1, 0, true);
    bb__adaptive_arrival(&a, 100);
    for (int i = 0; i < 100; i++)
        bb__adaptive_done(&a, 1 * MS);
    bb__adaptive_tick(&a, 1 + 100 * MS, 5000, false);
    cr_assert_float_eq(a.score, 1.0, 1e-9);
    bb__adaptive_arrival(&a, 100);
    for (int i = 0; i < 50; i++)
        bb__adaptive_done(&a, 40 * MS);
    bb__adaptive_tick(&a, 1 + 200 * MS, 40000, false);
    cr_assert_float_eq(a.score, 0.5 * 0.5, 1e-9, "half served, p99 twice the SLO");
    cr_assert_eq(a.slo_violations, 50);
}

/* Under load, throughput mode grows the batch only while the per-batch cost
 * is a sizeable share of a request's: a backend close to linear in the batch
 * size (a CPU) gains little from waiting; one with a large fixed cost per
 * batch (a GPU) grows to what max_wait_us allows. */
Test(adaptive, only_a_per_batch_cost_is_worth_waiting_for)
{
    struct bb__adaptive_cfg c = cfg_default();
    c.max_wait_us = 1000;
    c.slo_us = 0;
    uint32_t target, wait;
    double best;
    /* CPU-like: 5 us per batch, 5 us per request, 80,000 req/s (80% busy at
     * batch size 1). Past 9 requests a/n is under a tenth of a request. */
    const struct bb__fit cpu = {.a_ns = 5000, .b_ns = 5000, .r2 = 1, .valid = true};
    bb__adaptive_decide(&c, &cpu, 80000, 1.0, &target, &wait, &best);
    cr_assert_gt(target, 1, "under load the batch grows a little");
    cr_assert_leq(target, 10, "but not to the %u that max_wait_us would allow", target);
    /* GPU-like: 30 us per batch, 0.2 us per request, 20,000 req/s: as far as
     * the batch fills within max_wait_us, 1.2 x (n - 1) / L <= 1 ms. */
    const struct bb__fit gpu = {.a_ns = 30000, .b_ns = 200, .r2 = 1, .valid = true};
    bb__adaptive_decide(&c, &gpu, 20000, 1.0, &target, &wait, &best);
    cr_assert_eq(target, 17);
}

/* The throughput policy's target, found by trying every size from 2 up, as
 * bb__adaptive_decide did before it bisected: the largest n that fills
 * within max_wait_us, whose p99 fits the budget, and whose company pays. */
static uint32_t target_by_scan(const struct bb__adaptive_cfg *c, const struct bb__fit *f,
                               double rate_rps, double budget)
{
    double lam = rate_rps / 1e9, max_fill = c->max_wait_us * 1000.0;
    double slo = c->slo_us ? budget * c->slo_us * 1000.0 : INFINITY;
    double n_pays = f->b_ns > 0 ? f->a_ns * 0.9 / (0.1 * f->b_ns) : INFINITY;
    uint32_t n = 1;
    for (uint32_t k = 2; k <= c->max_batch_size; k++) {
        double fill = 1.2 * (k - 1) / lam;
        if (fill > max_fill || fill + 2 * (f->a_ns + f->b_ns * k) > slo || k - 1 >= n_pays)
            break;
        n = k;
    }
    return n;
}

/* The bisection finds what the scan over every size found, up to the
 * largest max_batch_size, whichever bound stops the growth. */
Test(adaptive, the_target_is_the_largest_size_every_bound_allows)
{
    static const uint32_t maxes[] = {1, 2, 3, 17, 64, 100, 4096, 65535, 65536};
    static const uint32_t waits[] = {0, 1, 50, 1000, 100000};
    static const uint32_t slos[] = {0, 300, 20000, 1000000};
    static const double as[] = {0, 2000, 30000, 1e6};
    static const double bs[] = {0, 200, 5000, 5e4};
    static const double rates[] = {1e3, 2e4, 8e4, 1e6, 1e8};
    unsigned grown = 0, cases = 0;
    for (size_t im = 0; im < sizeof maxes / sizeof *maxes; im++)
        for (size_t iw = 0; iw < sizeof waits / sizeof *waits; iw++)
            for (size_t is = 0; is < sizeof slos / sizeof *slos; is++)
                for (size_t ia = 0; ia < sizeof as / sizeof *as; ia++)
                    for (size_t ib = 0; ib < sizeof bs / sizeof *bs; ib++)
                        for (size_t ir = 0; ir < sizeof rates / sizeof *rates; ir++) {
                            struct bb__adaptive_cfg c = cfg_default();
                            c.max_batch_size = maxes[im];
                            c.max_wait_us = waits[iw];
                            c.slo_us = slos[is];
                            const struct bb__fit f = {.a_ns = as[ia], .b_ns = bs[ib], .r2 = 1,
                                                      .valid = true};
                            uint32_t target, wait;
                            double best;
                            bb__adaptive_decide(&c, &f, rates[ir], 0.8, &target, &wait, &best);
                            /* Saturation and the greedy cases decide before
                             * any growth: leave them out. */
                            if (1.2 * rates[ir] / 1e9 * bs[ib] >= 1 ||
                                rates[ir] / 1e9 * (as[ia] + bs[ib]) < 0.5)
                                continue;
                            uint32_t want = target_by_scan(&c, &f, rates[ir], 0.8);
                            cr_assert_eq(target, want,
                                         "max %u, wait %u us, slo %u us, a %g, b %g, %g req/s: "
                                         "target %u, the scan %u",
                                         c.max_batch_size, c.max_wait_us, c.slo_us, as[ia], bs[ib],
                                         rates[ir], target, want);
                            cases++;
                            grown += want > 1;
                        }
    cr_assert_gt(grown, 100, "%u of %u cases grow a batch", grown, cases);
    cr_log_info("%u of %u cases grow a batch", grown, cases);
}

/* The target never exceeds the most requests recently queued at once: with
 * one request in flight nothing is held, whatever the controller plans. */
Test(adaptive, target_is_capped_by_the_requests_queued)
{
    struct bb__adaptive a;
    struct bb__adaptive_cfg c = cfg_default();
    bb__adaptive_init(&a, &c);
    cr_assert_eq(a.target, 32, "the starting target");
    cr_assert_eq(bb__adaptive_target(&a), 1, "nothing queued yet: a first request runs");
    bb__adaptive_queued(&a, 1);
    cr_assert_eq(bb__adaptive_target(&a), 1);
    bb__adaptive_queued(&a, 20);
    cr_assert_eq(bb__adaptive_target(&a), 20, "a burst lifts the cap at once");
    bb__adaptive_queued(&a, 50);
    cr_assert_eq(bb__adaptive_target(&a), 32, "the controller's target below the cap");
    /* The cap remembers the last interval's peak, then lets go. */
    feed(&a, 1e6, 5e4, 100, 0.0);
    bb__adaptive_tick(&a, 1, 0, true);
    bb__adaptive_arrival(&a, 600); /* 6000 req/s: the controller grows the target */
    bb__adaptive_tick(&a, 1 + 100 * MS, 0, false);
    cr_assert_gt(a.target, 8);
    cr_assert_eq(bb__adaptive_target(&a), a.target < 50 ? a.target : 50);
    bb__adaptive_queued(&a, 3);
    bb__adaptive_arrival(&a, 600);
    bb__adaptive_tick(&a, 1 + 200 * MS, 0, false);
    cr_assert_eq(bb__adaptive_target(&a), 3, "one client with three in flight: batches of 3");
}
