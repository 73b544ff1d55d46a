#!/usr/bin/env python3
"""Golden safetensors files, written by the reference library, for spec/safetensors_spec.lua.

    pip install safetensors numpy          # made with safetensors 0.8.0, numpy 2.4
    tools/make_safetensors_fixtures.py     # writes spec/fixtures/safetensors/*.safetensors
    tools/make_safetensors_fixtures.py --check OUR_DIR
        # reads every OUR_DIR/<name>.safetensors (written by dr.save from the same
        # content) with the reference reader and compares it, tensor by tensor, with
        # the fixture of the same name; exit status 1 on any difference.

Values are exactly representable in their dtypes (the spec compares with ==). The
spec mirrors the CONTENT below; change both together. torch is not needed: bfloat16
goes through the reference's own TensorSpec with the bits made by numpy.
"""
import argparse
import os
import sys

import numpy as np
import safetensors
from safetensors import _safetensors_rust as rust

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spec", "fixtures",
                   "safetensors")


def bf16(values, shape):
    """bfloat16 bits of float32 values that bfloat16 holds exactly."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    assert np.all(bits & 0xFFFF == 0), "value not exact in bfloat16"
    return ("bfloat16", (bits >> 16).astype(np.uint16).reshape(shape))


def arr(dtype, values, shape=None):
    a = np.asarray(values, dtype=dtype)
    return (np.dtype(dtype).name, a if shape is None else a.reshape(shape))


# name -> (tensors {name: (reference dtype name, numpy array of the bytes)}, metadata)
CONTENT = {
    # every dtype diffrl has, two float32 tensors (name order within a dtype), one
    # metadata key (one key keeps the reference's output deterministic)
    "dtypes": ({
        "f32": arr("float32", [[1.5, -2.25, 3.0], [0.125, -1024.0, 6.5]]),
        "a.weight": arr("float32", [42.0]),
        "f16": arr("float16", [0.5, -65504.0, 1.0009765625]),
        "bf16": bf16([[1.0, -2.5], [3.140625, 65536.0]], (2, 2)),
        "i64": arr("int64", [-5, 1099511627777, 7]),
        "i32": arr("int32", [-2147483648, 0, 2147483647]),
        "u8": arr("uint8", [0, 1, 128, 255]),
        "bool": arr("bool", [True, False, True]),
    }, {"format": "pt"}),
    # 0-d and empty tensors, no metadata
    "scalars": ({
        "scalar": arr("float32", 2.5),
        "empty": arr("float32", np.zeros((0, 3))),
        "empty_i64": arr("int64", np.zeros((0,))),
        "one": arr("int32", [7]),
    }, None),
    # names and metadata that need JSON escapes and UTF-8
    "names": ({
        "ünïcödé/μ.weight": arr("float32", [1.0]),
        'quote"back\\slash': arr("float32", [2.0]),
        "tab\tnewline\n": arr("float32", [3.0]),
        "ctl\x01\x1f": arr("float32", [4.0]),
    }, {"note": 'line1\nline2 "quoted" \\ ünï \x7f'}),
    # several metadata keys (the reference orders them by hash: read-only fixture)
    "metadata": ({"x": arr("uint8", [1, 2])},
                 {"format": "pt", "author": "diffrl", "empty": ""}),
    # no tensors at all
    "empty": ({}, None),
    # dtypes the format has and diffrl does not (F64 loads as float32)
    "unsupported": ({
        "f64": arr("float64", [0.5, -1.25, 3.0]),
        "i8": arr("int8", [-1, 2]),
        "u16": arr("uint16", [65535]),
    }, None),
}

# Files whose bytes dr.save must reproduce (deterministic in the reference: at most
# one metadata key, only dtypes diffrl can write).
BYTE_EXACT = ["dtypes", "scalars", "names", "empty"]


def write(path, tensors, metadata):
    keep = []
    specs = {}
    for name, (dtype, a) in tensors.items():
        a = a.copy(order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        keep.append(a)
        specs[name] = rust.TensorSpec(dtype=dtype, shape=list(a.shape),
                                      data_ptr=a.ctypes.data, data_len=a.nbytes)
    rust.serialize_file(specs, path, metadata=metadata)


def read(path):
    """{name: (header dtype, shape, bytes)} and the metadata, by the reference reader."""
    with open(path, "rb") as f:
        data = f.read()
    tensors = {name: (info["dtype"], list(info["shape"]), bytes(info["data"]))
               for name, info in rust.deserialize(data)}
    with rust.safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
    return tensors, metadata


def check(our_dir):
    failures = 0
    for stem in CONTENT:
        ours = os.path.join(our_dir, stem + ".safetensors")
        if not os.path.exists(ours):
            continue
        got, want = read(ours), read(os.path.join(OUT, stem + ".safetensors"))
        same = got == want
        exact = open(ours, "rb").read() == open(os.path.join(OUT, stem + ".safetensors"),
                                                  "rb").read()
        print(f"{stem}: reference reads it {'the same' if same else 'DIFFERENTLY'}; "
              f"bytes {'identical' if exact else 'differ'}")
        if not same:
            print("  ours:     ", got, "\n  reference:", want)
        failures += not same or (stem in BYTE_EXACT and not exact)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="OUR_DIR", help="compare files dr.save wrote")
    args = ap.parse_args()
    if args.check:
        sys.exit(1 if check(args.check) else 0)
    os.makedirs(OUT, exist_ok=True)
    for stem, (tensors, metadata) in CONTENT.items():
        path = os.path.join(OUT, stem + ".safetensors")
        write(path, tensors, metadata)
        os.chmod(path, 0o644)  # the reference's temporary file is 0600
    with open(os.path.join(OUT, "VERSIONS"), "w") as f:
        f.write(f"safetensors {safetensors.__version__}\nnumpy {np.__version__}\n")
    print(f"wrote {len(CONTENT)} files to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
