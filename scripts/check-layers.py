#!/usr/bin/env python3
"""Checks that includes point down the layer order of docs/architecture.md:

    core -> io -> quant -> backend -> parallel -> ops -> nn -> runtime -> models -> pipeline
         -> server / python / tools

A file may include its own layer and the layers below it, never one above. CUDA sources
(.cu, .cuh: what nvcc compiles) live in backend/cuda/ and parallel/ (the NCCL glue) only, and
models/ includes no backend/ header (a model calls ops/ and nn/).

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

def findings(root):
    out = []
    for top in RANK:
        base = os.path.join(root, top)
        for dirpath, _, files in os.walk(base):
            for f in sorted(files):
                if not f.endswith(SOURCES):
                    continue
                path = os.path.relpath(os.path.join(dirpath, f), root)
                if f.endswith((".cu", ".cuh")) and not path.startswith(("backend/cuda/", "parallel/")):
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
                        why = ("models/ calls ops/ and nn/, never a backend" if inc == "backend"
                               else f"{inc}/ is above {top}/")
                        out.append(f"{path}:{n}: includes \"{m.group(1)}/{m.group(2)}\": {why}")
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
