#!/usr/bin/env python3
"""A performance gate: the library's modular forward on fixed points, against a recorded baseline of the same card.

  python3 bench/perf_gate.py run --lib L --out DIR [--baseline FILE] [--tolerance 0.10] [--update]
                                 [--models M,...] [--tokens T,...] [--reps N] [--rounds 2]
  python3 bench/perf_gate.py compare BASELINE.json RUN.json [--tolerance 0.10]

`run` times the points with bench/gpu_bench.py (--modular-only: full forward with routing, CUDA graphs, L2
flushed) in separate processes, `--rounds` times, keeps each point's best round (DIR/perf_gate-<card>.json), then
compares it with the baseline; --update writes it as the baseline instead. All 25 default points take about 10 s
a round on an H200.
`compare` compares two gpu_bench JSON files.

A point regresses when its % of the floor falls below the baseline's by more than the tolerance (relative: 0.10
is 10%). The floor uses the copy bandwidth and GEMM rate measured in the same process, so two machines of one
card kind compare fairly; points of different card kinds are not compared (exit 2). The default tolerance sits
above the few percent by which one point moves between machines, and far below the slowdowns a gate is for (a
64-bit index change once cost 60x in a peer project). Exit code: 0 pass, 1 a regression or a point missing
from the run, 2 bad input.

Baselines: bench/results/perf_baseline-<card with dashes>.json (bench/gpu_session.sh gate uses it).
"""
import argparse, json, os, shutil, subprocess, sys

DEFAULT_MODELS = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v3,gpt-oss-120b,qwen3-30b-a3b-nvfp4"
DEFAULT_TOKENS = "1,16,128,1024,8192"


def load(path):
    with open(path) as f:
        d = json.load(f)
    if "env" not in d or "results" not in d:
        raise ValueError(f"{path}: not a gpu_bench JSON file (no env/results)")
    return d


def points(d):
    return {(r["model"], int(r["tokens"])): r for r in d["results"]}


def compare(base, run, tolerance, out=sys.stdout):
    """Prints the comparison; returns the exit code."""
    card_b, card_r = base["env"].get("card"), run["env"].get("card")
    if card_b != card_r:
        print(f"perf_gate: the baseline is from {card_b}, this run from {card_r}: not comparable", file=out)
        return 2
    b, r = points(base), points(run)
    failed = 0
    print(f"{'model':22s} {'tokens':>6s} {'base us':>10s} {'run us':>10s} {'base %fl':>9s} {'run %fl':>8s} "
          f"{'ratio':>6s}  verdict", file=out)
    for key in sorted(b, key=lambda k: (k[0], k[1])):
        pb = b[key]
        if key not in r:
            print(f"{key[0]:22s} {key[1]:6d} {pb['fusedmoe_us']:10.1f} {'-':>10s} {'':9s} {'':8s} {'':6s}  MISSING",
                  file=out)
            failed += 1
            continue
        pr = r[key]
        ratio = pr["fusedmoe_pct_floor"] / pb["fusedmoe_pct_floor"]
        bad = ratio < 1.0 - tolerance
        failed += bad
        print(f"{key[0]:22s} {key[1]:6d} {pb['fusedmoe_us']:10.1f} {pr['fusedmoe_us']:10.1f} "
              f"{pb['fusedmoe_pct_floor']:9.1f} {pr['fusedmoe_pct_floor']:8.1f} {ratio:6.3f}  "
              f"{'REGRESSED' if bad else 'ok'}", file=out)
    verdict = "FAIL" if failed else "PASS"
    print(f"perf_gate: {verdict}: {failed} of {len(b)} points regressed by more than {100 * tolerance:.0f}% of "
          f"their % of floor, or missing ({card_r})", file=out)
    return 1 if failed else 0


def baseline_path(card):
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "results", f"perf_baseline-{card.replace(' ', '-').replace('/', '-')}.json")


def best_of(runs):
    """One gpu_bench result from several rounds: each point's round with the highest % of floor."""
    merged = dict(env=runs[0]["env"], ceilings=runs[0]["ceilings"], rounds=len(runs))
    best = {}
    for d in runs:
        for key, r in points(d).items():
            if key not in best or r["fusedmoe_pct_floor"] > best[key]["fusedmoe_pct_floor"]:
                best[key] = r
    merged["results"] = [best[k] for k in sorted(best)]
    return merged


def run(args):
    here = os.path.dirname(os.path.abspath(__file__))
    runs = []
    for i in range(args.rounds):
        out = os.path.join(args.out, f"round{i}")
        cmd = [sys.executable, os.path.join(here, "gpu_bench.py"), "--lib", args.lib, "--out", out, "--no-loop",
               "--modular-only", "--models", args.models, "--tokens", args.tokens, "--reps", str(args.reps),
               "--tag", "gate"]
        print("# " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        made = sorted(f for f in os.listdir(out) if "-gate-" in f and f.endswith(".json"))
        if not made:
            print(f"perf_gate: gpu_bench wrote no JSON file into {out}")
            return 2
        runs.append(load(os.path.join(out, made[-1])))
    result = best_of(runs)
    card = result["env"]["card"]
    result_path = os.path.join(args.out, f"perf_gate-{card.replace(' ', '-').replace('/', '-')}.json")
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    target = args.baseline or baseline_path(card)
    if args.update:
        shutil.copyfile(result_path, target)
        print(f"perf_gate: wrote the baseline {target}")
        return 0
    if not os.path.exists(target):
        print(f"perf_gate: no baseline for {card} ({target}); record one with --update")
        return 2
    return compare(load(target), result, args.tolerance)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--lib", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--baseline", default="")
    r.add_argument("--tolerance", type=float, default=0.10)
    r.add_argument("--update", action="store_true")
    r.add_argument("--models", default=DEFAULT_MODELS)
    r.add_argument("--tokens", default=DEFAULT_TOKENS)
    r.add_argument("--reps", type=int, default=10)
    r.add_argument("--rounds", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("baseline")
    c.add_argument("run")
    c.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args()
    try:
        if args.what == "compare":
            return compare(load(args.baseline), load(args.run), args.tolerance)
        return run(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"perf_gate: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
