# The broker's memory and descriptors over a bb-soak run (docs/operations.md):
#
#   gnuplot -e "datafile='build/soak/soak.tsv'; outfile='docs/soak.svg'" bench/plot_soak.gp
#
# Columns of soak.tsv: t_s, VmRSS, RssAnon, RssShmem (KiB), fds, clients,
# answered requests, kills, reloads; the last row is the idle broker after the
# load (its "answered" column reads "idle").

if (!exists("datafile")) datafile = "build/soak/soak.tsv"
if (!exists("outfile")) outfile = "docs/soak.svg"

set terminal svg size 960,720 dynamic noenhanced font "sans,12" background rgb "white"
set output outfile
set datafile separator "\t"
set datafile commentschars "#"
set grid ytics lc rgb "#dddddd"
set key opaque box lc rgb "#cccccc" samplen 2 left top
set multiplot layout 2,1 title "bb-soak: the broker under churn, SIGKILLed clients, SIGHUP reloads and failing batches"
set lmargin 10
set rmargin 10

set ylabel "MiB"
set yrange [0:*]
set format x ""
plot datafile using 1:($2/1024) with lines lw 2 lc rgb "#1f77b4" title "VmRSS", \
     datafile using 1:($3/1024) with lines lw 2 lc rgb "#d62728" title "RssAnon (private)", \
     datafile using 1:($4/1024) with lines lw 1 lc rgb "#2ca02c" title "RssShmem (client segments)"

set format x "%g"
set xlabel "time (s)"
set ylabel "count"
plot datafile using 1:5 with steps lw 2 lc rgb "#9467bd" title "open descriptors", \
     datafile using 1:6 with steps lw 1 lc rgb "#888888" title "client processes"
unset multiplot
