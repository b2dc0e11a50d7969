#!/usr/bin/env python3
"""Runs the hostile input corpus (tests/python/hostile_gen.py) through mlc.

    python tests/python/hostile_run.py                 # CI sample, 20 s timeout
    python tests/python/hostile_run.py --all           # every case, 60 s timeout
    python tests/python/hostile_run.py --only npz-zip-bomb-8GiB onnx-expand-tb

The corpus is (re)generated into target/hostile/ when it is missing or stale
(generator, fixture models or mlc binary changed). Every command of every
selected case runs under `ulimit -v 8000000` (RLIMIT_AS) and a timeout, in a
fresh folder W (cwd W/cwd, HOME W/home, TMPDIR W/tmp, MLC_CACHE_DIR W/cache,
outputs into W/out), and ends as one of

  clean    exit 2, exactly one `error:` line on stderr, no stderr line over
           2,000 characters
  success  exit 0; a written bundle must be read back by `mlc inspect` (exit 0)
           and `mlc run --random 0` must end in success or a clean error;
           commands listed in a case's "expect_error" (input invalid by the
           format's own rules) must not succeed, and those in a control
           case's "expect_success" (valid input) must succeed
  other    anything else: exit 1 (internal error), a signal, a timeout,
           "panicked" or an allocation failure on stderr, an oversized error
           line, a partial or stray output file, a changed input or a file
           written outside W

Prints counts per command and outcome, every "other" with its case id and
first stderr line, writes target/hostile/report.json, and ends with
`hostile: N/M clean` (N commands clean or success, M commands run). Exits 1
when an "other" is not listed in tests/hostile_known.txt (lines
`<case id> <command>  # note`); a listed pair that now passes is printed as
"fixed: ..." (not a failure; delete its line).
"""
import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "target", "hostile")
KNOWN = os.path.join(REPO, "tests", "hostile_known.txt")
GEN = os.path.join(HERE, "hostile_gen.py")
MEM_KB = 8_000_000
MAX_LINE = 2000
STDERR_CAP = 1 << 20
# The CI sample: this many cases of each kind (a seeded choice among the
# ids, always including the cases named in CI_ALWAYS), picked to cover every
# kind and fit about 4 minutes on 2 cores.
CI_PER_KIND = {"trunc": 20, "bitflip": 24, "bundle": 40, "onnx": 60, "extdata": 16,
               "npy": 24, "npz": 16, "dims": 16}
CI_ALWAYS = [
    "bundle-wdeflate-bomb-8GiB", "bundle-st-dup-key", "bundle-qscale-nan", "bundle-gemm-4-inputs",
    "bundle-graph-no-output", "onnx-expand-8GiB", "onnx-concat-chain-const-64GiB", "onnx-if-nested-2000",
    "onnx-pb-nested-100000", "onnx-cycle-2", "onnx-attr-million-ints-transpose", "extdata-dotdot",
    "extdata-absolute", "extdata-symlink", "extdata-hardlink", "extdata-f32-2^32-sparse",
    "npz-zip-bomb-8GiB", "npz-dup-member", "npz-name-dotdot", "dims-mlp-batch-10000000000",
    "onnx-conv-pad-stride-tb",
    # the controls (valid inputs that must succeed)
    "bundle-ok-rebuilt", "bundle-wdeflate-ok", "extdata-ok", "npy-ok", "npz-ok", "npz-ok-calib8",
]
MEMORY_MARKERS = ["memory allocation of", "MemoryError", "Cannot allocate memory", "out of memory",
                  "capacity overflow", "failed to allocate"]


def sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def corpus_stamp(mlc):
    h = hashlib.sha256()
    sha256_file(GEN, h)
    for p in ["fixtures/mlp/model.onnx", "fixtures/cnn/model.onnx", "fixtures/transformer/model.onnx",
              "fixtures/digits/cnn.onnx", "fixtures/digits/mlp.onnx"]:
        sha256_file(os.path.join(REPO, p), h)
    sha256_file(mlc, h)
    return h.hexdigest()


def ensure_corpus(mlc, force):
    stamp_path = os.path.join(OUT, "stamp")
    stamp = corpus_stamp(mlc)
    manifest = os.path.join(OUT, "manifest.json")
    if not force and os.path.exists(manifest) and os.path.exists(stamp_path) \
            and open(stamp_path).read().strip() == stamp:
        return
    t = time.time()
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    subprocess.run([sys.executable, GEN, OUT, "--mlc", mlc], check=True)
    with open(stamp_path, "w") as f:
        f.write(stamp + "\n")
    print(f"(corpus generated in {time.time() - t:.1f} s)")


