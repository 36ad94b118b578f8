# Scale-out plot (bench/run_all.sh): throughput and broker CPU per request
# against client processes, broker and shm baseline, sleeping and spinning.
# Input: scale.dat, rows "mode clients broker_rps shm_rps broker_cpu_us shm_cpu_us".
set terminal svg size 900,360 font 'sans,11'
set output outfile
set multiplot layout 1,2
set logscale x 2
set xlabel 'client processes (8 in flight each)'
set key top left
set grid
set ylabel 'requests/s (millions)'
plot datafile using (stringcolumn(1) eq 'sleep' ? $2 : 1/0):($3/1e6) with linespoints lw 2 title 'broker, sleeping', \
     '' using (stringcolumn(1) eq 'sleep' ? $2 : 1/0):($4/1e6) with linespoints dt 2 lw 2 title 'shm, sleeping', \
     '' using (stringcolumn(1) eq 'spin' ? $2 : 1/0):($3/1e6) with linespoints lw 2 title 'broker, spinning', \
     '' using (stringcolumn(1) eq 'spin' ? $2 : 1/0):($4/1e6) with linespoints dt 2 lw 2 title 'shm, spinning'
set ylabel 'server CPU per request (µs)'
plot datafile using (stringcolumn(1) eq 'sleep' ? $2 : 1/0):5 with linespoints lw 2 title 'broker, sleeping', \
     '' using (stringcolumn(1) eq 'sleep' ? $2 : 1/0):6 with linespoints dt 2 lw 2 title 'shm, sleeping', \
     '' using (stringcolumn(1) eq 'spin' ? $2 : 1/0):5 with linespoints lw 2 title 'broker, spinning', \
     '' using (stringcolumn(1) eq 'spin' ? $2 : 1/0):6 with linespoints dt 2 lw 2 title 'shm, spinning'
unset multiplot
