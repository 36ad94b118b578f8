#!/usr/bin/python3
"""Throughput and latency of the Python client from one asyncio event loop:
N coroutines (--inflight, default 64) each keep one request in flight on a
model of a running broker, for --duration seconds after --warmup.

    /usr/bin/python3 python/bench_asyncio.py --socket /tmp/bb.sock --inflight 64

--mode infer (default) is `await model.submit(bytes)`: a new request per
call, the input copied in and the output copied out. --mode zero-copy keeps
one Request per coroutine and resubmits it (`await model.run(request)`),
reading the output in place. The average batch size comes from the broker's
statistics over the measured window. docs/performance.md has the figures
and the C client's for the same workload (bb-bench --concurrency 64).
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # a source tree's package
import batchbroker as bb  # noqa: E402


def percentile(sorted_ns, p):
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(p / 100 * len(sorted_ns)))] / 1e3


async def bench(args):
    async with bb.AsyncClient(args.socket) as client:
        model = client.model(args.model)
        payload = bytes(i % 251 for i in range(args.payload))
        stop_at = [0.0]
        measure_from = [0.0]
        lat = []

        async def worker(k):
            req = model.request(args.payload) if args.mode == "zero-copy" else None
            if req is not None:
                req.input[:] = payload
            while True:
                t0 = time.perf_counter_ns()
                if t0 / 1e9 >= stop_at[0]:
                    break
                if req is not None:
                    await model.run(req)
                    ok = req.output[0] == payload[0]
                else:
                    ok = (await model.submit(payload))[0] == payload[0]
                t1 = time.perf_counter_ns()
                if not ok:
                    raise AssertionError("wrong answer")
                if t0 / 1e9 >= measure_from[0]:
                    lat.append(t1 - t0)
            if req is not None:
                req.close()

        now = time.perf_counter()
        measure_from[0] = now + args.warmup
        stop_at[0] = measure_from[0] + args.duration
        tasks = [asyncio.ensure_future(worker(k)) for k in range(args.inflight)]
        await asyncio.sleep(args.warmup)
        s0, c0 = model.stats(), time.process_time()
        await asyncio.gather(*tasks)
        s1, c1 = model.stats(), time.process_time()
    lat.sort()
    batches = s1.batches - s0.batches
    return {
        "mode": args.mode, "inflight": args.inflight, "payload": args.payload,
        "requests": len(lat), "throughput_rps": len(lat) / args.duration,
        "p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
        "avg_batch": (s1.completed - s0.completed) / batches if batches else float("nan"),
        "client_cpu_us_per_req": (c1 - c0) * 1e6 / max(1, len(lat)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=None, help="broker socket ($BATCHBROKER_SOCKET)")
    ap.add_argument("--model", default="echo")
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--payload", type=int, default=64, help="bytes per request")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--mode", choices=("infer", "zero-copy"), default="infer")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    r = asyncio.run(bench(args))
    print(f"python asyncio, 1 process, {r['inflight']} in flight, {r['payload']} B, "
          f"mode {r['mode']}: {r['throughput_rps']:,.0f} req/s, p50 {r['p50_us']:.1f} us, "
          f"p99 {r['p99_us']:.1f} us, avg batch {r['avg_batch']:.1f}, "
          f"client CPU {r['client_cpu_us_per_req']:.1f} us/req")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
