#!/usr/bin/env python3
"""Reruns the lavapipe figures of docs/bench-lavapipe.md that compare whole commands.

    python3 bench/metrics_side_by_side.py hd [--segloss target/release/segloss]
        Hausdorff 95 on a 4x21x256x256 block map and a 1x3x128^3 volume with two spheres:
        `segloss eval --metric hd@monai:percentile=95` and `--metric iou` (whole processes),
        and MONAI's HausdorffDistanceMetric(percentile=95) in process (needs torch, monai, scipy).
    python3 bench/metrics_side_by_side.py folder [--segloss ...]
        64 files of 2x1x256x256 against one file of the same 128 images:
        `segloss eval --logits-dir ... --loss dice --loss bce --csv` against `eval --logits ...`.

Needs numpy. Each figure is the median of --runs whole runs, the two commands alternating.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def blocks_2d(rng):
    n, c, h, w = 4, 21, 256, 256
    lab = np.stack([np.kron(rng.integers(0, c, size=(8, 8)), np.ones((32, 32), np.int64)) for _ in range(n)])
    x = rng.normal(0, 1, (n, c, h, w)).astype(np.float32)
    for k in range(c):
        x[:, k] += 3.0 * (lab == k)
    return x, lab


def spheres_3d(rng):
    d = 128
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(d), np.arange(d), indexing="ij")
    lab = np.zeros((1, d, d, d), np.int64)
    lab[0][(zz - 64) ** 2 + (yy - 60) ** 2 + (xx - 70) ** 2 < 40 ** 2] = 1
    lab[0][(zz - 50) ** 2 + (yy - 80) ** 2 + (xx - 40) ** 2 < 20 ** 2] = 2
    x = rng.normal(0, 1, (1, 3, d, d, d)).astype(np.float32)
    for k in range(3):
        x[0, k] += 3.0 * (lab[0] == k)
    return x, lab


def wall(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def alternate(a, b, runs):
    wall(a), wall(b)  # warm-up
    xs, ys = [], []
    for _ in range(runs):
        xs.append(wall(a))
        ys.append(wall(b))
    return statistics.median(xs), statistics.median(ys)


def monai_hd(x, lab):
    import torch
    from monai.metrics import HausdorffDistanceMetric

    torch.set_num_threads(os.cpu_count() or 1)
    xt, t = torch.from_numpy(x).double(), torch.from_numpy(lab).long()
    c = x.shape[1]
    t0 = time.perf_counter()
    pred = torch.nn.functional.one_hot(xt.argmax(1), c).movedim(-1, 1)
    y = torch.nn.functional.one_hot(t, c).movedim(-1, 1)
    m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean")
    m(pred, y)
    v = m.aggregate().item()
    return time.perf_counter() - t0, v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["hd", "folder"])
    ap.add_argument("--segloss", default="target/release/segloss")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(5)
    tmp = tempfile.mkdtemp(prefix="segloss-side-")
    if a.what == "hd":
        for name, (x, lab) in [("4x21x256x256", blocks_2d(rng)), ("1x3x128x128x128", spheres_3d(rng))]:
            lp, tp = os.path.join(tmp, "l.npy"), os.path.join(tmp, "t.npy")
            np.save(lp, x)
            np.save(tp, lab)
            base = [a.segloss, "eval", "--logits", lp, "--target", tp, "--json", "--metric"]
            hd, iou = alternate(base + ["hd@monai:percentile=95"], base + ["iou"], a.runs)
            out = subprocess.run(base + ["hd@monai:percentile=95"], capture_output=True, text=True).stdout
            print(f"{name}: segloss hd95 {hd:.3f} s, iou only {iou:.3f} s (whole processes); {out.strip()[-60:]}")
            try:
                ms = [monai_hd(x, lab) for _ in range(a.runs)]
                print(f"{name}: MONAI in process {statistics.median(t for t, _ in ms):.3f} s, value {ms[0][1]:.6f}")
            except ImportError as e:
                print(f"{name}: MONAI not available ({e})", file=sys.stderr)
    else:
        ld, td = os.path.join(tmp, "l"), os.path.join(tmp, "t")
        os.makedirs(ld)
        os.makedirs(td)
        ls, ts = [], []
        for i in range(64):
            x = rng.normal(0, 2, (2, 1, 256, 256)).astype(np.float32)
            t = (rng.random((2, 1, 256, 256)) < 0.3).astype(np.float32)
            np.save(os.path.join(ld, f"f{i:02}.npy"), x)
            np.save(os.path.join(td, f"f{i:02}.npy"), t)
            ls.append(x)
            ts.append(t)
        al, at = os.path.join(tmp, "all_l.npy"), os.path.join(tmp, "all_t.npy")
        np.save(al, np.concatenate(ls))
        np.save(at, np.concatenate(ts))
        losses = ["--loss", "dice", "--loss", "bce"]
        folder, one = alternate(
            [a.segloss, "eval", "--logits-dir", ld, "--target-dir", td, "--csv"] + losses,
            [a.segloss, "eval", "--logits", al, "--target", at] + losses,
            a.runs,
        )
        print(f"folder of 64 files {folder:.3f} s, one file of 128 images {one:.3f} s: {folder / one:.2f}x")


if __name__ == "__main__":
    main()
