#!/usr/bin/env python3
"""Same-run A/B of fusedmoe libraries kernel by kernel: bench/decode_timeline.py's tables side by side.

  bench/ab_timeline.py run OUT ROUNDS SPEC [SPEC ...] -- DECODE_TIMELINE_ARGS
  bench/ab_timeline.py compare LABEL=FILE[,FILE...] [LABEL=FILE[,FILE...] ...]

SPEC: label=path/to/libfusedmoe_c.so[:NAME=VALUE,...] (environment of that library's runs), as for bench/ab.py.
`run` calls decode_timeline.py once per spec per round, in alternation (drift in clocks and temperature hits every
spec alike), keeps each output in OUT/LABEL-ROUND.txt and then compares them. `compare` reads such outputs.

For each forward (a timeline's title, e.g. "qwen3-30b-a3b-nvfp4 modular M=8192"), it prints each kernel's own time
(what the kernel adds to the span: decode_timeline's `own`) and the span per label as the lowest and highest over
the rounds, then the ratio of the first label's lowest to each other label's (> 1: faster than the first). Kernels
are matched by their place in the forward; a forward whose kernel count differs between labels is printed
kernel by kernel under the first label's names, with a note.
"""
import os
import subprocess
import sys

from ab import parse_spec  # bench/ab.py, beside this script


def parse(text):
    """{title: {"kernels": [(name, own)], "span": us}} of one decode_timeline.py output."""
    out, cur = {}, None
    for line in text.splitlines():
        if " replays of " in line and line.rstrip().endswith("(means, us)"):
            title = line[: line.rindex(": ", 0, line.index(" replays of "))]  # the text before ": N replays"
            cur = out.setdefault(title, {"kernels": [], "span": None})
            cur["kernels"] = []
        elif cur is not None and line.startswith("  span "):
            cur["span"] = float(line.split()[1])
            cur = None
        elif cur is not None and line.startswith("  ") and not line.strip().startswith("kernel "):
            fields = line.split()
            if len(fields) >= 5:
                try:
                    own = float(fields[-1])
                    float(fields[-4])
                except ValueError:
                    continue
                cur["kernels"].append((" ".join(fields[:-4]), own))
    return out


def gather(specs):
    """{label: [parsed output of each round]} from LABEL=FILE,FILE... arguments."""
    runs = {}
    for spec in specs:
        label, _, files = spec.partition("=")
        runs[label] = []
        for path in files.split(","):
            with open(path) as f:
                runs[label].append(parse(f.read()))
    return runs


def fmt(values):
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if hi - lo < 0.05 else f"{lo:.1f}-{hi:.1f}"


def compare(runs):
    labels = list(runs)
    first = labels[0]
    titles = [t for r in runs[first] for t in r]
    for title in dict.fromkeys(titles):
        rounds = {lab: [r[title] for r in runs[lab] if title in r] for lab in labels}
        if any(not v for v in rounds.values()):
            print(f"\n{title}: missing for {', '.join(lab for lab, v in rounds.items() if not v)}")
            continue
        counts = {lab: {len(r["kernels"]) for r in v} for lab, v in rounds.items()}
        n = min(min(c) for c in counts.values())
        note = "" if all(c == {n} for c in counts.values()) else "  (kernel counts differ: " + ", ".join(
            f"{lab} {sorted(c)}" for lab, c in counts.items()) + ")"
        print(f"\n{title}: own time, µs (lowest-highest of {', '.join(str(len(v)) for v in rounds.values())} "
              f"rounds){note}")
        print(f"  {'kernel':34s}" + "".join(f"{lab:>16s}" for lab in labels) +
              "".join(f"{first + '/' + lab:>14s}" for lab in labels[1:]))
        names = rounds[first][0]["kernels"]
        rows = [(names[i][0], {lab: [r["kernels"][i][1] for r in v] for lab, v in rounds.items()}) for i in range(n)]
        rows.append(("span", {lab: [r["span"] for r in v if r["span"] is not None] for lab, v in rounds.items()}))
        for name, per in rows:
            if any(not v for v in per.values()):
                continue
            base = min(per[first])
            ratios = "".join(f"{base / min(per[lab]):14.3f}" if min(per[lab]) > 0 else f"{'-':>14s}"
                             for lab in labels[1:])
            print(f"  {name[:34]:34s}" + "".join(f"{fmt(per[lab]):>16s}" for lab in labels) + ratios)


def run(out, rounds, specs, args):
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    files = {}
    for r in range(rounds):
        for spec in specs:
            label, lib, env = parse_spec(spec)
            cmd = [sys.executable, os.path.join(here, "decode_timeline.py"), "--lib", lib] + args
            print(f"# round {r} {label}: {' '.join(cmd)} env {env}", flush=True)
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=590)
            path = os.path.join(out, f"{label}-{r}.txt")
            with open(path, "w") as f:
                f.write(proc.stdout)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-3000:])
                continue
            files.setdefault(label, []).append(path)
    compare(gather(f"{label}={','.join(paths)}" for label, paths in files.items()))


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "compare":
        compare(gather(sys.argv[2:]))
        return
    out, rounds, rest = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    split = rest.index("--") if "--" in rest else len(rest)
    run(out, rounds, rest[:split], rest[split + 1:])


if __name__ == "__main__":
    main()
