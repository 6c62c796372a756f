#!/usr/bin/env python3
"""Paired differences with 95 % intervals from the per-seed values printed in
docs/results.md (the transfer, TGDP, CAS and ANL tables), the numbers the
doc's sentences cite. Standard library only; the same statistics as
host/src/eval/paired.rs, computed independently:

    python3 tests/benches/python/paired.py

For each comparison, d_i = method_i - baseline_i at seed i; mean, sample sd
(n - 1) and mean +- t(0.975, n - 1) * sd / sqrt(n). t from the standard t
table (NIST/SEMATECH e-Handbook 1.3.6.7.2, column 0.975).
"""
import math
import statistics

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}

# docs/results.md, "Per seed" (seeds 0, 1, 2): KID_dtx x1e3, FD_dtx,
# sample -> nearest train, held-out -> nearest train, to source sample.
TRANSFER = {
    "scratch": [(61980.824, 372.618, 12.488, 6.757, 7.696),
                (24193.557, 254.446, 10.181, 6.801, 10.167),
                (44127.679, 310.707, 9.301, 6.363, 10.966)],
    "naive-finetune": [(1271.578, 58.447, 7.035, 6.757, 6.841),
                       (782.686, 38.457, 7.450, 6.801, 6.357),
                       (936.058, 40.797, 6.878, 6.363, 6.431)],
    "sdft": [(1254.198, 58.431, 7.038, 6.757, 6.676),
             (780.975, 39.602, 7.347, 6.801, 6.201),
             (903.687, 40.710, 6.920, 6.363, 6.294)],
    # seeds 3 and 4, added later: `dtx bench transfer
    # manifests/naive-finetune.toml manifests/sdft.toml --seeds 3,4`
    "naive-finetune-5": [(1401.108, 62.543, 7.074, 6.509, 5.669),
                         (1918.038, 67.208, 7.580, 6.594, 5.129)],
    "sdft-5": [(1404.140, 63.003, 7.081, 6.509, 5.501),
               (1906.778, 67.773, 7.569, 6.594, 4.875)],
    # `dtx bench transfer manifests/source-only.toml manifests/tgdp.toml
    # --seeds 3,4` (TGDP with the fix, eta2 = 1)
    "source-only-5": [(1160.837, 61.218, 7.873, 6.509, 0.0),
                      (1339.869, 62.062, 7.992, 6.594, 0.0)],
    "tgdp-eta2-1-5": [(980.071, 53.704, 7.827, 6.509, 2.992),
                      (1315.084, 61.010, 8.033, 6.594, 0.955)],
    "source-only": [(789.387, 47.045, 8.212, 6.757, 0.0),
                    (1097.739, 55.268, 8.183, 6.801, 0.0),
                    (1034.755, 52.622, 7.824, 6.363, 0.0)],
    # "TGDP on the same images", same seeds, images and references
    "tgdp": [(716.912, 44.607, 8.237, 6.757, 1.844),
             (1079.027, 56.643, 8.239, 6.801, 2.130),
             (1029.104, 52.358, 7.828, 6.363, 1.976)],
    # the same after the consistency term's fix with eta2 = 1 (sum over a
    # sample's values; the rows above had the per-element mean, i.e. eta2
    # = 1/768 in today's units): `dtx bench transfer manifests/tgdp.toml
    # --seeds 0,1,2 --set 'plugin[0].config.eta2=1.0'`
    "tgdp-eta2-1": [(703.974, 44.122, 8.126, 6.757, 2.307),
                    (989.756, 51.854, 8.263, 6.801, 2.338),
                    (833.673, 46.531, 7.785, 6.363, 2.887)],
}
TRANSFER_COLUMNS = ["KID_dtx x1e3", "FD_dtx", "sample -> nearest train",
                    "held-out -> nearest train", "to source sample"]

