"""FDOPA tumour segmentation: inference time per static PET on this CPU.

::

    python bench/fdopa_seg.py --model models/dopanode_fdopa_seg.onnx \\
        --data .cache/fdopa_seg/data --n 6

times :meth:`service.pipelines.fdopa_pet.segment.TumourSegmenter.segment`
(the node's path: preprocessing to the 2 mm box, onnxruntime with one
intra-op thread, linear resampling back onto the native grid) and its three
parts on ``--n`` cached validation studies of the three training sites
(native grids 128 x 128 x 89/90 and 256 x 256 x 65); prints median and max
seconds per study. Without ``--data`` it uses a seeded synthetic head on a
256 x 256 x 65 grid of 1.17 x 1.17 x 2.79 mm.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _volumes(data: Path | None, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if data is None:
        rng = np.random.default_rng(0)
        shape = (65, 256, 256)
        affine = np.diag([2.79, 1.17, 1.17, 1.0])
        affine[:3, 3] = [-89.0, -149.0, -149.0]
        z, y, x = np.indices(shape)
        head = ((z - 32) / 28) ** 2 + ((y - 128) / 80) ** 2 + ((x - 128) / 65) ** 2 <= 1
        return [((head * 9000.0 + rng.normal(0, 900, shape)).astype(np.float32), affine)] * n
    from models.fdopa_seg.data import sample_ids, sample_path

    out = []
    for sid in sample_ids("val")[::3][:n]:
        with np.load(sample_path(data, sid)) as d:
            out.append((d["image_zyx"], d["affine"]))
    return out


def main(argv: list[str] | None = None) -> None:
    from service.pipelines.fdopa_pet.segment import (
        DEFAULT_MODEL,
        TumourSegmenter,
        preprocess,
        to_native,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--n", type=int, default=6)
    a = p.parse_args(argv)
    seg = TumourSegmenter(a.model)
    times: dict[str, list[float]] = {"preprocess": [], "onnx": [], "inverse": [], "total": []}
    for volume, affine in _volumes(a.data, a.n):
        t0 = time.perf_counter()
        net_input = preprocess(volume, affine)
        t1 = time.perf_counter()
        prob = seg.predict_box(net_input.image_zyx)
        t2 = time.perf_counter()
        to_native(prob, net_input, volume.shape, affine)
        t3 = time.perf_counter()
        seg.segment(volume, affine)
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(dt)
    print(json.dumps({k: {"median_s": round(float(np.median(v)), 3),
                          "max_s": round(float(np.max(v)), 3)} for k, v in times.items()}))


if __name__ == "__main__":
    main()
