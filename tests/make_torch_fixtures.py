#!/usr/bin/python3
"""TorchScript fixtures of tests/test_backend_torch.c, written to DIR:

  raises.pt   forward(x) raises "negative input" when any input is < 0, else
              returns the first 10 values of each row doubled; for the
              exception path of process()
  tuple.pt    returns a tuple, not a tensor; refused at init
  mutates.pt  forward(x) doubles x in place and returns the first 10 values
              of each row: a model that writes its input, which must never
              be the client's memory
  batch1.pt   forward(x) = x.view(1, -1)[:, :10]: fits a batch of one
              request only (a batch size fixed when traced); refused at init

usage: make_torch_fixtures.py DIR
"""
import os
import sys

import torch


class Raises(torch.nn.Module):
    def forward(self, x):
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x.flatten(1)[:, :10] * 2


class Mutates(torch.nn.Module):
    def forward(self, x):
        x.mul_(2.0)
        return x.flatten(1)[:, :10]


class Batch1(torch.nn.Module):
    def forward(self, x):
        return x.view(1, -1)[:, :10]


class Tuple(torch.nn.Module):
    def forward(self, x):
        return x, x


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, mod in (("raises", Raises()), ("tuple", Tuple()), ("mutates", Mutates()),
                      ("batch1", Batch1())):
        path = os.path.join(out, name + ".pt")
        torch.jit.script(mod).save(path + ".tmp")
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
