#!/usr/bin/env python3
"""Same-run A/B of fusedmoe libraries and environment switches on one GPU.

Usage: bench/ab.py OUT ROUNDS SPEC [SPEC ...] -- GPU_BENCH_ARGS
  SPEC: label=path/to/libfusedmoe_c.so[:NAME=VALUE,...]  (environment of that library's runs)
Runs `bench/gpu_bench.py --modular-only` once per spec per round, in alternation (so drift in clocks
and temperature hits every spec alike), keeps each point's lowest median over the rounds, and prints
µs per spec and the ratio to the first spec (> 1: faster than the first).
"""
import json
import os
import subprocess
import sys


def main():
    out, rounds, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    split = rest.index("--") if "--" in rest else len(rest)
    specs, bench_args = rest[:split], rest[split + 1:]
    runs = []
    for spec in specs:
        label, _, target = spec.partition("=")
        lib, _, env_text = target.partition(":")
        env = dict(kv.split("=", 1) for kv in env_text.split(",") if kv)
        runs.append((label, lib, env))
    best = {}  # (label, model, tokens) -> µs
    here = os.path.dirname(os.path.abspath(__file__))
    for r in range(rounds):
        for label, lib, env in runs:
            dest = os.path.join(out, f"{label}-{r}")
            cmd = [sys.executable, os.path.join(here, "gpu_bench.py"), "--lib", lib, "--out", dest, "--no-loop",
                   "--modular-only"] + bench_args
            print(f"# round {r} {label}: {' '.join(cmd)} env {env}", flush=True)
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=590)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-3000:])
                continue
            for name in os.listdir(dest):
                if name.endswith(".json"):
                    with open(os.path.join(dest, name)) as f:
                        for row in json.load(f)["results"]:
                            key = (label, row["model"], row["tokens"])
                            best[key] = min(best.get(key, float("inf")), row["fusedmoe_us"])
    points = sorted({(m, t) for (_, m, t) in best}, key=lambda p: (p[0], p[1]))
    base = runs[0][0]
    print("\nmodel               tokens " + "".join(f"{label:>14s}" for label, _, _ in runs) + "   ratio to " + base)
    for m, t in points:
        us = [best.get((label, m, t)) for label, _, _ in runs]
        line = f"{m:19s} {t:6d} " + "".join(f"{u:14.1f}" if u else f"{'-':>14s}" for u in us)
        if us[0]:
            line += "   " + " ".join(f"{us[0] / u:6.3f}" if u else "     -" for u in us[1:])
        print(line)


if __name__ == "__main__":
    main()
