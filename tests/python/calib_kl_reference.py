"""Golden thresholds for `kl_threshold_matches_the_reference_loop` in
src/quant/calib.rs: a direct, dependency-free transcription of the one-sided
KL-divergence threshold search (TensorRT 8-bit calibration; the loop of
MXNet `_get_optimal_threshold` and ONNX Runtime `compute_entropy`), run on
three fixed histograms. Prints each histogram and the chosen bin count.

    python3 tests/python/calib_kl_reference.py
"""
import math, random

def smooth(p, eps=1e-4):
    nz = sum(1 for x in p if x == 0)
    nnz = len(p) - nz
    if nnz == 0:
        return None
    eps1 = eps * nz / nnz
    return [eps if x == 0 else x - eps1 for x in p]

def entropy(p, q):
    sp, sq = sum(p), sum(q)
    return sum((a/sp) * math.log((a/sp)/(b/sq)) for a, b in zip(p, q) if a > 0)

def best(hist, levels):
    used = max(i for i, c in enumerate(hist) if c > 0) + 1
    if used <= levels:
        return used, []
    divs = []
    for i in range(levels, used + 1):
        sliced = hist[:i]
        p = list(map(float, sliced))
        p[-1] += sum(hist[i:])
        nonz = [1 if x != 0 else 0 for x in p]
        merged = i // levels
        qb = [sum(sliced[j*merged:(j+1)*merged]) for j in range(levels)]
        qb[-1] += sum(sliced[levels*merged:])
        q = [0.0] * i
        for j in range(levels):
            start = j * merged
            stop = i if j == levels - 1 else start + merged
            norm = sum(nonz[start:stop])
            if norm:
                for k in range(start, stop):
                    q[k] = qb[j] / norm
        q = [0.0 if p[k] == 0 else q[k] for k in range(i)]
        ps, qs = smooth(p), smooth(q)
        d = float('inf') if ps is None or qs is None else entropy(ps, qs)
        divs.append(d)
    m = min(divs)
    return levels + divs.index(m), divs

random.seed(3)
for case in range(3):
    n = 60
    hist = [int(1000 * math.exp(-(k / (8 + 4 * case)) ** 2) * random.uniform(0.5, 1.5)) for k in range(n)]
    hist[50 - case * 7] += 3
    for k in range(n - 1, 0, -1):
        if hist[k]: break
    i, divs = best(hist, 8)
    print("hist", hist)
    print("best", i, "div", divs[i - 8])
