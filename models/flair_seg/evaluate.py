"""The transfer-learning ablation on HELD-OUT paediatric studies, beside the paper.

::

    python -m models.flair_seg.evaluate --bench .cache/flairnet/bench \\
        --run .cache/flairnet/run1 --json models/dopanode_flair_seg.ablation.json \\
        --card models/dopanode_flair_seg.card.md

reads a benchmark made by ``dopanode fdopa generate --split test`` (DICOM
``MR_FLAIR`` and ``truth_flair_seg.nii.gz`` per study), keeps the paediatric
studies with a FLAIR (test split only: a training-site study whose index is
not a multiple of 5 is refused), reads each FLAIR through the node's reader
(:func:`service.imaging.mr_volume.mr_volume_from_datasets`) and segments it
with every arm's ONNX model through
:class:`service.pipelines.fdopa_pet.flair_segment.FlairSegmenter` (cut 0.5)
and with the classical baseline (:mod:`models.flair_seg.baseline`). Dice of
the whole tumour (truth labels 1 and 2) on the FLAIR's native grid, over the
studies with a lesion; false-positive volume over those without. Training
sites and the unseen site are reported apart.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from models.flair_seg.baseline import baseline_box
from service.imaging.mr_volume import MrVolume, mr_volume_from_datasets
from service.pipelines.fdopa_pet.flair_segment import (
    SERVING_VARIANT,
    FlairSegmenter,
    preprocess_flair,
)
from service.pipelines.fdopa_pet.segment import to_native

PAPER = "0.82 ± 0.11"
TEST_GROUP = "test split, sites a-c"
#: The classical baseline's identity in the cached rows (bump when its rule changes).
BASELINE_ID = "baseline:v1"
UNSEEN_GROUP = "site_d_unseen (PET/MR site; same FLAIR protocols)"
#: The group of every held-out study of the run's benches together (printed when there are several).
ALL_GROUP = "all held-out studies above"
GOAL = "≥ 0.88 ± 0.08"
ARM_LABELS = {"scratch": "from scratch, paediatric subset only",
              "adult": "adult model, no fine-tuning", "finetune": "adult model fine-tuned",
              "baseline": "classical: FLAIR > 1.5 x brain level (no learning)"}


def held_out_studies(bench: Path, full: bool = False,
                     sites: tuple[str, ...] | None = None) -> list[Path]:
    """Paediatric test-split studies with a FLAIR under ``bench`` (sorted).

    ``full``: ``bench`` is a whole benchmark (``dopanode fdopa generate``
    without ``--split test``): its training-split studies are skipped; else
    one is refused (a bench of the wrong kind). ``sites``: only these sites.
    Held out (:func:`service.sim.fdopa.benchmark.is_held_out`): the test split and
    the fresh studies (``--split fresh``, beyond the benchmark).
    """
    from service.sim.fdopa.benchmark import SITES, is_held_out

    out = []
    for truth in sorted(bench.glob("*/*/truth.json")):
        if sites is not None and truth.parent.parent.name not in sites:
            continue
        row = json.loads(truth.read_text())
        if not (row.get("paediatric") and row.get("flair")):
            continue
        site, index = study_site_index(str(row["study_id"]))
        if not is_held_out(SITES[site], index):
            if full:
                continue
            raise ValueError(f"{row['study_id']} is not in the test split")
        out.append(truth.parent)
    return out


def study_site_index(study_id: str) -> tuple[str, int]:
    """``site_a_00120`` -> ``("site_a", 120)``."""
    site, index = study_id.rsplit("_", 1)
    return site, int(index)


def group_of(row: dict[str, Any]) -> str:
    """The table group of a study row: test split or fresh, training sites or the unseen one."""
    from service.sim.fdopa.benchmark import SITES, fresh_start

    name, index = study_site_index(row["study_id"])
    fresh = index >= fresh_start(SITES[name])
    if row["role"] == "unseen":
        return "site_d_unseen, fresh studies" if fresh else UNSEEN_GROUP
    return "fresh studies, sites a-c (beyond the benchmark)" if fresh else TEST_GROUP


def read_study(folder: Path) -> tuple[MrVolume, np.ndarray]:
    """The FLAIR volume (node reader) and its whole-tumour truth (bool, same grid)."""
    flair = mr_volume_from_datasets([pydicom.dcmread(p) for p in
                                     sorted((folder / "MR_FLAIR").iterdir())])
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "truth_flair_seg.nii.gz"))) > 0
    if truth.shape != flair.array_zyx.shape:
        raise ValueError(f"{folder.name}: truth {truth.shape} != FLAIR {flair.array_zyx.shape}")
    return flair, truth


def baseline_mask(flair: MrVolume) -> np.ndarray:
    """The classical baseline's mask on the FLAIR's native grid."""
    net_input = preprocess_flair(flair.array_zyx, flair.affine)
    box = baseline_box(net_input.image_zyx).astype(np.float32)
    return to_native(box, net_input, flair.array_zyx.shape, flair.affine) >= 0.5


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def evaluate(studies: list[Path], methods: dict[str, Callable[[MrVolume], np.ndarray]],
             rows_path: Path | None = None,
             identities: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per study and method: Dice, volumes (mL); cached in ``rows_path`` (JSON lines).

    ``identities``: what each method is (a model's SHA-256, :data:`BASELINE_ID`), stored
    in its rows as ``model``; a cached row of another identity (another run's arm of
    the same name) is not reused.
    """
    identities = identities or {}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if rows_path is not None and rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("model") == identities.get(r["method"]):
                done[(r["study_id"], r["method"])] = r
    rows = []
    for folder in studies:
        truth_row = json.loads((folder / "truth.json").read_text())
        todo = [m for m in methods if (folder.name, m) not in done]
        if todo:
            flair, truth = read_study(folder)
            voxel_ml = float(np.prod(flair.spacing_zyx_mm)) / 1000.0
        for name in methods:
            if (folder.name, name) not in done:
                pred = methods[name](flair)
                done[(folder.name, name)] = {
                    "study_id": folder.name, "method": name, "role": truth_row.get("role"),
                    "flair": truth_row["flair"], "tumour_class": truth_row["tumour_class"],
                    "truth_ml": float(truth.sum()) * voxel_ml,
                    "pred_ml": float(pred.sum()) * voxel_ml,
                    "dice": dice(pred, truth) if truth.any() else None,
                    "model": identities.get(name)}
                if rows_path is not None:
                    with rows_path.open("a") as f:
                        f.write(json.dumps(done[(folder.name, name)]) + "\n")
            rows.append(done[(folder.name, name)])
    return rows


