#!/usr/bin/env python3
"""The scale-out targets of issue 8 (docs/performance.md), measured in one go
and checked: the bb-bench runs behind each, then a table of figure, target and
verdict, with the machine that gave them.

    bench/targets.py [-b BUILD_DIR] [--bench PATH] [--broker-bin PATH]
                     [--plugin-dir DIR] [--candidates] [--duration S]
                     [--warmup S] [--rounds N] [--json FILE]

BUILD_DIR (default build) holds bench/bb-bench and broker/batchbroker; the
scenarios are bench/scenarios/*.ini beside this script. --bench,
--broker-bin and --plugin-dir name them where there is no build tree (a
bundle of scripts/gpu-check.sh --pack). Needs nothing but Python 3 (no jq),
for a machine lent for a few minutes with no package archive. Six bb-bench
invocations, each the broker and a baseline or a variant, each for
(warmup + duration) x rounds: about 2 minutes at the defaults.

--candidates also measures, in the same invocations, the settings that
docs/performance.md names for the rows one dispatcher bounds (several
workers forming one model's batches, wake-ups on a kernel thread, no
spinning, a client of several lanes), each against the same target: one
more invocation, about 3 minutes in all (2.6 on the 2-vCPU VM).

Exits 0 whether or not a target is met; 1 if a run failed, 2 on bad usage.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCEN = os.path.join(HERE, "scenarios")


# What --candidates adds to a row: bb-bench --variant settings, each one more
# broker run of the same invocation (bb-bench takes at most 4).
SPREAD = [f"broker.workers={n},model.echo.formation=per_worker" for n in (2, 4)]
CANDIDATES = {
    "sleeping": ["broker.wake_offload_ms=1", *SPREAD],
    "spinning": SPREAD,
    "threads": SPREAD,
    "synthetic": ["broker.spin_us=0"],
}


def bench(args, scenario, *extra, candidates=()):
    """One bb-bench invocation over a spawned broker: its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [args.bench, "--spawn-broker", os.path.join(SCEN, scenario + ".ini"),
           "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--rounds", str(args.rounds), "--json", out, *extra]
    if args.broker_bin:
        cmd += ["--broker-bin", args.broker_bin]
    if args.plugin_dir:
        cmd += ["--broker-opt", f"broker.plugin_dir={args.plugin_dir}"]
    if args.candidates:
        for c in candidates:
            cmd += ["--variant", c]
    print("targets.py:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            raise SystemExit(f"targets.py: bb-bench failed ({r.returncode}): {' '.join(cmd)}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def own_us(run):
    """A server's CPU time over the requests it answered, in microseconds."""
    return run["cpu_s"]["broker"] / run["completed"] * 1e6 if run["completed"] else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-b", "--build", default="build")
    ap.add_argument("--bench", help="bb-bench (default BUILD_DIR/bench/bb-bench)")
    ap.add_argument("--broker-bin", help="the broker (default: bb-bench's own choice)")
    ap.add_argument("--plugin-dir", help="the backends' directory, for the broker")
    ap.add_argument("--candidates", action="store_true",
                    help="also measure the settings named for the dispatcher-bound rows")
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    args.bench = args.bench or os.path.join(args.build, "bench", "bb-bench")
    if not os.access(args.bench, os.X_OK):
        ap.error(f"{args.bench} is not built")
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        ap.error("--duration > 0, --warmup >= 0, --rounds >= 1")

    rows = []  # target, setting (None: as the scenario says), figure, value, limit, met

    def row(target, figure, value, limit, at_most, setting=None):
        met = value <= limit if at_most else value >= limit
        rows.append({"target": target, "setting": setting, "figure": figure,
                     "value": round(value, 3), "limit": limit, "met": met})

    def throughput_rows(target, r, limit, setting=None):
        """The broker's run and each variant's against the shm baseline."""
        shm = r["baselines"]["shm"]["throughput_rps"]
        runs = [(setting, r)] + [(", ".join(filter(None, (setting, k))), v)
                                 for k, v in (r.get("variants") or {}).items()]
        for name, run in runs:
            row(target, f"{int(run['throughput_rps']):,} / {int(shm):,} req/s",
                run["throughput_rps"] / shm, limit, False, name or None)

    one = bench(args, "scale_sleep", "--clients", "1", "--concurrency", "8", "--wait", "sleep",
                "--baseline", "shm")
    many = bench(args, "scale_sleep", "--clients", "64", "--concurrency", "8", "--wait",
                 "sleep", "--baseline", "shm", candidates=CANDIDATES["sleeping"])
    a, b = own_us(one), own_us(many)
    row("broker CPU per request at 64 clients <= 1.5x its own at 1 client",
        f"{b:.3f} / {a:.3f} us", b / a, 1.5, True)
    throughput_rows("64 sleeping clients >= 0.9x shm", many, 0.9)
    spin = ["--wait", "spin", "--baseline", "shm"]
    r = bench(args, "scale_spin", "--clients", "8", "--concurrency", "16", *spin,
              candidates=CANDIDATES["spinning"])
    throughput_rows("8 spinning client processes >= 0.8x shm", r, 0.8)
    threads = ["--clients", "1", "--threads", "4", "--concurrency", "64", *spin]
    throughput_rows("4 threads in one process >= 0.8x shm", bench(args, "scale_spin", *threads),
                    0.8)
    if args.candidates:
        # One session serves one worker: the threads need a lane each to spread.
        r = bench(args, "scale_spin", *threads, "--lanes", "4", candidates=CANDIDATES["threads"])
        throughput_rows("4 threads in one process >= 0.8x shm", r, 0.8, "--lanes 4")
    syn = bench(args, "synthetic_8clients", "--model", "synthetic", "--clients", "8",
                "--concurrency", "8", "--wait", "sleep", "--baseline", "shm",
                candidates=CANDIDATES["synthetic"])
    theirs = own_us(syn["baselines"]["shm"])
    for name, run in [(None, syn)] + list((syn.get("variants") or {}).items()):
        mine = own_us(run)
        row("synthetic backend, 8 clients: broker own CPU <= 1.5x shm's",
            f"{mine:.3f} / {theirs:.3f} us", mine / theirs, 1.5, True, name)
    ex = bench(args, "echo_spin_executor", "--wait", "spin", "--concurrency", "1", "--cpus", "1",
               "--server-cpus", "0", "--variant", "model.echo.instances=0")
    p_ex = ex["latency_us"]["p50"]
    p_in = ex["variants"]["model.echo.instances=0"]["latency_us"]["p50"]
    row("one spinning client, instances = 1: p50 <= 2x inline (instances = 0)",
        f"{p_ex:.2f} / {p_in:.2f} us", p_ex / p_in, 2.0, True)

    host = one["config"]["host"]
    print(f"\nmachine: {host['cpus_online']} CPUs, kernel {host['kernel']}, "
          f"{platform.node()}; {args.duration} s after {args.warmup} s, {args.rounds} rounds\n")
    w = max(len(r["target"]) for r in rows)
    for r in rows:
        if r["setting"] is None:
            print(f"{r['target']:<{w}}  {r['figure']:>28}  {r['value']:7.3f}  "
                  f"{'met' if r['met'] else 'MISSED'}")
    if args.candidates:
        print("\nwith other settings, each against the same target and baseline:")
        for r in rows:
            if r["setting"] is not None:
                print(f"{r['target']}\n  with {r['setting']}:  {r['figure']}  {r['value']:.3f}  "
                      f"{'met' if r['met'] else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host": host, "duration_s": args.duration, "warmup_s": args.warmup,
                       "rounds": args.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
