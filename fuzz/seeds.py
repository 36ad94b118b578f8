#!/usr/bin/env python3
"""Write the binary seed inputs of fuzz_control, fuzz_ingest and fuzz_bbdense
(the formats are described at the top of each harness). Re-run after changing
a format:

    fuzz/seeds.py            # writes fuzz/corpus/fuzz_{control,ingest,bbdense}/*
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC, VERSION = 0x4B524242, 0x00020000
HELLO, MODEL_OPEN, STATS, PIN = 1, 3, 5, 7


def hello(flags=0, slots=0, seg=0, cpu=-1):
    return struct.pack("<IiIIQIIiI", HELLO, 0, MAGIC, VERSION, seg, slots, flags, cpu, 0)


def model_open(name):
    return struct.pack("<Ii64s", MODEL_OPEN, 0, name.encode())


def stats(model):
    return struct.pack("<IiII", STATS, 0, model, 0)


def pin(name, target):
    return struct.pack("<Ii64sII", PIN, 0, name.encode(), target, 0)


def record(session, msg, feed=True):
    return struct.pack("<BH", session | (2 if feed else 0), len(msg)) + msg


def write(kind, name, data):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# fuzz_control: operator and client sessions, every message type.
write("fuzz_control", "operator", record(0, hello(1)) + record(0, stats(0)) + record(0, stats(1))
      + record(0, pin("echo", 2)) + record(0, pin("echo", 0)) + record(0, stats(7)))
write("fuzz_control", "client", record(1, hello(0, 16, 1)) + record(1, model_open("echo"))
      + record(1, model_open("syn")) + record(1, model_open("nope")) + record(1, stats(0)))
write("fuzz_control", "both", record(0, hello(1)) + record(1, hello(0, 8, 1))
      + record(0, stats(0), False) + record(1, model_open("echo"), False) + record(0, b"\x07"))


# fuzz_ingest: opcodes (low bits % 9): 0 descriptor, 1 submit, 2 cancel,
# 3 raw entry, 4 lose count, 5 scribble, 6 pass, 7 fill input, 8 raw descriptor;
# bit 4 = client 1.
def desc(slot, model, in_u, in_len, out_u, out_cap, prio=0, flags=0, timeout=0, client=0):
    return struct.pack("<BBBHHHHBBBB", 0 | client << 4, slot, model, in_u, in_len, out_u,
                       out_cap, prio, flags, timeout, 0)


def op(code, *args, client=0):
    return bytes([code | client << 4]) + bytes(args)


PASS = op(6)
write("fuzz_ingest", "echo", desc(0, 0, 0, 64, 2, 64) + op(7, 0, 65) + op(1, 0) + PASS + PASS)
write("fuzz_ingest", "dedup", desc(0, 0, 0, 64, 2, 64) + op(7, 0, 66) + op(1, 0)
      + desc(1, 0, 0, 64, 2, 64, client=1) + op(7, 1, 66, client=1) + op(1, 1, client=1)
      + PASS + op(1, 0) + PASS)
write("fuzz_ingest", "synthetic", b"".join(desc(i, 1, 4 * i, 100, 4 * i + 2, 100, prio=i % 5,
                                                timeout=i) + op(1, i) for i in range(6))
      + op(2, 3) + PASS + PASS + PASS)
write("fuzz_ingest", "fifo", b"".join(desc(i, 2, 4 * i, 32, 4 * i + 1, 32, prio=4 - i % 4)
                                      + op(1, i) for i in range(8)) + PASS + op(2, 7) + PASS)
write("fuzz_ingest", "adaptive", b"".join(desc(i, 3, 8 * i, 512, 8 * i + 8, 512) + op(1, i)
                                          for i in range(8)) + PASS)
write("fuzz_ingest", "corrupt", desc(0, 0, 0, 64, 2, 64) + op(1, 0) + op(3, 0xff, 0xff, 0, 0)
      + PASS + op(4, 9, 0, 0, 0) + PASS + op(5, 0, 16, 0, 0, 8) + b"\xff" * 8 + PASS)


# fuzz_bbdense: a control byte (bit 0 fixes the body length, bit 1 the CRC),
# then a .bbdense image (docs/backends/model-format.md).
def bbdense(layers, params=None):
    """layers: (in, out, activation id); params: floats, else 0.5, -0.25, ..."""
    table = b"".join(struct.pack("<IIII", i, o, a, 0) for i, o, a in layers)
    n = sum(i * o + o for i, o, _ in layers)
    vals = params if params is not None else [(k % 7 - 3) / 4 for k in range(n)]
    body = table + struct.pack("<%df" % len(vals), *vals)
    img = b"BBDENSE\0" + struct.pack("<IIIIQ", 1, len(layers), 0, 0, len(body)) + body
    return img + struct.pack("<I", zlib.crc32(img))


write("fuzz_bbdense", "mlp", b"\x03" + bbdense([(4, 3, 1), (3, 2, 4)]))
write("fuzz_bbdense", "every-activation", b"\x03" + bbdense(
    [(2, 3, 0), (3, 3, 1), (3, 2, 2), (2, 2, 3), (2, 2, 4)]))
write("fuzz_bbdense", "raw", b"\x00" + bbdense([(3, 1, 3)]))
write("fuzz_bbdense", "not-finite", b"\x03" + bbdense([(1, 1, 0)], [float("inf"), 0.0]))
write("fuzz_bbdense", "chain-mismatch", b"\x03" + bbdense([(2, 2, 1), (3, 1, 0)])[:-4] + b"\0" * 4)