def read_known():
    known = {}
    if os.path.exists(KNOWN):
        with open(KNOWN) as f:
            for line in f:
                body, _, note = line.partition("#")
                parts = body.split()
                if len(parts) >= 2:
                    known[(parts[0], parts[1])] = note.strip()
    return known


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_KB * 1024, MEM_KB * 1024))
    os.setsid()


def run_limited(argv, cwd, env, timeout, stdout_path, stderr_path):
    """(rc or -signal or None on timeout, wall seconds, max RSS in MiB)."""
    t0 = time.time()
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                             preexec_fn=limit_memory)
    deadline = t0 + timeout
    delay = 0.002
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = 0  # reaped here; keep Popen from waiting again
            rc = os.waitstatus_to_exitcode(status)
            return rc, time.time() - t0, ru.ru_maxrss / 1024
        if time.time() > deadline:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = 0
            return None, time.time() - t0, ru.ru_maxrss / 1024
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def read_capped(path, cap=STDERR_CAP):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read(cap)
    return data.decode("utf-8", "replace"), size


def snapshot(path):
    """{relative path: (kind, size, mtime_ns)} without following links."""
    snap = {}
    if not os.path.lexists(path):
        return snap
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            snap[os.path.relpath(p, path)] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns)
    return snap


def files_under(path):
    out = []
    for root, dirs, files in os.walk(path):
        for n in files:
            out.append(os.path.relpath(os.path.join(root, n), path))
        for n in dirs:
            p = os.path.join(root, n)
            if not os.listdir(p):
                out.append(os.path.relpath(p, path) + "/")
    return sorted(out)


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line if len(line) <= 300 else line[:300] + f"... ({len(line)} chars)"
    return ""


def classify(rc, stderr, stderr_size, wall, timeout):
    """(outcome, reason) from an exit status and stderr alone."""
    if rc is None:
        return "other", f"timeout after {timeout:.0f} s"
    low = stderr
    if "panicked" in low:
        return "other", "panic"
    for m in MEMORY_MARKERS:
        if m in low:
            return "other", f"memory ({m})" + (f", signal {-rc}" if rc < 0 else f", exit {rc}")
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return "other", f"killed by {name}"
    if rc == 0:
        return "success", ""
    if rc == 2:
        lines = stderr.splitlines()
        errs = [l for l in lines if l.startswith("error:")]
        longest = max((len(l) for l in lines), default=0)
        if stderr_size > STDERR_CAP:
            return "other", f"stderr of {stderr_size} bytes"
        if longest > MAX_LINE:
            return "other", f"stderr line of {longest} chars"
        if len(errs) != 1:
            return "other", f"exit 2 with {len(errs)} error: lines"
        return "clean", ""
    if rc == 1:
        return "other", "internal error (exit 1)"
    return "other", f"exit {rc}"


