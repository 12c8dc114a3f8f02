#!/usr/bin/env python3
"""Compares the SASS of the kernels in two builds: whether a change that should not touch a kernel's machine code
(a refactor, a new kernel beside it, a shared helper moved) left it instruction for instruction the same, and where
two versions of a kernel differ, without a GPU.

  python3 bench/sass_diff.py OLD NEW [--kernel REGEX] [--pair OLD_REGEX=NEW_REGEX ...] [--registers] [--show N]

OLD, NEW: object files, shared libraries or executables with sm_90a code (dumped with `cuobjdump -sass`, found by
--cuobjdump, $CUOBJDUMP, PATH or in third_party/sass-tools, where scripts/fetch_sass_tools.sh puts pinned ones), or
text files of such a dump. Kernels pair up by mangled name with the anonymous namespace's per-build hash dropped, or
by --pair (the first kernel of each side whose name matches). Branch targets and other hexadecimal constants are
ignored; with --registers, register, predicate and convergence-barrier numbers too (the code's shape, not its
allocation).
Prints per pair whether the instruction streams are identical and, if not, how many instructions differ, the opcode
counts that moved, and each loop (a backward branch over 61-1500 instructions) with its length and its wgmma, cp.async,
TMA and mbarrier instructions, side by side. Exit status: 0 if every pair is identical, 1 if one differs, 2 on error.
"""
import argparse
import collections
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys

FUNCTION = re.compile(r"Function : (\S+)")
INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")
HOT = ("HGMMA", "LDGSTS", "UTMALDG", "SYNCS")  # wgmma, cp.async, TMA loads, mbarrier operations


def fail(message):
    print(f"sass_diff: {message}", file=sys.stderr)
    sys.exit(2)


def dump(path, cuobjdump):
    """The SASS text of path: the file itself if it is text, else cuobjdump's dump of it."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"\x7fELF":
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    fetched = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "third_party", "sass-tools", "cuobjdump")
    tool = cuobjdump or os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump") or (
        fetched if os.path.exists(fetched) else None)
    if not tool:
        fail("no cuobjdump (pass --cuobjdump, set CUOBJDUMP, or run scripts/fetch_sass_tools.sh)")
    run = subprocess.run([tool, "-sass", path], capture_output=True, text=True)
    if run.returncode != 0:  # (e.g. no nvdisasm beside it)
        fail(f"{tool} -sass {path} failed ({run.returncode}): {run.stderr.strip()[:300]}")
    return run.stdout


def functions(text):
    """{mangled name: [(address, instruction)]} of a cuobjdump -sass dump, in dump order."""
    out, current = {}, None
    for line in text.splitlines():
        m = FUNCTION.search(line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        m = INSTRUCTION.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def stable_name(name):
    """The mangled name without the anonymous namespace's per-build hash."""
    return re.sub(r"_GLOBAL__N__[0-9a-f]+_\d+_\w+?_cu_[0-9a-f]{8}", "_GLOBAL__N_", name)


def normalize(instruction, registers):
    text = re.sub(r"0x[0-9a-f]+", "X", instruction)
    if registers:
        text = re.sub(r"\bU?R\d+\b", "R", text)
        text = re.sub(r"\bU?P\d\b", "P", text)
        text = re.sub(r"\bB\d+\b", "B", text)
    return text


def opcode(instruction):
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def loops(code):
    """(length, hot instruction counts) of each loop: a backward branch over 61 to 1500 instructions (longer ones
    are mostly jumps back from cold paths), in address order."""
    index = {address: i for i, (address, _) in enumerate(code)}
    found = []
    for i, (_, ins) in enumerate(code):
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", ins)
        if not m or int(m.group(1), 16) not in index:
            continue
        start = index[int(m.group(1), 16)]
        if start < i and 60 < i - start <= 1500:
            body = [x for _, x in code[start:i + 1]]
            hot = {h: sum(x.startswith(h) or f" {h}" in x for x in body) for h in HOT}
            found.append((i - start + 1, {h: n for h, n in hot.items() if n}))
    return found


