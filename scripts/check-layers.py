#!/usr/bin/env python3
"""Checks that includes point down the layer order of docs/architecture.md:

    core -> io -> quant -> backend -> parallel -> ops -> nn -> runtime -> models -> pipeline
         -> server / python / tools

A file may include its own layer and the layers below it, never one above. CUDA sources
(.cu, .cuh: what nvcc compiles) live in backend/cuda/ and parallel/ (the NCCL glue) only, and
models/ includes no backend/ header (a model calls ops/ and nn/). Files
written before the op layer that still break a rule are listed in KNOWN below with the
include they may keep; the list may only shrink: an entry that no longer applies is an
error too, so it is removed as soon as its file is moved onto the op layer.

Usage: scripts/check-layers.py [ROOT]   (exit 0 when clean, 1 with one line per finding)
"""
import os
import re
import sys

ORDER = ["core", "io", "quant", "backend", "parallel", "ops", "nn", "runtime", "models",
         "pipeline", ("server", "python", "tools")]
RANK = {}
for i, layer in enumerate(ORDER):
    for name in (layer if isinstance(layer, tuple) else (layer,)):
        RANK[name] = i
SOURCES = (".h", ".hpp", ".cpp", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/([^"]+)"')

# (file, included layer/ or ".cu"): what the models still written once per device include (the
# Z-Image transformer's split CUDA class); removed as it moves onto ops/ as the VAE has.
KNOWN = {
    ("models/zimage/transformer_cuda.cpp", "backend"),
    ("models/zimage/transformer_cuda.h", "backend"),
    ("models/zimage/transformer_parallel.h", "backend"),
}


def findings(root):
    used = set()
    out = []
    for top in RANK:
        base = os.path.join(root, top)
        for dirpath, _, files in os.walk(base):
            for f in sorted(files):
                if not f.endswith(SOURCES):
                    continue
                path = os.path.relpath(os.path.join(dirpath, f), root)
                if f.endswith((".cu", ".cuh")) and not path.startswith(("backend/cuda/", "parallel/")):
                    if (path, ".cu") in KNOWN:
                        used.add((path, ".cu"))
                    else:
                        out.append(f"{path}: a CUDA source outside backend/cuda/ and parallel/ (kernels belong in "
                                   "backend/cuda/; host code that calls them is a .cpp in a CUDA build)")
                with open(os.path.join(root, path), encoding="utf-8", errors="replace") as fh:
                    for n, line in enumerate(fh, 1):
                        m = INCLUDE.match(line)
                        if not m or m.group(1) not in RANK:
                            continue
                        inc = m.group(1)
                        bad = RANK[inc] > RANK[top] or (top == "models" and inc == "backend")
                        if not bad:
                            continue
                        if (path, inc) in KNOWN:
                            used.add((path, inc))
                            continue
                        why = ("models/ calls ops/ and nn/, never a backend" if inc == "backend"
                               else f"{inc}/ is above {top}/")
                        out.append(f"{path}:{n}: includes \"{m.group(1)}/{m.group(2)}\": {why}")
    for path, inc in sorted(KNOWN - used):
        out.append(f"{path}: listed in KNOWN for '{inc}' but no longer needs it: remove the entry")
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    problems = findings(os.path.abspath(root))
    for p in problems:
        print(p)
    if problems:
        print(f"check-layers: {len(problems)} finding(s)", file=sys.stderr)
        return 1
    print("check-layers: every include points down the layer order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