def summarise(rows: list[dict[str, Any]], method: str, group: str) -> dict[str, Any]:
    """Dice mean, SD, median, IQR over the group's lesion studies; FP mL over lesion-free ones.

    ``group`` :data:`ALL_GROUP` takes every row of ``method``.
    """
    mine = [r for r in rows if r["method"] == method
            and (group == ALL_GROUP or group_of(r) == group)]
    d = np.array([r["dice"] for r in mine if r["dice"] is not None], float)
    fp = [r["pred_ml"] for r in mine if r["dice"] is None]
    out: dict[str, Any] = {"method": method, "n": int(d.size), "n_no_lesion": len(fp),
                           "fp_ml_no_lesion": float(np.mean(fp)) if fp else None}
    if d.size:
        q1, med, q3 = np.percentile(d, [25, 50, 75])
        out |= {"dice_mean": float(d.mean()), "dice_sd": float(d.std(ddof=1)) if d.size > 1
                else 0.0, "dice_median": float(med), "dice_q1": float(q1), "dice_q3": float(q3)}
    return out


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`summarise` records with the paper and the goal."""
    lines = ["| studies | method | n | Dice mean ± SD | median [IQR] | FP mL (no lesion, n) |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        dice_text = (f"{s['dice_mean']:.3f} ± {s['dice_sd']:.3f}", f"{s['dice_median']:.3f} "
                     f"[{s['dice_q1']:.3f}-{s['dice_q3']:.3f}]") if s["n"] else ("-", "-")
        fp = f"{s['fp_ml_no_lesion']:.2f} ({s['n_no_lesion']})" \
            if s["fp_ml_no_lesion"] is not None else "-"
        lines.append(f"| {s['group']} | {ARM_LABELS.get(s['method'], s['method'])} | {s['n']} | "
                     f"{dice_text[0]} | {dice_text[1]} | {fp} |")
    lines.append(f"| paper (Bianconi et al., real paediatric FLAIR) | best model | 103 patients "
                 f"| {PAPER} | | |")
    lines.append(f"| goal (issue 13) | | | {GOAL} | | |")
    return "\n".join(lines)


def protocol_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Dice mean ± SD (n) per FLAIR protocol and method, all held-out studies with a lesion."""
    protocols = sorted({r["flair"] for r in rows})
    lines = ["| method | " + " | ".join(protocols) + " |",
             "|---|" + "---|" * len(protocols)]
    for m in methods:
        cells = []
        for prot in protocols:
            d = [r["dice"] for r in rows if r["method"] == m and r["flair"] == prot
                 and r["dice"] is not None]
            sd = f" ± {np.std(d, ddof=1):.3f}" if len(d) > 1 else ""
            cells.append(f"{np.mean(d):.3f}{sd} ({len(d)})" if d else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]], a: str, b: str) -> str:
    """Mean paired Dice difference ``a - b`` over the lesion studies both segmented."""
    da = {r["study_id"]: r["dice"] for r in rows if r["method"] == a and r["dice"] is not None}
    db = {r["study_id"]: r["dice"] for r in rows if r["method"] == b and r["dice"] is not None}
    both = sorted(set(da) & set(db))
    if not both:
        return f"{a} - {b}: no common studies"
    diff = np.array([da[k] - db[k] for k in both])
    return (f"{a} - {b}: mean paired Dice difference {diff.mean():+.3f} (SD {diff.std():.3f}), "
            f"{a} higher in {int((diff > 0).sum())} of {diff.size} studies")