# docs/results.md, "dtx bench cas", CAS % per seed (0 / 1 / 2 / 3 / 4;
# seeds 3 and 4 from `dtx bench cas --seeds 3,4`).
CAS = {
    "finetune": [53.4, 43.2, 57.7, 49.3, 54.9],
    "finetune+cfg": [52.0, 43.0, 56.9, 50.4, 55.3],
    "finetune+cfg+rejection": [55.7, 62.6, 57.9, 57.4, 59.4],
    "sdft+rejection": [55.6, 60.1, 58.6, 63.0, 58.1],
    "real": [73.7, 68.9, 75.6, 85.4, 66.2],
}

# docs/results.md, "dtx bench anl": (KID_dtx x1e3, FD_dtx) per seed 0-4 (3 and 4
# from `dtx bench anl --seeds 3,4`).
ANL = {
    ("anl", 100): [(1342.684, 56.737), (1113.391, 54.282), (1618.335, 64.428),
                    (1616.022, 72.913), (1734.012, 68.990)],
    ("anl", 300): [(1957.234, 65.575), (1267.995, 54.385), (1833.498, 65.430),
                    (1808.863, 69.814), (2275.116, 75.299)],
    ("anl-unconditional", 100): [(1043.606, 55.198), (853.991, 46.406), (917.166, 50.254),
                                  (815.245, 48.577), (1476.444, 65.891)],
    ("anl-unconditional", 300): [(1030.855, 53.143), (890.127, 47.626), (738.886, 40.850),
                                  (1163.046, 54.508), (1367.010, 61.112)],
    ("naive-finetune", 100): [(895.990, 48.832), (918.462, 46.736), (1152.982, 52.515),
                               (1183.213, 59.306), (1454.047, 60.996)],
    ("naive-finetune", 300): [(1271.578, 58.447), (782.686, 38.457), (936.058, 40.797),
                               (1401.108, 62.543), (1918.038, 67.208)],
}

# The mask-rate sweep: delta -> (KID per seed, spread per seed); the doc
# prints FD only as a mean over seeds, so FD cannot be paired.
SWEEP = {
    0.0: ([1784.5, 1097.7, 1814.8, 1725.3, 2218.9], [11.21, 14.20, 13.10, 12.71, 14.85]),
    0.3: ([1805.7, 1208.5, 1828.2, 1754.7, 2288.1], [11.23, 14.18, 13.29, 12.67, 14.76]),
    0.5: ([1957.2, 1268.0, 1833.5, 1808.9, 2275.1], [11.51, 14.04, 13.76, 12.56, 14.61]),
    0.7: ([2137.8, 1579.8, 1579.9, 2004.9, 1961.2], [11.49, 13.81, 14.22, 12.78, 14.29]),
    0.9: ([2244.4, 1896.8, 1568.5, 1868.7, 1981.4], [12.34, 13.75, 14.33, 14.30, 14.10]),
}

# "dtx bench gmm", the only per-seed values the doc states: mean density at
# n = 100, TGDP and fine-tuning, seed 0 then the two other seeds.
GMM_N100 = {"tgdp": [0.104, 0.096, 0.091], "finetune": [0.120, 0.091, 0.090]}


def paired(method, baseline):
    """(n, mean, sd, lo, hi) of method - baseline, paired by position."""
    d = [m - b for m, b in zip(method, baseline)]
    n, mean = len(d), statistics.mean(d)
    if n < 2:
        return n, mean, None, None, None
    sd = statistics.stdev(d)
    half = T975[n - 1] * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def show(label, method, baseline, digits=3):
    """One line: the differences, their mean, sd and 95 % interval."""
    n, mean, sd, lo, hi = paired(method, baseline)
    d = ", ".join(f"{m - b:+.{digits}f}" for m, b in zip(method, baseline))
    print(f"  {label}: d = [{d}]  mean {mean:+.{digits}f}  sd {sd:.{digits}f}"
          f"  95 % CI [{lo:.{digits}f}, {hi:.{digits}f}]  (n {n})")


def column(rows, k):
    """Column k of per-seed rows."""
    return [r[k] for r in rows]


