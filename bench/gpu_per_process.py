#!/usr/bin/env python3
"""The GPU baseline without a broker: what a pre-forked service does today.

N worker processes, each holding its own copy of the model on the GPU, each
serving one request at a time (batch 1): copy the image to the GPU, forward,
copy the 10 scores back. Also one process at batch 1 and one at batch 64.
Reports requests/s in total and latency percentiles per configuration, the
rows docs/performance.md holds the cuda backend's broker rows against.

Needs a CUDA build of PyTorch (any recent version) and a GPU; the model is a
TorchScript file (scripts/train_fmnist.py writes fmnist.pt) and the inputs
the Fashion-MNIST test images.

usage: gpu_per_process.py --model fmnist.pt [--data DIR] [--procs 16]
                          [--seconds 5] [--device cuda:0] [--json FILE]
"""
import argparse
import gzip
import json
import multiprocessing as mp
import os
import struct
import sys
import time


def load_images(data):
    with gzip.open(os.path.join(data, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 0x803:
        sys.exit(f"gpu_per_process: {data}: not an IDX image file")
    return n, rows * cols, raw[16:]


def worker(rank, args, batch, barrier, start, results):
    import torch

    torch.set_num_threads(1)
    n, dim, raw = load_images(args.data)
    x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(n, dim).float() / 255.0
    model = torch.jit.load(args.model, map_location=args.device).eval()
    lat = []
    with torch.inference_mode():
        # Warm-up: the TorchScript profiling runs and CUDA's lazy set-up.
        for i in range(20):
            model(x[i:i + batch].to(args.device)).cpu()
        torch.cuda.synchronize()
        barrier.wait()
        # The parent sets the start time once every worker is ready.
        while start.value == 0.0:
            time.sleep(0.001)
        time.sleep(max(0.0, start.value - time.perf_counter()))
        t_end = start.value + args.seconds
        i = rank * 997
        done = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            j = i % (n - batch)
            model(x[j:j + batch].to(args.device)).cpu()  # .cpu() waits for the GPU
            lat.append(time.perf_counter() - t0)
            done += batch
            i += batch
    results.put((done, lat))


def run(args, procs, batch):
    ctx = mp.get_context("spawn")  # CUDA cannot cross fork()
    barrier = ctx.Barrier(procs + 1)
    start = ctx.Value("d", 0.0)
    results = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(r, args, batch, barrier, start, results))
          for r in range(procs)]
    for p in ps:
        p.start()
    barrier.wait()
    start.value = time.perf_counter() + 0.2
    out = [results.get(timeout=args.seconds + 600) for _ in ps]
    for p in ps:
        p.join()
        if p.exitcode:
            sys.exit(f"gpu_per_process: a worker failed (exit {p.exitcode})")
    done = sum(d for d, _ in out)
    lat = sorted(v for _, l in out for v in l)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6 if lat else float("nan")
    return {"processes": procs, "batch": batch, "requests_per_s": done / args.seconds,
            "p50_us": pct(0.50), "p99_us": pct(0.99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.environ.get("BB_FMNIST_DIR",
                                                     "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("gpu_per_process: needs PyTorch")
    if not torch.cuda.is_available():
        sys.exit("gpu_per_process: this PyTorch sees no CUDA device")
    rows = [run(args, args.procs, 1), run(args, 1, 1), run(args, 1, 64)]
    print("processes,batch,requests_per_s,p50_us,p99_us")
    for r in rows:
        print(f"{r['processes']},{r['batch']},{r['requests_per_s']:.0f},"
              f"{r['p50_us']:.1f},{r['p99_us']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
