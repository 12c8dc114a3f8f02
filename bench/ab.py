#!/usr/bin/env python3
"""Same-run A/B of fusedmoe libraries and environment switches on one GPU.

Usage: bench/ab.py OUT ROUNDS SPEC [SPEC ...] -- [--monolithic] GPU_BENCH_ARGS
  SPEC: label=path/to/libfusedmoe_c.so[:NAME=VALUE,...]  (environment of that library's runs)
  --monolithic: time the monolithic forward too (rows "MODEL mono"; the runs then also time the
  torch baselines, so they take longer)
Runs `bench/gpu_bench.py --modular-only` once per spec per round, in alternation (so drift in clocks
and temperature hits every spec alike), keeps each point's lowest median over the rounds, and prints
µs per spec and the ratio to the first spec (> 1: faster than the first). With two rounds or more it
also prints each point's spread over the rounds (largest / smallest median - 1, the worst spec) and marks
a ratio `?` when it is closer to 1 than that spread: the rounds do not separate the two.
"""
import json
import os
import subprocess
import sys


def parse_spec(spec):
    """(label, library, environment) of a SPEC: label=path/to/libfusedmoe_c.so[:NAME=VALUE,...]."""
    label, _, target = spec.partition("=")
    lib, _, env_text = target.partition(":")
    return label, lib, dict(kv.split("=", 1) for kv in env_text.split(",") if kv)


def main():
    out, rounds, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    split = rest.index("--") if "--" in rest else len(rest)
    specs, bench_args = rest[:split], rest[split + 1:]
    monolithic = "--monolithic" in bench_args
    bench_args = [a for a in bench_args if a != "--monolithic"]
    runs = [parse_spec(spec) for spec in specs]
    seen = {}  # (label, model, tokens) -> µs of each round
    here = os.path.dirname(os.path.abspath(__file__))
    for r in range(rounds):
        for label, lib, env in runs:
            dest = os.path.join(out, f"{label}-{r}")
            cmd = [sys.executable, os.path.join(here, "gpu_bench.py"), "--lib", lib, "--out", dest, "--no-loop"] + (
                [] if monolithic else ["--modular-only"]) + bench_args
            print(f"# round {r} {label}: {' '.join(cmd)} env {env}", flush=True)
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=590)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-3000:])
                continue
            for name in os.listdir(dest):
                if name.endswith(".json"):
                    with open(os.path.join(dest, name)) as f:
                        for row in json.load(f)["results"]:
                            seen.setdefault((label, row["model"], row["tokens"]), []).append(row["fusedmoe_us"])
                            # each run's points as they come, so that a run cut short still leaves them
                            print(f"# {label} round {r}: {row['model']} {row['tokens']} {row['fusedmoe_us']:.1f} us",
                                  flush=True)
                            if monolithic and "fusedmoe_mono_us" in row:
                                seen.setdefault((label, row["model"] + " mono", row["tokens"]), []).append(
                                    row["fusedmoe_mono_us"])
    best = {key: min(v) for key, v in seen.items()}
    spread = {key: max(v) / min(v) - 1 for key, v in seen.items()}
    points = sorted({(m, t) for (_, m, t) in best}, key=lambda p: (p[0], p[1]))
    base = runs[0][0]
    print("\nmodel               tokens " + "".join(f"{label:>14s}" for label, _, _ in runs) + "   ratio to " + base +
          ("   spread" if rounds > 1 else ""))
    for m, t in points:
        us = [best.get((label, m, t)) for label, _, _ in runs]
        sp = [spread.get((label, m, t), 0.0) for label, _, _ in runs]
        line = f"{m:19s} {t:6d} " + "".join(f"{u:14.1f}" if u else f"{'-':>14s}" for u in us)
        if us[0]:
            cells = []
            for u, s_new in zip(us[1:], sp[1:]):
                if not u:
                    cells.append("      -")
                    continue
                ratio = us[0] / u
                cells.append(f"{ratio:6.3f}" + ("?" if rounds > 1 and abs(ratio - 1) < max(sp[0], s_new) else " "))
            line += "   " + " ".join(cells)
        if rounds > 1:
            line += f"   {100 * max(sp):5.1f}%"
        print(line)


if __name__ == "__main__":
    main()
