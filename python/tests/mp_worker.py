"""One client process of test_multiprocess.py: N requests through the echo
model, half synchronous and half from an asyncio loop, each answer checked
against its own input. Prints "ok COUNT" and exits 0, or exits 1."""

import asyncio
import sys

import numpy as np

import batchbroker as bb


def payload(proc, i):
    rng = np.random.default_rng(proc * 1_000_003 + i)
    return rng.integers(0, 256, size=16 + (i * 37) % 700, dtype=np.uint8)


def main(sock, proc, n):
    done = 0
    with bb.Client(sock) as c:
        echo = c.model("echo")
        for i in range(n // 2):
            x = payload(proc, i)
            if not (echo.infer(x, priority=1 + i % 4) == x).all():
                print(f"proc {proc}: wrong answer for sync request {i}")
                return 1
            done += 1

    async def aio():
        async with bb.AsyncClient(sock, max_inflight=32) as client:
            model = client.model("echo")
            idx = range(n // 2, n)
            xs = [payload(proc, i) for i in idx]
            ys = await asyncio.gather(*(model.submit(x, dedup=(i % 3 == 0)) for i, x in zip(idx, xs)))
            return sum(bool((x == y).all()) for x, y in zip(xs, ys))

    good = asyncio.run(aio())
    if good != n - n // 2:
        print(f"proc {proc}: {n - n // 2 - good} wrong async answers")
        return 1
    done += good
    print(f"ok {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