class Runner:
    def __init__(self, mlc, timeout, work):
        self.mlc = mlc
        self.timeout = timeout
        self.work = work

    def exec(self, argv, W, tag):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.path.join(W, "home"),
            "TMPDIR": os.path.join(W, "tmp"),
            "MLC_CACHE_DIR": os.path.join(W, "cache"),
            "LANG": "C.UTF-8",
        }
        so, se = os.path.join(W, f"{tag}.stdout"), os.path.join(W, f"{tag}.stderr")
        rc, wall, rss = run_limited([self.mlc, *argv], os.path.join(W, "cwd"), env, self.timeout, so, se)
        stderr, size = read_capped(se)
        return rc, wall, rss, stderr, size

    def run_cmd(self, case, cmd, case_dir):
        W = tempfile.mkdtemp(prefix="w.", dir=self.work)
        for sub in ["out", "cwd", "home", "tmp", "cache"]:
            os.mkdir(os.path.join(W, sub))
        out = os.path.join(W, "out")
        staged = {}
        for rel in cmd.get("stage", []):
            shutil.copy(os.path.join(case_dir, rel), os.path.join(out, rel))
            staged[rel] = sha256_file(os.path.join(out, rel)).hexdigest()
        for link, target in cmd.get("symlink", {}).items():
            os.symlink(target, os.path.join(out, link))
            staged[link] = None
        subst = {"{case}": case_dir, "{out}": out, "{repo}": REPO}

        def fill(a):
            for k, v in subst.items():
                a = a.replace(k, v)
            return a

        argv = [fill(a) for a in cmd["args"]]
        before_case = snapshot(case_dir)
        before_root = sorted(os.listdir(OUT))
        rc, wall, rss, stderr, size = self.exec(argv, W, "cmd")
        outcome, reason = classify(rc, stderr, size, wall, self.timeout)
        if outcome == "success" and cmd["name"] in case.get("expect_error", ()):
            outcome, reason = "other", "accepted hostile input (exit 0; expected a clean error)"
        if outcome == "clean" and cmd["name"] in case.get("expect_success", ()):
            outcome, reason = "other", "control case refused (valid input; expected success)"
        res = {"id": case["id"], "kind": case["kind"], "cmd": cmd["name"], "args": cmd["args"],
               "rc": rc, "wall_s": round(wall, 3), "max_rss_mib": round(rss, 1),
               "first_line": first_line(stderr)}
        problems = []
        # Outputs: nothing on failure, only the named output (and compress's
        # reports) on success; inputs untouched; nothing written elsewhere.
        written = [f for f in files_under(out) if f not in staged]
        allowed = set()
        if rc == 0:
            for i, a in enumerate(argv):
                if a in ("-o", "--output") and i + 1 < len(argv):
                    o = os.path.relpath(argv[i + 1], out)
                    allowed |= {o, o + ".report.json", o + ".report.md", o + ".report.html"}
        stray = [f for f in written if f not in allowed]
        if stray:
            problems.append(("partial output left: " if rc != 0 else "stray output: ")
                            + ", ".join(stray[:5]))
        for rel, digest in staged.items():
            p = os.path.join(out, rel)
            if digest is not None and (not os.path.exists(p) or sha256_file(p).hexdigest() != digest):
                problems.append(f"input {rel} was changed")
        for sub in ["cwd", "home", "tmp", "cache"]:
            left = files_under(os.path.join(W, sub))
            if left:
                problems.append(f"wrote {sub}/{left[0]}")
        if snapshot(case_dir) != before_case:
            problems.append("the case folder was changed")
        if sorted(os.listdir(OUT)) != before_root:
            problems.append("files appeared in target/hostile/")
        if os.path.exists("/tmp/hostile_x.npy"):
            problems.append("wrote /tmp/hostile_x.npy")
        # A written bundle must read back and run.
        bundle = None
        if outcome == "success":
            for f in written:
                if f.endswith(".mlc") and f in allowed:
                    bundle = os.path.join(out, f)
        if bundle and not problems:
            rc2, _, _, err2, size2 = self.exec(["inspect", bundle], W, "inspect")
            o2, r2 = classify(rc2, err2, size2, 0, self.timeout)
            if o2 != "success":
                problems.append(f"written bundle: inspect {o2} ({r2 or 'clean error'}): {first_line(err2)}")
            else:
                rc3, _, _, err3, size3 = self.exec(["run", bundle, "--random", "0"], W, "runback")
                o3, r3 = classify(rc3, err3, size3, 0, self.timeout)
                if o3 == "other":
                    problems.append(f"written bundle: run --random 0 {r3}: {first_line(err3)}")
                res["bundle_run"] = o3
        if problems:
            if outcome != "other":
                outcome = "other"
                reason = problems[0]
            else:
                reason += "; " + "; ".join(problems)
        res["outcome"] = outcome
        res["reason"] = reason
        shutil.rmtree(W, ignore_errors=True)
        return res

    def run_case(self, case):
        case_dir = os.path.join(OUT, "cases", case["id"])
        return [self.run_cmd(case, cmd, case_dir) for cmd in case["cmds"]]


