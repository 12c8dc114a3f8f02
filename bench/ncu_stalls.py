#!/usr/bin/env python3
"""Where a kernel's warps stall, instruction by instruction, from Nsight Compute's source page.

  ncu --section WarpStateStats --section SourceCounters -k regex:NAME -o REPORT <command>
  ncu -i REPORT.ncu-rep --page source --csv --print-source sass > SOURCE.csv
  python3 bench/ncu_stalls.py SOURCE.csv [--top 12] [--context 0] [--at ADDR,...]

For each kernel in the file it prints:
- its stall samples by reason;
- the instructions holding the most samples: share of all samples, the two largest reasons, how often each ran
  (once per warp: block set-up; per tile: a main loop);
- with --context N, the N instructions before each of those (what the stalled one waits for, e.g. the load that
  feeds it);
- with --at, the same window around given addresses (their last 5 hex digits);
- with --runs N, the samples of contiguous runs of instructions that ran equally often (a loop body: a consumer's
  chunk loop, the producer's tile loop, an epilogue), the N largest, with their address range and reasons.

ncu lists a kernel's table more than once; repeats are dropped.
"""
import argparse, csv, sys


def kernels(path):
    """[(name, header, rows)] of the source tables in an ncu source-page CSV, each kernel once."""
    out, seen, cur = [], set(), None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                cur = {"name": row[1], "rows": []}
                out.append(cur)
            elif row[0] == "Address" and cur is not None:
                cur["header"] = row
            elif cur is not None and "header" in cur:
                cur["rows"].append(row)
    unique = []
    for k in out:
        key = (k["name"], len(k["rows"]), tuple(tuple(r) for r in k["rows"][:8]))
        if key not in seen and "header" in k:
            seen.add(key)
            unique.append((k["name"], k["header"], k["rows"]))
    return unique


def count(row, col):
    v = row[col] if col is not None and col < len(row) else ""
    try:
        return int(float(v))
    except ValueError:
        return 0


def runs(rows, samples, executed):
    """[(samples, first, last, executions)] of the maximal runs of adjacent instructions with one execution count."""
    out, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or count(rows[i], executed) != count(rows[start], executed):
            out.append((sum(count(rows[j], samples) for j in range(start, i)), start, i - 1,
                        count(rows[start], executed)))
            start = i
    return out


def report(name, header, rows, top, context, at, out, n_runs=0):
    col = {h: i for i, h in enumerate(header)}
    samples = col.get("Warp Stall Sampling (All Samples)")
    executed = col.get("Instructions Executed")
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(count(r, samples) for r in rows) or 1
    print(f"== {name}\n   {len(rows)} instructions, {total} stall samples", file=out)
    by_reason = sorted(((sum(count(r, col[s]) for r in rows), s) for s in reasons), reverse=True)
    print("   " + ", ".join(f"{s[len('stall_'):]} {100 * v / total:.1f}%" for v, s in by_reason if v), file=out)
    addr = [r[0][-5:] for r in rows]

    def line(i, mark=" "):
        r = rows[i]
        main = sorted(((count(r, col[s]), s[len("stall_"):]) for s in reasons), reverse=True)[:2]
        why = ", ".join(f"{s} {v}" for v, s in main if v)
        print(f" {mark} {addr[i]} {100 * count(r, samples) / total:6.2f}% {count(r, executed):>10} "
              f"{r[1].strip()[:64]:64s} {why}", file=out)

    def window(i):
        for j in range(max(0, i - context), i):
            line(j)
        line(i, ">")

    hot = sorted(range(len(rows)), key=lambda i: -count(rows[i], samples))[:top]
    print(f"   top {len(hot)}: address, share, executions, instruction, largest reasons", file=out)
    for i in hot:
        if context:
            window(i)
        else:
            line(i)
    if n_runs:
        print(f"   runs of equal execution counts, largest {n_runs}: "
              "share, addresses, instructions, executions, reasons", file=out)
        for v, a, b, n in sorted(runs(rows, samples, executed), reverse=True)[:n_runs]:
            mix = sorted(((sum(count(rows[j], col[s]) for j in range(a, b + 1)), s[len("stall_"):]) for s in reasons),
                         reverse=True)[:3]
            why = ", ".join(f"{s} {100 * m / max(v, 1):.0f}%" for m, s in mix if m)
            print(f"   {100 * v / total:6.2f}% {addr[a]}-{addr[b]} {b - a + 1:5d} {n:>10}  {why}", file=out)
    for a in at:
        if a in addr:
            print(f"   around {a}:", file=out)
            window(addr.index(a))
        else:
            print(f"   {a}: no such address in this kernel", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--context", type=int, default=0)
    ap.add_argument("--at", default="", help="comma-separated addresses (last 5 hex digits)")
    ap.add_argument("--runs", type=int, default=0, help="the N largest runs of equal execution counts")
    args = ap.parse_args(argv)
    found = kernels(args.csv)
    if not found:
        sys.exit(f"{args.csv}: no source table (ncu -i REPORT --page source --csv --print-source sass)")
    at = [a.strip()[-5:] for a in args.at.split(",") if a.strip()]
    print(f"{len(found)} kernel table{'s' if len(found) != 1 else ''} in {args.csv}")
    for name, header, rows in found:
        report(name, header, rows, args.top, args.context, at, sys.stdout, args.runs)


if __name__ == "__main__":
    main()
