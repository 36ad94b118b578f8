#!/usr/bin/python3
"""Train the demo model: a 784-256-10 network on Fashion-MNIST, in seconds.

Reads the dataset Debian's dataset-fashion-mnist package ships (gzipped IDX
files, no download), trains with PyTorch on the CPU with a fixed seed, and
writes the same weights twice:

  OUT/fmnist.bbdense  the dense-network file of the blas and cuda backends
                      (docs/backends/model-format.md)
  OUT/fmnist.pt       a TorchScript file for the torch backend
  OUT/fmnist.txt      what was trained and its test accuracy

Inputs are pixel / 255 as float32, row-major 28x28 (784 values); outputs are
the 10 logits (no softmax). Run it with Debian's interpreter (/usr/bin/python3
with python3-torch) or any Python that has torch >= 1.13.

usage: train_fmnist.py [--data DIR] [--out DIR] [--epochs N] [--seed S]
"""
import argparse
import gzip
import os
import struct
import sys
import time
import zlib

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

# Activation ids of the file format (backends/bbdense.h).
ACT_IDENTITY, ACT_RELU = 0, 1


def read_idx(path, ndim):
    """An IDX file (big-endian magic 0x00000800 | ndim, dims, uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != 0x800 | ndim:
        sys.exit(f"train_fmnist: {path}: not an IDX file of {ndim} dimension(s)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = raw[4 + 4 * ndim:]
    want = 1
    for d in dims:
        want *= d
    if len(data) != want:
        sys.exit(f"train_fmnist: {path}: {dims} needs {want} bytes of data, the file has "
                 f"{len(data)} (truncated or corrupt)")
    return dims, data


def load(data, split, torch):
    dims, pix = read_idx(os.path.join(data, f"{split}-images-idx3-ubyte.gz"), 3)
    ldims, lab = read_idx(os.path.join(data, f"{split}-labels-idx1-ubyte.gz"), 1)
    if dims[0] != ldims[0] or dims[1:] != (28, 28):
        sys.exit(f"train_fmnist: {data}: {split} images {dims} and labels {ldims} disagree")
    x = torch.frombuffer(bytearray(pix), dtype=torch.uint8).reshape(dims[0], 784)
    y = torch.frombuffer(bytearray(lab), dtype=torch.uint8).long()
    return x.float() / 255.0, y


def write_bbdense(path, layers):
    """layers: [(weight [out][in] float32 tensor, bias [out], activation id)]."""
    table = b""
    params = b""
    for w, b, act in layers:
        out_dim, in_dim = w.shape
        table += struct.pack("<4I", in_dim, out_dim, act, 0)
        params += w.contiguous().numpy().astype("<f4").tobytes()
        params += b.contiguous().numpy().astype("<f4").tobytes()
    body = table + params
    head = b"BBDENSE\0" + struct.pack("<IIIIQ", 1, len(layers), 0, 0, len(body))
    blob = head + body
    blob += struct.pack("<I", zlib.crc32(blob) & 0xFFFFFFFF)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("BB_FMNIST_DIR", DEFAULT_DATA))
    ap.add_argument("--out", default=".")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    # 0 epochs wrote an untrained model (10% accuracy) as if trained; batch 0
    # died in range().
    if args.epochs < 1 or args.batch < 1:
        ap.error("--epochs and --batch must be at least 1")
    try:
        import torch
    except ImportError:
        sys.exit("train_fmnist: needs PyTorch (Debian: apt-get install python3-torch; "
                 "run with /usr/bin/python3)")

    t0 = time.monotonic()
    # Determinism: one seed, one intra-op thread (a reduction split over a
    # different number of threads rounds differently), a fixed shuffle.
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    xtr, ytr = load(args.data, "train", torch)
    xte, yte = load(args.data, "t10k", torch)

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        perm = torch.randperm(xtr.shape[0], generator=gen)
        for i in range(0, xtr.shape[0], args.batch):
            idx = perm[i:i + args.batch]
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    secs = time.monotonic() - t0

    os.makedirs(args.out, exist_ok=True)
    l1, l2 = model[0], model[2]
    with torch.no_grad():
        write_bbdense(os.path.join(args.out, "fmnist.bbdense"),
                      [(l1.weight, l1.bias, ACT_RELU), (l2.weight, l2.bias, ACT_IDENTITY)])
        # Scripted, not traced: the batch dimension stays free. flatten(1) takes
        # both [n, 784] and [n, 1, 28, 28] inputs.
        scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(1), *model))
    pt = os.path.join(args.out, "fmnist.pt")
    scripted.save(pt + ".tmp")
    os.replace(pt + ".tmp", pt)
    with open(os.path.join(args.out, "fmnist.txt"), "w") as f:
        f.write(f"784-256-10 relu, Adam 1e-3, batch {args.batch}, {args.epochs} epochs, "
                f"seed {args.seed}, torch {torch.__version__}\n"
                f"test accuracy {acc:.4f}\n")
    print(f"train_fmnist: {args.epochs} epochs in {secs:.1f} s, test accuracy {acc * 100:.2f}%, "
          f"wrote {args.out}/fmnist.bbdense and fmnist.pt")


if __name__ == "__main__":
    main()