def put_in_card(card: Path, text: str) -> None:
    """Replace the ablation section of the card (between its markers)."""
    from models.flair_seg.export import TABLE_BEGIN, TABLE_END

    old = card.read_text()
    if TABLE_BEGIN not in old or TABLE_END not in old:
        raise ValueError(f"{card} has no ablation markers")
    head, rest = old.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    card.write_text(head + TABLE_BEGIN + "\n" + text + "\n" + TABLE_END + tail)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.flair_seg.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, action="append", required=True,
                   help="benchmark folder(s) made by 'dopanode fdopa generate --split test'")
    p.add_argument("--full-benchmark", action="store_true",
                   help="the bench(es) hold every split: skip the training-split studies")
    p.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    p.add_argument("--run", type=Path, required=True, help="training run (<arm>/model.onnx)")
    p.add_argument("--json", type=Path, default=Path("flair_ablation.json"))
    p.add_argument("--card", type=Path, default=None, help="model card to put the table in")
    p.add_argument("--note", default="", help="a line printed under the table (run state)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=ONNX",
                   help="another FLAIR model to evaluate beside the arms (e.g. the one shipped "
                        "before)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    sites = tuple(x.strip() for x in a.sites.split(",")) if a.sites else None
    studies = [s for b in a.bench for s in held_out_studies(b, a.full_benchmark, sites)]
    models: dict[str, FlairSegmenter] = {}
    for arm in ("scratch", "adult", "finetune"):
        if (a.run / arm / "model.onnx").exists():
            models[arm] = FlairSegmenter(a.run / arm / "model.onnx")
    for spec in a.extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in models or name == "baseline":
            raise SystemExit(f"--extra {spec!r}: NAME=ONNX with a new name")
        models[name] = FlairSegmenter(Path(path))
    methods: dict[str, Callable[[MrVolume], np.ndarray]] = {
        name: m.lesion_mask for name, m in models.items()}
    methods["baseline"] = baseline_mask
    # the serving default of the mirror test-time augmentation is part of what a row measured
    identities = {name: f"{m.info.model_sha256}{SERVING_VARIANT}" for name, m in models.items()}
    identities["baseline"] = BASELINE_ID
    rows = evaluate(studies, methods, a.json.with_suffix(".jsonl"), identities)
    present = {group_of(r) for r in rows}
    groups = [g for g in (TEST_GROUP, "fresh studies, sites a-c (beyond the benchmark)",
                          UNSEEN_GROUP, "site_d_unseen, fresh studies") if g in present]
    groups += [ALL_GROUP] if len(groups) > 1 else []
    summaries = [{"group": g, **summarise(rows, m, g)} for g in groups for m in methods]
    text = (table(summaries) + "\n\nDice mean ± SD (n) per FLAIR protocol, all held-out studies "
            "above:\n\n" + protocol_table(rows, list(methods)) + "\n\nPaired, all held-out "
            "studies with a lesion:\n"
            + "".join(f"\n* {paired(rows, 'finetune', m)}" for m in methods if m != "finetune"
                      and "finetune" in methods and m != "baseline")
            + (f"\n* {paired(rows, 'finetune', 'baseline')}" if "finetune" in methods else "")
            + ("\n\n" + a.note if a.note else ""))
    print(text)
    a.json.write_text(json.dumps({"summaries": summaries, "n_studies": len(studies),
                                  "benches": [str(b) for b in a.bench]}, indent=1) + "\n")
    if a.card is not None:
        put_in_card(a.card, text)


if __name__ == "__main__":
    main()