def compare(name_a, a, name_b, b, registers, show):
    """Prints the comparison of two kernels; True if identical."""
    x = [normalize(i, registers) for _, i in a]
    y = [normalize(i, registers) for _, i in b]
    print(f"== {stable_name(name_a)}" + ("" if stable_name(name_a) == stable_name(name_b) else f"\n   vs {name_b}"))
    if x == y:
        print(f"   identical: {len(x)} instructions")
        return True
    matcher = difflib.SequenceMatcher(None, x, y, autojunk=False)
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    differing = sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in ops)
    print(f"   DIFFERS: {len(x)} vs {len(y)} instructions, {differing} in {len(ops)} places "
          f"(similarity {matcher.ratio():.3f})")
    count_a = collections.Counter(opcode(i) for _, i in a)
    count_b = collections.Counter(opcode(i) for _, i in b)
    moved = sorted((k for k in set(count_a) | set(count_b) if count_a[k] != count_b[k]),
                   key=lambda k: (-abs(count_a[k] - count_b[k]), k))
    if moved:
        print("   opcodes: " + ", ".join(f"{k} {count_a[k]}->{count_b[k]}" for k in moved[:10]))
    la, lb = loops(a), loops(b)
    for k in range(max(len(la), len(lb))):
        left = f"{la[k][0]} {la[k][1]}" if k < len(la) else "-"
        right = f"{lb[k][0]} {lb[k][1]}" if k < len(lb) else "-"
        print(f"   loop {k}: {left} | {right}")
    for tag, i1, i2, j1, j2 in ops[:show]:
        print(f"   {tag} old[{i1}:{i2}] new[{j1}:{j2}]: " + " ; ".join(i for _, i in a[i1:min(i2, i1 + 3)]) +
              " || " + " ; ".join(i for _, i in b[j1:min(j2, j1 + 3)]))
    return False


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # (piped into head)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--kernel", default="", help="only the kernels whose mangled name matches this regex")
    ap.add_argument("--pair", action="append", default=[], help="OLD_REGEX=NEW_REGEX: compare these two kernels")
    ap.add_argument("--registers", action="store_true", help="ignore register and predicate numbers")
    ap.add_argument("--show", type=int, default=0, help="print the first N differing places")
    ap.add_argument("--cuobjdump", default="")
    args = ap.parse_args()
    old, new = (functions(dump(p, args.cuobjdump)) for p in (args.old, args.new))
    if not old or not new:
        fail(f"no SASS functions in {args.old if not old else args.new}")
    pairs = []
    for spec in args.pair:
        ra, _, rb = spec.partition("=")
        na = next((n for n in old if re.search(ra, n)), None)
        nb = next((n for n in new if re.search(rb, n)), None)
        if not na or not nb:
            fail(f"--pair {spec}: no kernel matches {ra if not na else rb}")
        pairs.append((na, nb))
    if not args.pair:
        by_name = {stable_name(n): n for n in new}
        for n in old:
            if re.search(args.kernel, n):
                if stable_name(n) in by_name:
                    pairs.append((n, by_name[stable_name(n)]))
                else:
                    print(f"== {stable_name(n)}\n   only in {args.old}")
        olds = {stable_name(n) for n in old}
        for n in new:
            if re.search(args.kernel, n) and stable_name(n) not in olds:
                print(f"== {stable_name(n)}\n   only in {args.new}")
        if not pairs:
            fail("no kernel of the old build has a namesake in the new one")
    same = [compare(na, old[na], nb, new[nb], args.registers, args.show) for na, nb in pairs]
    print(f"{sum(same)} of {len(same)} kernels identical")
    sys.exit(0 if all(same) else 1)


if __name__ == "__main__":
    main()
