"""Inference latency: decode + transforms + forward for one image, and batch throughput.

    python bench/predict_bench.py [--model export.pkl] [--n 100]

Compares whatsthat's Classifier (fast path) with fastai's Learner.predict on the same images, and
measures what the out-of-class detector adds (the same Classifier with its detector set aside): for a
model whose top trained, that includes the pretrained top it runs (whatsthat.model.detector, "pretrained").
"""

from __future__ import annotations

import argparse
import time

from common import ROOT, machine, median, percentile, require_bears, table

from whatsthat.training.classifier import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "export.pkl"))
    ap.add_argument("--n", type=int, default=100, help="single-image predictions to time")
    args = ap.parse_args()

    bears = require_bears()
    files = sorted(bears.glob("*/*.jpg"))
    payloads = [f.read_bytes() for f in files]
    t0 = time.perf_counter()
    clf = load_classifier(args.model)
    load_s = time.perf_counter() - t0
    for p in payloads[:5]:  # warm-up: first calls allocate
        clf.predict(p)

    detector = clf.detector
    lat, bare = [], []  # with the detector and without it (the same calls), alternating: a change in load hits both
    for i in range(args.n):
        for use, times in ((detector, lat), (None, bare)):
            clf.detector = use
            t = time.perf_counter()
            clf.predict(payloads[i % len(payloads)])
            times.append((time.perf_counter() - t) * 1000)
    clf.detector = detector

    from fastai.vision.core import PILImage

    base = []
    with clf.learn.no_bar():
        for i in range(min(args.n, 40)):
            t = time.perf_counter()
            clf.learn.predict(PILImage.create(payloads[i % len(payloads)]))
            base.append((time.perf_counter() - t) * 1000)

    batch_rows = []
    for bs in (1, 8, 16):
        imgs = payloads[:64]
        t = time.perf_counter()
        clf.predict_many(imgs, batch_size=bs)
        batch_rows.append([f"predict_many, batch {bs}", "", "", f"{len(imgs) / (time.perf_counter() - t):.1f}"])

    layer = detector.layer if detector is not None else "none"
    print(f"# inference on {machine()}; model {args.model} ({clf.card.get('arch', '?')}, "
          f"size {clf.card.get('image_size', '?')}); load {load_s:.2f}s; out-of-class detector on {layer} features")
    print(table(
        ["path", "p50 ms", "p95 ms", "images/s"],
        [["Classifier.predict (whatsthat)", f"{median(lat):.1f}", f"{percentile(lat, 95):.1f}", f"{1000 / median(lat):.1f}"],
         ["Classifier.predict, detector set aside", f"{median(bare):.1f}", f"{percentile(bare, 95):.1f}",
          f"{1000 / median(bare):.1f}"],
         ["Learner.predict (fastai)", f"{median(base):.1f}", f"{percentile(base, 95):.1f}", f"{1000 / median(base):.1f}"],
         *batch_rows],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