def select(cases, args):
    if args.only:
        want = set(args.only)
        sel = [c for c in cases if c["id"] in want]
        missing = want - {c["id"] for c in sel}
        if missing:
            sys.exit(f"hostile_run: no such case: {', '.join(sorted(missing))}")
        return sel
    if args.all:
        return cases
    by_kind = {}
    for c in cases:
        by_kind.setdefault(c["kind"], []).append(c)
    chosen = {c for c in CI_ALWAYS}
    rng = random.Random("hostile-ci-sample")
    for kind, cs in sorted(by_kind.items()):
        ids = sorted(c["id"] for c in cs)
        have = sum(1 for i in ids if i in chosen)
        rest = [i for i in ids if i not in chosen]
        rng.shuffle(rest)
        chosen.update(rest[:max(0, CI_PER_KIND.get(kind, 5) - have)])
    return [c for c in cases if c["id"] in chosen]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every case (default: the CI sample)")
    ap.add_argument("--only", nargs="+", metavar="ID", help="just these case ids")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, help="seconds per command (default 20, 60 with --all)")
    ap.add_argument("--mlc", default=os.path.join(REPO, "target", "release", "mlc"))
    ap.add_argument("--regen", action="store_true", help="regenerate the corpus even when it is fresh")
    args = ap.parse_args()
    timeout = args.timeout or (60.0 if args.all else 20.0)
    mlc = os.path.abspath(args.mlc)
    if not os.path.exists(mlc):
        sys.exit(f"hostile_run: {mlc} does not exist (cargo build --release first)")
    t0 = time.time()
    ensure_corpus(mlc, args.regen)
    manifest = json.load(open(os.path.join(OUT, "manifest.json")))
    cases = select(manifest["cases"], args)
    work = os.path.join(OUT, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    runner = Runner(mlc, timeout, work)
    results = []
    n_cmds = sum(len(c["cmds"]) for c in cases)
    print(f"hostile: {len(cases)} cases, {n_cmds} commands ({'all' if args.all else 'CI sample'}; "
          f"timeout {timeout:.0f} s, ulimit -v {MEM_KB}, {args.jobs} jobs)")
    sys.stdout.flush()
    # Slow cases first, so the pool drains evenly.
    order = sorted(cases, key=lambda c: (c["kind"] not in ("dims", "onnx", "bundle", "npz"), c["id"]))
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for rs in pool.map(runner.run_case, order):
            results.extend(rs)
    shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: (r["id"], r["cmd"]))

    # Table.
    outcomes = ["clean", "success", "other"]
    table = {}
    for r in results:
        base = r["cmd"].split(":")[0]
        table.setdefault(base, {o: 0 for o in outcomes})[r["outcome"]] += 1
    print()
    print(f"{'command':<10}" + "".join(f"{o:>9}" for o in outcomes) + f"{'total':>9}")
    for cmd in ["inspect", "run", "compile", "compress"] + sorted(set(table) - {"inspect", "run", "compile", "compress"}):
        if cmd in table:
            row = table[cmd]
            print(f"{cmd:<10}" + "".join(f"{row[o]:>9}" for o in outcomes) + f"{sum(row.values()):>9}")
    kinds = {}
    for r in results:
        k = kinds.setdefault(r["kind"], {o: 0 for o in outcomes})
        k[r["outcome"]] += 1
    print()
    print(f"{'kind':<10}" + "".join(f"{o:>9}" for o in outcomes))
    for k, row in sorted(kinds.items()):
        print(f"{k:<10}" + "".join(f"{row[o]:>9}" for o in outcomes))

    known = read_known()
    others = [r for r in results if r["outcome"] == "other"]
    new = [r for r in others if (r["id"], r["cmd"]) not in known]
    ran = {(r["id"], r["cmd"]): r for r in results}
    fixed = [k for k in known if k in ran and ran[k]["outcome"] != "other"]
    all_ids = {c["id"] for c in manifest["cases"]}
    unknown_ids = sorted({k[0] for k in known if k[0] not in all_ids})
    if others:
        print(f"\nother outcomes ({len(others)}; * = not in tests/hostile_known.txt):")
        for r in others:
            mark = "*" if (r["id"], r["cmd"]) not in known else " "
            print(f"{mark} {r['id']} {r['cmd']}: {r['reason']} [{r['wall_s']:.1f} s, {r['max_rss_mib']:.0f} MiB]"
                  f" | {r['first_line']}")
    for k in fixed:
        print(f"fixed: {k[0]} {k[1]} ({ran[k]['outcome']}; delete its line from tests/hostile_known.txt)")
    for i in unknown_ids:
        print(f"warning: tests/hostile_known.txt names a case the corpus does not have: {i}")
    clean = sum(1 for r in results if r["outcome"] != "other")
    report = {"all": bool(args.all), "timeout_s": timeout, "mem_kb": MEM_KB, "wall_s": round(time.time() - t0, 1),
              "cases": len(cases), "commands": len(results), "clean": clean, "table": table,
              "kinds": kinds, "new_other": [(r["id"], r["cmd"]) for r in new],
              "fixed": [list(k) for k in fixed], "results": results}
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n({time.time() - t0:.0f} s; report: {os.path.relpath(os.path.join(OUT, 'report.json'), REPO)})")
    if new:
        print(f"{len(new)} other outcome(s) not listed in tests/hostile_known.txt")
    print(f"hostile: {clean}/{len(results)} clean")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
