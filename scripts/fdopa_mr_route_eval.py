"""The MR-guided FDOPA route on simulated studies: route, FLAIR-guided T/S and T/N against truth.

Usage::

    python scripts/fdopa_mr_route_eval.py STUDY_DIR [STUDY_DIR ...]

Each STUDY_DIR is a simulated FDOPA study (``PT_STATIC``, ``MR_FLAIR``,
optionally ``PT_DYNAMIC``; ``truth.json``). Runs the pipeline's analysis
(threshold-only PET segmentation, which the MR-guided route does not use;
the classical FLAIR lesion unless ``models/dopanode_flair_seg.onnx`` exists)
and prints per study: the route and its reason, whether the low-uptake
fallback fired, the FLAIR-guided T/S and T/N beside the simulator's truth
(``t_s``, ``t_n``: the truth's own reference definitions, see
docs/fdopa_simulator.md) and the PET-only route's lesion count (0: a lesion
the PET-only route missed). Evaluation only. The evaluation on the held-out
studies beside the paper, with its truth and statistics, is
``dopanode fdopa evaluate-mr`` (docs/fdopa_flair_route.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pydicom

from service.pipelines.fdopa_pet.analysis import AnalysisOptions, analyse_study
from service.pipelines.fdopa_pet.flair_lesion import flair_segmenter
from service.pipelines.fdopa_pet.pipeline import algorithm_info
from service.pipelines.fdopa_pet.reference import load_fdopa_template


def _series(folder: Path) -> list[pydicom.Dataset] | None:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))] if folder.is_dir() else None


def main(argv: list[str]) -> int:
    template = load_fdopa_template(None)
    flair = flair_segmenter("auto")
    print(f"FLAIR lesion: {flair.description}")
    for arg in argv:
        folder = Path(arg)
        truth = json.loads((folder / "truth.json").read_text())
        static = _series(folder / "PT_STATIC")
        assert static is not None
        result = analyse_study(static, _series(folder / "PT_DYNAMIC"), template, None,
                               algorithm_info(template, None), AnalysisOptions(), {},
                               flair=_series(folder / "MR_FLAIR"), flair_segmenter=flair)
        g = result.flair_guided
        ratios = ("   -" if g is None else
                  f"T/S {g.ts_ratio:5.2f} (truth {truth.get('t_s', float('nan')):5.2f}) "
                  f"T/N {g.tn_ratio:5.2f} (truth {truth.get('t_n', float('nan')):5.2f}) "
                  f"{'PET VOI' if g.pet_voi else 'fallback'}")
        print(f"{folder.name:16s} {truth.get('tumour_class', ''):16s} "
              f"PET-only lesions {len(result.lesions)}; {result.route.reason}; {ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
