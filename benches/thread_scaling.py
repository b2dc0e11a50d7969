#!/usr/bin/env python3
"""Where the second thread's time goes: a per-node table of 1-thread against
N-thread time from `mlc bench --profile --json`, run in alternating rounds
(1, N, 1, N, ...) so that drift in the machine hits both alike.

    python3 benches/thread_scaling.py benches/models/out/resnet18.onnx --batch 8
    python3 benches/thread_scaling.py MODEL --threads 2 --rounds 5 --runs 10 [--mlc PATH] [-- extra bench args]

Per node: median ms per run at 1 and N threads over the rounds, the speed-up,
and the time lost against a perfect split (t_N - t_1 / N), largest loss first,
split three ways from the profile's idle shares at N threads (the thread
pool times its jobs while profiling):

  serial   the other threads idle while the node ran outside the pool's jobs
  uneven   threads idle inside the jobs (a late worker, a longer share, the join)
  slower   the rest: the threads were busy, but their work took longer than
           one thread's (shared caches and memory bandwidth, work each thread
           repeats)

The first line is the whole model's median latency (p50) at both counts.
Standard library only.
"""
import argparse
import json
import statistics
import subprocess
import sys


def bench(mlc, model, threads, args):
    cmd = [mlc, "bench", model, "--threads", str(threads), "--profile", "--json"] + args
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--mlc", default="target/release/mlc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, help="batch size (models with a symbolic batch dim; default: the model's own)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=15, help="nodes listed (0: all)")
    ap.add_argument("rest", nargs="*", help="further mlc bench arguments (after --)")
    a = ap.parse_args()
    batch = ["--batch", str(a.batch)] if a.batch else []
    extra = batch + ["--runs", str(a.runs), "--warmup", "3"] + a.rest
    counts = [1, a.threads]
    lat = {t: [] for t in counts}
    node_ms = {t: {} for t in counts}
    idle = {}
    order = []
    for _ in range(a.rounds):
        for t in counts:
            r = bench(a.mlc, a.model, t, extra)
            lat[t].append(r["p50_ms"])
            nodes = r["profile"]["nodes"]
            if not order:
                order = [(n["node"], n["op"]) for n in nodes]
            for n in nodes:
                node_ms[t].setdefault(n["node"], []).append(n["ms_per_run"])
                if t > 1:
                    shares = (n.get("serial_share", 0.0), n.get("uneven_share", 0.0))
                    idle.setdefault(n["node"], []).append(shares)
    n = a.threads
    l1, ln = statistics.median(lat[1]), statistics.median(lat[n])
    print(f"{a.model}: batch {a.batch or 'as exported'}, p50 {l1:.2f} ms at 1 thread, {ln:.2f} ms at {n}: "
          f"{l1 / ln:.2f}x ({a.rounds} alternating rounds of {a.runs} runs)")
    rows = []
    for name, op in order:
        t1 = statistics.median(node_ms[1][name])
        tn = statistics.median(node_ms[n][name])
        shares = idle.get(name, [(0.0, 0.0)])
        serial = tn * statistics.median(s for s, _ in shares)
        uneven = tn * statistics.median(u for _, u in shares)
        loss = tn - t1 / n
        rows.append((loss, name, op, t1, tn, serial, uneven, loss - serial - uneven))
    total = [sum(r[i] for r in rows) for i in (0, 5, 6, 7)]
    print(f"time lost against a perfect split: {total[0]:.2f} ms of {ln:.2f} "
          f"(serial {total[1]:.2f}, uneven {total[2]:.2f}, slower {total[3]:.2f})")
    rows.sort(reverse=True)
    if a.top:
        rows = rows[: a.top]
    print(f"{'node':44} {'op':18} {'1t ms':>8} {f'{n}t ms':>8} {'speed-up':>8} {'lost ms':>8}"
          f" {'serial':>7} {'uneven':>7} {'slower':>7}")
    for loss, name, op, t1, tn, serial, uneven, slower in rows:
        sp = t1 / tn if tn > 0 else float("inf")
        print(f"{name[-44:]:44} {op:18} {t1:8.3f} {tn:8.3f} {sp:8.2f} {loss:8.3f}"
              f" {serial:7.3f} {uneven:7.3f} {slower:7.3f}")


if __name__ == "__main__":
    sys.exit(main())
