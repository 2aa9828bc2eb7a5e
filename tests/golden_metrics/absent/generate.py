"""Edge cases of the metrics contract, valued by the libraries themselves.

Run from this folder with a Python that has torch, numpy, segmentation_models_pytorch 0.6.0,
monai 1.6.1 and torchmetrics 1.9.0 (CPU is enough):

    python generate.py

It writes `logits.npy` (float32 [3, 3, 6, 6]), `target.npy` (int64 [3, 6, 6]), `target_ignore.npy`
(the same with row 0 of every image and one more pixel set to 255) and, for each target,
`expected.json` / `expected_ignore.json` in the format of `../README.md` (entries of `metric`,
`kind`, `call`, `status`, `value`, `per_class`, `per_image`, `matrix`). Every value is the
library's output on float64 logits.

The input puts a class in the prediction only (image 0: class 2 in one corner), a class in neither
(image 1: class 1), and a class in the target only (image 2: class 2), so the zero-division,
empty-class and empty-mask rules of every library decide the numbers.
"""
import json
import math
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
import segmentation_models_pytorch as smp  # noqa: E402
import torchmetrics  # noqa: E402
import monai  # noqa: E402
from monai.metrics import (  # noqa: E402
    ConfusionMatrixMetric,
    DiceMetric,
    GeneralizedDiceScore,
    HausdorffDistanceMetric,
    MeanIoU,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
)
from torchmetrics.segmentation import DiceScore as TMDice  # noqa: E402
from torchmetrics.segmentation import GeneralizedDiceScore as TMGD  # noqa: E402
from torchmetrics.segmentation import MeanIoU as TMIoU  # noqa: E402


def inputs():
    rng = np.random.default_rng(1)
    n, c, h, w = 3, 3, 6, 6
    t = np.zeros((n, h, w), np.int64)
    t[0, 1:4, 1:4] = 1  # image 0: classes 0, 1
    t[1, 2:5, 0:3] = 2  # image 1: classes 0, 2
    t[2, 0:2, :] = 1  # image 2: all three
    t[2, 4:, 2:5] = 2
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    for i in range(n):
        for k in range(c):
            x[i, k] += 2.0 * (t[i] == k)
    x[0, 2, 5, 5] = 10  # class 2 predicted in image 0, absent from its target
    x[1, 1] = -10  # class 1 in neither prediction nor target of image 1
    x[2, 2] = -10  # class 2 in image 2's target, never predicted
    ti = t.copy()
    ti[:, 0, :] = 255
    ti[1, 3, 1] = 255
    return x, t, ti


def jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.double().tolist()
    if isinstance(v, list):
        return [jsonable(e) for e in v]
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def entries(x, t):
    x = torch.from_numpy(x).double()
    t = torch.from_numpy(t)
    n, c = x.shape[:2]
    ign = 255 if bool((t == 255).any()) else None
    pred = x.argmax(1)
    out = []

    def add(metric, field, value, call, kind="score"):
        e = {"metric": metric, "kind": kind, "call": [call], "status": "ok"}
        for f in ("value", "per_class", "per_image", "matrix"):
            e[f] = None
        if field == "per_image" and value.dim() == 1:
            value = value.unsqueeze(-1)  # (N x 1, as the golden tables write per_image)
        e[field] = value.long().tolist() if kind == "int" else jsonable(value)
        out.append(e)

    # smp: counts and the six scores at every reduction, zero_division 1 and 0
    tp, fp, fn, tn = smp.metrics.get_stats(pred, t, mode="multiclass", num_classes=c, ignore_index=ign)
    add("counts", "matrix", torch.stack([tp, fp, fn, tn], -1), "smp get_stats", "int")
    scores = [
        ("iou", smp.metrics.iou_score),
        ("dice", smp.metrics.f1_score),
        ("precision", smp.metrics.precision),
        ("recall", smp.metrics.recall),
        ("specificity", smp.metrics.specificity),
        ("accuracy", smp.metrics.accuracy),
    ]
    for name, f in scores:
        for r in ["micro", "macro", "micro-imagewise", "macro-imagewise", "none"]:
            for zd in [1.0, 0.0]:
                key = f"{name}:reduction={r}" + (",zero_division=0" if zd == 0 else "")
                field = "per_image" if r == "none" else "value"
                add(key, field, f(tp, fp, fn, tn, reduction=r, zero_division=zd), f"smp {f.__name__}(reduction={r!r}, zero_division={zd})")
        add(f"{name}:reduction=weighted,weights=1;2;3", "value",
            f(tp, fp, fn, tn, reduction="weighted", class_weights=[1.0, 2.0, 3.0]), f"smp {f.__name__}(reduction='weighted')")

    # MONAI on one-hot prediction and target (ignored pixels zero in the target, ignore_index)
    yp = torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).double()
    mask = (t == 255) if ign is not None else torch.zeros_like(t, dtype=torch.bool)
    tt = t.clone()
    tt[mask] = 0
    y = torch.nn.functional.one_hot(tt, c).permute(0, 3, 1, 2).double()
    y[mask.unsqueeze(1).expand_as(y)] = 0
    kw = dict(ignore_index=255) if ign is not None else {}

    def mon(m, spacing=None):
        if spacing is None:
            m(y_pred=yp, y=y)
        else:
            m(y_pred=yp, y=y, spacing=spacing)
        v = m.aggregate()
        return v[0] if isinstance(m, ConfusionMatrixMetric) else v

    for bg in [True, False]:
        b = f"background={'true' if bg else 'false'}"
        for r, field in [("mean", "value"), ("none", "per_image"), ("mean_batch", "per_class"), ("mean_channel", "per_image"), ("sum", "value")]:
            add(f"dice@monai:{b},reduction={r}", field, mon(DiceMetric(include_background=bg, reduction=r, **kw)), f"monai DiceMetric(include_background={bg}, reduction={r!r})")
            add(f"iou@monai:{b},reduction={r}", field, mon(MeanIoU(include_background=bg, reduction=r, **kw)), f"monai MeanIoU(include_background={bg}, reduction={r!r})")
        add(f"dice@monai:{b},ignore_empty=false", "value", mon(DiceMetric(include_background=bg, ignore_empty=False, **kw)), "monai DiceMetric(ignore_empty=False)")
        add(f"iou@monai:{b},ignore_empty=false", "value", mon(MeanIoU(include_background=bg, ignore_empty=False, **kw)), "monai MeanIoU(ignore_empty=False)")
        for wt in ["square", "simple", "uniform"]:
            add(f"gdice@monai:{b},weight={wt}", "value", mon(GeneralizedDiceScore(include_background=bg, weight_type=wt, **kw)), f"monai GeneralizedDiceScore(weight_type={wt!r})")
        add(f"gdice@monai:{b},reduction=mean_channel", "per_image", mon(GeneralizedDiceScore(include_background=bg, reduction="mean_channel", **kw)), "monai GeneralizedDiceScore(reduction='mean_channel')")
        for mn, tx in [("sensitivity", "recall"), ("precision", "precision"), ("specificity", "specificity"), ("accuracy", "accuracy")]:
            add(f"{tx}@monai:{b}", "value", mon(ConfusionMatrixMetric(include_background=bg, metric_name=mn, **kw)), f"monai ConfusionMatrixMetric({mn!r})")
            add(f"{tx}@monai:{b},reduction=mean", "value", mon(ConfusionMatrixMetric(include_background=bg, metric_name=mn, compute_sample=True, **kw)), f"monai ConfusionMatrixMetric({mn!r}, compute_sample=True)")
            add(f"{tx}@monai:{b},reduction=macro", "per_class", mon(ConfusionMatrixMetric(include_background=bg, metric_name=mn, reduction="mean_batch", **kw)), f"monai ConfusionMatrixMetric({mn!r}, reduction='mean_batch')")
        # surface metrics: masks empty in the prediction, the target or both
        add(f"hd:{b}", "value", mon(HausdorffDistanceMetric(include_background=bg, **kw)), "monai HausdorffDistanceMetric()", "distance")
        add(f"hd:{b},reduction=none", "per_image", mon(HausdorffDistanceMetric(include_background=bg, reduction="none", **kw)), "monai HausdorffDistanceMetric(reduction='none')", "distance")
        add(f"hd:{b},percentile=95,reduction=none", "per_image", mon(HausdorffDistanceMetric(include_background=bg, reduction="none", percentile=95, **kw)), "monai HausdorffDistanceMetric(percentile=95, reduction='none')", "distance")
        add(f"hd:{b},percentile=95", "value", mon(HausdorffDistanceMetric(include_background=bg, percentile=95, **kw)), "monai HausdorffDistanceMetric(percentile=95)", "distance")
        add(f"hd:{b},directed=true,reduction=none", "per_image", mon(HausdorffDistanceMetric(include_background=bg, reduction="none", directed=True, **kw)), "monai HausdorffDistanceMetric(directed=True, reduction='none')", "distance")
        add(f"hd:{b},spacing=2;0.5,reduction=none", "per_image", mon(HausdorffDistanceMetric(include_background=bg, reduction="none", **kw), spacing=[2.0, 0.5]), "monai HausdorffDistanceMetric(reduction='none'), spacing=[2, 0.5]", "distance")
        add(f"assd:{b}", "value", mon(SurfaceDistanceMetric(include_background=bg, symmetric=True, **kw)), "monai SurfaceDistanceMetric(symmetric=True)", "distance")
        add(f"assd:{b},reduction=none", "per_image", mon(SurfaceDistanceMetric(include_background=bg, symmetric=True, reduction="none", **kw)), "monai SurfaceDistanceMetric(symmetric=True, reduction='none')", "distance")
        add(f"assd:{b},symmetric=false,reduction=none", "per_image", mon(SurfaceDistanceMetric(include_background=bg, reduction="none", **kw)), "monai SurfaceDistanceMetric(reduction='none')", "distance")
        k = c if bg else c - 1
        add(f"nsd:{b},tolerance=1,reduction=none", "per_image", mon(SurfaceDiceMetric([1.0] * k, include_background=bg, reduction="none", **kw)), "monai SurfaceDiceMetric([1] * K, reduction='none')")
        add(f"nsd:{b},tolerance=1", "value", mon(SurfaceDiceMetric([1.0] * k, include_background=bg, **kw)), "monai SurfaceDiceMetric([1] * K)")
        # torchmetrics on one-hot tensors, ignored pixels zero in both
        ypz = yp.clone()
        ypz[mask.unsqueeze(1).expand_as(ypz)] = 0

        def tm(m):
            m.update(ypz.long(), y.long())
            return m.compute()

        add(f"iou@torchmetrics:{b}", "value", tm(TMIoU(num_classes=c, include_background=bg)), "torchmetrics MeanIoU()")
        add(f"iou@torchmetrics:{b},reduction=mean_batch,empty_mean=-1", "per_class", tm(TMIoU(num_classes=c, include_background=bg, per_class=True)), "torchmetrics MeanIoU(per_class=True)")
        add(f"dice@torchmetrics:{b}", "value", tm(TMDice(num_classes=c, include_background=bg)), "torchmetrics DiceScore()")
        add(f"dice@torchmetrics:{b},reduction=mean_batch", "per_class", tm(TMDice(num_classes=c, include_background=bg, average="none")), "torchmetrics DiceScore(average='none')")
        add(f"dice@torchmetrics:{b},reduction=micro-imagewise", "value", tm(TMDice(num_classes=c, include_background=bg, average="micro")), "torchmetrics DiceScore(average='micro')")
        add(f"dice@torchmetrics:{b},reduction=macro", "value", tm(TMDice(num_classes=c, include_background=bg, aggregation_level="global")), "torchmetrics DiceScore(aggregation_level='global')")
        add(f"gdice@torchmetrics:{b}", "value", tm(TMGD(num_classes=c, include_background=bg)), "torchmetrics GeneralizedDiceScore()")
        add(f"gdice@torchmetrics:{b},weight=simple", "value", tm(TMGD(num_classes=c, include_background=bg, weight_type="simple")), "torchmetrics GeneralizedDiceScore(weight_type='simple')")
    return out


def main():
    x, t, ti = inputs()
    np.save("logits.npy", x)
    np.save("target.npy", t)
    np.save("target_ignore.npy", ti)
    versions = {
        "torch": torch.__version__,
        "segmentation_models_pytorch": smp.__version__,
        "monai": monai.__version__,
        "torchmetrics": torchmetrics.__version__,
    }
    for target, ign, path in [(t, None, "expected.json"), (ti, 255, "expected_ignore.json")]:
        doc = {"case": "absent", "mode": "multiclass", "ignore_index": ign, "versions": versions, "metrics": entries(x, target)}
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(path, len(doc["metrics"]), "entries")


if __name__ == "__main__":
    main()
