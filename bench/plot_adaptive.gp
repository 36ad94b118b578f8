# Batch target and latency over time for the adaptive run of
# `bb-bench --scenario adaptive --trace FILE` (docs/performance.md).
#
#   gnuplot -e "datafile='build/adaptive_trace.tsv'; outfile='docs/adaptive.svg'" \
#       bench/plot_adaptive.gp
#
# The phase boundaries and the SLO come from the trace's header comment.

if (!exists("datafile")) datafile = "build/adaptive_trace.tsv"
if (!exists("outfile")) outfile = "docs/adaptive.svg"

bounds = system(sprintf("sed -n 's/^# t_s: .*phase boundaries at \\([0-9. ]*\\) s;.*/\\1/p' '%s'", datafile))
slo_us = system(sprintf("sed -n 's/^# t_s: .*SLO \\([0-9]*\\) us.*/\\1/p' '%s'", datafile))
if (words(bounds) != 3) { print "plot_adaptive.gp: no phase boundaries in ".datafile; exit status 1 }
b1 = word(bounds, 1) + 0.0; b2 = word(bounds, 2) + 0.0; b3 = word(bounds, 3) + 0.0
slo_ms = slo_us / 1000.0

set terminal svg size 960,760 dynamic noenhanced font "sans,12" background rgb "white"
set output outfile
set datafile separator "\t"
set datafile missing "NaN"

# Phase boundaries and names on both panels.
do for [b in sprintf("0 %g %g %g", b1, b2, b3)] {
    set arrow from b+0, graph 0 to b+0, graph 1 nohead dt 2 lc rgb "#888888"
}
set label 1 "low" at b1/2, graph 1.04 center
set label 2 "burst" at (b1+b2)/2, graph 1.04 center
set label 3 "sustained" at (b2+b3)/2, graph 1.04 center
set label 4 "warm-up" at 0, graph 1.04 right offset -0.5,0 tc rgb "#888888"
set label 5 "drain" at b3, graph 1.04 left offset 0.5,0 tc rgb "#888888"

set grid ytics lc rgb "#dddddd"
set xrange [*:*]
set key opaque box lc rgb "#cccccc" samplen 2
set multiplot layout 2,1 title "bb-bench --scenario adaptive: the adaptive broker over the three phases"

set lmargin 10
set rmargin 10
set tmargin 2.5
set ylabel "batch target (requests)"
set y2label "arrival rate (req/s)"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set format x ""
set key at graph 0.14, graph 0.80 left top
plot datafile using 1:6 axes x1y2 with lines lw 1 lc rgb "#bbbbbb" title "arrivals, last 100 ms (bench)", \
     datafile using 1:3 with steps lw 2 lc rgb "#1f77b4" title "batch_target (bb_model_tuning)"

set format x "%g"
set xlabel "time since the start of the first phase (s)"
set ylabel "milliseconds"
unset y2label
unset y2tics
set logscale y
set yrange [0.1:*]
set ytics nomirror
set key at graph 0.98, graph 0.03 right bottom
plot datafile using 1:($5/1000) with linespoints pt 7 ps 0.4 lw 1.5 lc rgb "#d62728" title "p99 latency, last 100 ms (bench)", \
     datafile using 1:($4 > 0 ? $4/1000 : 0.1) with steps lw 1.5 lc rgb "#2ca02c" title "wait (bb_model_tuning wait_us; 0 drawn at 0.1 ms)", \
     slo_ms with lines dt 3 lw 1.5 lc rgb "#000000" title sprintf("SLO (p99 %g ms)", slo_ms)
unset multiplot
