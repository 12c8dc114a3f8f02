#!/usr/bin/env python3
"""Runs a command under compute-sanitizer racecheck and fails on every hazard but one known report.

  python3 bench/racecheck_known.py -- compute-sanitizer --tool racecheck BIN --gtest_filter=...

The known report (docs/TESTING.md, "racecheck"): CUTLASS 4.2's SM90 fp8 blockwise-scaling mainloop reads a k tile's
scales from shared memory in every consumer thread (cute::copy_if), while one thread of the warpgroup releases the
stage and the producer refills it by cp.async (SM80_CP_ASYNC_CACHEALWAYS<float, float>). racecheck sees no ordering
between the other threads' reads and the refill. A hazard record passes only when its write is that cp.async copy
and every read it names is that shared-memory copy_if; anything else (another kernel, another pair of accesses),
a failed test or a non-zero exit of the command fails the run. The known records are counted and printed.
"""
import re
import subprocess
import sys

KNOWN_WRITE = "cute::SM80_CP_ASYNC_CACHEALWAYS<float, float>::copy"
KNOWN_READ = re.compile(r"cute::copy_if<.*cute::smem_ptr<float \*>")


def records(text):
    """Yields each racecheck record (analysis mode): its first line and the access lines under it."""
    rec = None
    for line in text.splitlines():
        body = line.removeprefix("=========").strip()
        if body.startswith(("Error: Race reported", "Warning: Race reported")):
            if rec:
                yield rec
            rec = [body]
        elif rec is not None and body.startswith("and "):
            rec.append(body)
        elif rec is not None:
            yield rec
            rec = None
    if rec:
        yield rec


def main():
    if "--" not in sys.argv:
        sys.exit(__doc__)
    cmd = sys.argv[sys.argv.index("--") + 1:]
    run = subprocess.run(cmd, capture_output=True, text=True)
    text = run.stdout + run.stderr
    sys.stdout.write(text)
    known = unknown = 0
    for rec in records(text):
        write_known = KNOWN_WRITE in rec[0] and "Write access" in rec[0]
        reads_known = len(rec) > 1 and all(KNOWN_READ.search(r) and "Read access" in r for r in rec[1:])
        if write_known and reads_known:
            known += 1
        else:
            unknown += 1
            print("racecheck_known: UNKNOWN hazard:", " | ".join(rec))
    summary = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed", text)
    failed = "[  FAILED  ]" in text or "[  PASSED  ]" not in text
    print(f"racecheck_known: {known} known CUTLASS blockwise-scale record(s), {unknown} other(s); "
          f"summary {'found' if summary else 'missing'}; tests {'FAILED' if failed else 'passed'}; exit {run.returncode}")
    # racecheck exits non-zero on any hazard only with --error-exitcode; the command's own exit code still counts.
    sys.exit(1 if unknown or failed or not summary or run.returncode != 0 else 0)


if __name__ == "__main__":
    main()
