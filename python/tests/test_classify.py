"""A numpy classification through a real backend: the Fashion-MNIST test set
through the `blas` backend (a dense 784-256-10 network), from an asyncio
loop, at the accuracy its training reached.

It needs what the real-backends work adds: the blas plugin, weights trained
by scripts/train_fmnist.py, and Debian's dataset-fashion-mnist. Without them
it is skipped with the reason. Every path and convention it relies on is in
the block below, so that it can follow that work if names change.
"""

import asyncio
import gzip
import os
import subprocess

import numpy as np
import pytest

import batchbroker as bb
from brokerproc import PLUGIN_DIR, SOURCE_DIR, build_path

# ---- What this test assumes of the real backends (one place) ----
BACKEND = "blas"
PLUGIN = os.path.join(PLUGIN_DIR, f"bb_backend_{BACKEND}.so")
DATASET = "/usr/share/datasets/fashion-mnist"
TRAIN_SCRIPT = os.path.join(SOURCE_DIR, "scripts", "train_fmnist.py")
# Weights already there (first found: the build trains them into models/),
# else made by running TRAIN_CMD into a directory, which writes WEIGHTS_NAME.
WEIGHTS_NAME = "fmnist.bbdense"
WEIGHTS = [os.environ.get("BB_FMNIST_WEIGHTS", ""), build_path("models", WEIGHTS_NAME)]
TRAIN_CMD = ["/usr/bin/python3", TRAIN_SCRIPT, "--out"]  # + the output directory
N_IN, N_OUT = 784, 10          # float32 pixels in, float32 scores out
MIN_ACCURACY = 0.85


def preprocess(images):
    """uint8 images (n, 28, 28) -> the network's float32 input rows."""
    return (images.reshape(len(images), N_IN).astype(np.float32) / 255.0)
# ------------------------------------------------------------------


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    if not os.path.exists(PLUGIN):
        pytest.skip(f"no {BACKEND} backend built ({PLUGIN} missing: it needs OpenBLAS, "
                    f"Debian libopenblas-dev)")
    if not os.path.exists(os.path.join(DATASET, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"no Fashion-MNIST in {DATASET} (Debian package dataset-fashion-mnist)")
    for w in WEIGHTS:
        if w and os.path.exists(w):
            return w
    if not os.path.exists(TRAIN_SCRIPT):
        pytest.skip(f"no trained weights ({', '.join(w for w in WEIGHTS if w)}) and no "
                    f"{TRAIN_SCRIPT} to train them")
    outdir = str(tmp_path_factory.mktemp("fmnist"))
    out = os.path.join(outdir, WEIGHTS_NAME)
    r = subprocess.run(TRAIN_CMD + [outdir], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not os.path.exists(out):
        pytest.fail(f"{' '.join(TRAIN_CMD)} {outdir} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return out


def test_fashion_mnist_through_the_blas_backend(brokers, weights):
    config = (f"[model.fmnist]\nbackend = {BACKEND}\nparam.weights = {weights}\n"
              f"max_batch_size = 64\nmax_wait_us = 500\n")
    b = brokers.start(config)
    images = read_idx(os.path.join(DATASET, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DATASET, "t10k-labels-idx1-ubyte.gz"))
    x = preprocess(images)

    async def classify():
        async with bb.AsyncClient(b.sock) as client:
            model = client.model("fmnist", output_dtype=np.float32, output_shape=(N_OUT,))
            sem = asyncio.Semaphore(64)

            async def one(row):
                async with sem:
                    return await model.submit(row)
            return await asyncio.gather(*(one(row) for row in x))

    scores = asyncio.run(classify())
    assert all(s.shape == (N_OUT,) and s.dtype == np.float32 for s in scores)
    predicted = np.array([int(np.argmax(s)) for s in scores])
    accuracy = float((predicted == labels).mean())
    assert accuracy >= MIN_ACCURACY, f"accuracy {accuracy:.4f} on {len(labels)} test images"
