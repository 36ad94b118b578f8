"""The ctypes structures match the C compiler's layout of client.h."""

import ctypes
import os
import shutil
import subprocess

import pytest

from batchbroker import _lib
from brokerproc import SOURCE_DIR

STRUCTS = {
    "bb_client_opts": _lib.ClientOpts,
    "bb_submit_opts": _lib.SubmitOpts,
    "bb_model_stats": _lib.ModelStatsC,
    "bb_model_tuning": _lib.ModelTuningC,
}


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler (cc) to compare with")
def test_struct_layout_matches_c(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "batchbroker/client.h"',
             'int main(void) {']
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof(struct {cname}));')
        for fname, _ in cls._fields_:
            lines.append(f'printf("{cname} {fname} %zu\\n", offsetof(struct {cname}, {fname}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c11", "-I", os.path.join(SOURCE_DIR, "include"), str(src), "-o",
                    str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cname, what, value = line.split()
        cls = STRUCTS[cname]
        got = ctypes.sizeof(cls) if what == "sizeof" else getattr(cls, what).offset
        assert got == int(value), f"{cname}.{what}: ctypes {got}, C {value}"