def main():
    print("transfer (run - baseline, seeds 0-2)")
    for run, base, cols in [
        ("scratch", "naive-finetune", [0, 1, 2]),
        ("sdft", "naive-finetune", [0, 1, 2, 4]),
        ("source-only", "naive-finetune", [0, 1, 2]),
        ("tgdp", "naive-finetune", [0, 1, 2, 4]),
        ("tgdp", "source-only", [0, 1, 2]),
        ("tgdp-eta2-1", "tgdp", [0, 1, 2, 4]),
        ("tgdp-eta2-1", "source-only", [0, 1, 2]),
        ("tgdp-eta2-1", "naive-finetune", [0, 1, 2, 4]),
    ]:
        for k in cols:
            show(f"{run} - {base}, {TRANSFER_COLUMNS[k]}",
                 column(TRANSFER[run], k), column(TRANSFER[base], k))
    print("transfer, seeds 0-4 (sdft - naive-finetune)")
    five = {r: TRANSFER[r] + TRANSFER[r + "-5"] for r in ["naive-finetune", "sdft"]}
    for k in [0, 1, 2, 4]:
        show(f"sdft - naive-finetune, {TRANSFER_COLUMNS[k]}",
             column(five["sdft"], k), column(five["naive-finetune"], k))
    print("transfer, seeds 0-4 (tgdp with the fix, eta2 = 1)")
    five["source-only"] = TRANSFER["source-only"] + TRANSFER["source-only-5"]
    five["tgdp-eta2-1"] = TRANSFER["tgdp-eta2-1"] + TRANSFER["tgdp-eta2-1-5"]
    for base in ["source-only", "naive-finetune"]:
        for k in [0, 1]:
            show(f"tgdp-eta2-1 - {base}, {TRANSFER_COLUMNS[k]}",
                 column(five["tgdp-eta2-1"], k), column(five[base], k))
    for run in ["naive-finetune", "sdft"]:
        show(f"{run}: sample - held-out nearest-train distance",
             column(TRANSFER[run], 2), column(TRANSFER[run], 3))

    print("cas (arm - baseline, CAS points, seeds 0-4)")
    for arm, base in [
        ("finetune+cfg", "finetune"),
        ("finetune+cfg+rejection", "finetune"),
        ("sdft+rejection", "finetune"),
        ("real", "finetune"),
        ("finetune+cfg+rejection", "finetune+cfg"),
        ("sdft+rejection", "finetune+cfg+rejection"),
        ("real", "finetune+cfg+rejection"),
    ]:
        show(f"{arm} - {base}", CAS[arm], CAS[base], 1)

    print("anl (arm - baseline at equal steps, seeds 0-4)")
    for arm in ["anl", "anl-unconditional"]:
        for steps in [100, 300]:
            for k, name in enumerate(["KID_dtx x1e3", "FD_dtx"]):
                show(f"{arm} - naive-finetune, {steps} steps, {name}",
                     column(ANL[(arm, steps)], k),
                     column(ANL[("naive-finetune", steps)], k))
    for arm in ["anl", "anl-unconditional", "naive-finetune"]:
        show(f"{arm}: 300 - 100 steps, KID_dtx x1e3",
             column(ANL[(arm, 300)], 0), column(ANL[(arm, 100)], 0))
    source = column(TRANSFER["source-only"] + TRANSFER["source-only-5"], 0)
    for arm in ["anl", "anl-unconditional", "naive-finetune"]:
        for steps in [100, 300]:
            show(f"{arm}, {steps} steps - source-only, KID_dtx x1e3",
                 column(ANL[(arm, steps)], 0), source)
    print("anl mask rate (delta - 0, seeds 0-4)")
    for delta in [0.3, 0.5, 0.7, 0.9]:
        show(f"delta {delta}, KID_dtx x1e3", SWEEP[delta][0], SWEEP[0.0][0], 1)
        show(f"delta {delta}, spread", SWEEP[delta][1], SWEEP[0.0][1], 2)

    print("gmm (n = 100, mean density)")
    show("tgdp - finetune", GMM_N100["tgdp"], GMM_N100["finetune"], 4)


if __name__ == "__main__":
    main()
