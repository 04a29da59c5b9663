"""What ``dopanode train``, ``evaluate`` and ``export`` do, step by step.

``train``: measure the benchmark with the pipeline (cached), label each site
by GMM, split by anatomy group, train, export to ONNX with its checksum,
check torch/onnxruntime parity on up to :data:`PARITY_SCANS` test scans,
evaluate through the node's own onnxruntime session, write the model card.
"""

from __future__ import annotations

import json
import logging
import string
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.training.data import (
    MeasureFn,
    TrainingSet,
    build,
    load_training_set,
    measure_study,
)
from models.training.evaluate import (
    carried_calibration,
    format_table,
    group_report,
    reference_metrics,
    sbr_levels,
    truth_reduced,
)
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.preprocess import PreprocessContract, contract_for_atlas

log = logging.getLogger(__name__)

PARITY_SCANS = 100
CARD_TEMPLATE = Path(__file__).with_name("MODEL_CARD_TEMPLATE.md")
GROUPS = {"in_distribution": "test", "unseen": "test_unseen"}


def cnn_predictions(session: Any, x: np.ndarray, batch_size: int = 16
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Levels ``(N, 4)``, reduced ``(N,)``, inconclusive ``(N,)``, unsure regions
    ``(N, 4)`` and ms per scan."""
    from service.pipelines.dat_spect.cnn import rate_scan

    levels, reduced, unsure, region_unsure = [], [], [], []
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        probs_b, global_b = session.outputs(np.ascontiguousarray(x[i:i + batch_size]))
        for j, probs in enumerate(probs_b):
            pred = rate_scan(probs, None if global_b is None else float(global_b[j]))
            levels.append([int(r.level) for r in pred.regions])
            reduced.append(pred.reduced)
            unsure.append(pred.inconclusive)
            region_unsure.append([r.unsure for r in pred.regions])
    ms = 1000.0 * (time.perf_counter() - start) / max(len(x), 1)
    return (np.array(levels, np.int64), np.array(reduced), np.array(unsure),
            np.array(region_unsure, bool).reshape(-1, 4), ms)


def _site_thresholds(work_dir: Path, site: str) -> dict[str, list[float]]:
    data = json.loads((work_dir / "labels" / site / "calibration.json").read_text())
    return {k: [float(v) for v in vals] for k, vals in data["thresholds"].items()}


def baseline_levels(ts: TrainingSet, work_dir: Path) -> np.ndarray:
    """Conventional levels with thresholds carried over from another camera."""
    sites = ts.column("site")
    in_dist = sorted({r["site"] for r in ts.rows if r["role"] != "unseen"})
    out = np.zeros_like(ts.levels)
    for site in sorted(set(sites)):
        mask = sites == site
        donor = carried_calibration(site, in_dist)
        out[mask] = sbr_levels(ts.sbr[mask], _site_thresholds(work_dir, donor))
    return out


def evaluate_model(work_dir: Path, model_path: Path, intra_op_threads: int = 1
                   ) -> dict[str, Any]:
    """Paper-format report of the ONNX model and the carried-over SBR baseline."""
    from service.pipelines.dat_spect.cnn import CnnSession

    session = CnnSession(model_path, intra_op_threads=intra_op_threads)
    ts = load_training_set(work_dir)
    report: dict[str, Any] = {"model": model_path.name, "sha256": session.sha256}
    base_all = baseline_levels(ts, work_dir)
    for group, split in GROUPS.items():
        mask = ts.column("split") == split
        if not mask.any():
            continue
        sub = ts.subset(mask)
        truth = truth_reduced(sub.column("disease_class").tolist())
        levels, reduced, unsure, region_unsure, ms = cnn_predictions(session, sub.x)
        base = base_all[mask]
        refs = [r.get("binary_reference", "") for r in sub.rows]
        base_reduced = (base >= 2).any(axis=1)
        report[group] = {
            "cnn": {**group_report(sub.levels, levels, truth, reduced, unsure, region_unsure),
                    **reference_metrics(refs, reduced, unsure)},
            "sbr_carried": {**group_report(sub.levels, base, truth, base_reduced, None),
                            **reference_metrics(refs, base_reduced)},
            "ms_per_scan": ms,
        }
    report["table"] = format_table({g: v for g, v in report.items() if g in GROUPS})
    return report


def ceilings(bench_dir: Path, ts: TrainingSet) -> dict[str, float]:
    """:func:`binary_ceiling` per evaluation group from the benchmark's manifest."""
    import csv

    from models.training.evaluate import binary_ceiling

    with (bench_dir / "manifest.csv").open(newline="") as f:
        truth = {row["study_id"]: row for row in csv.DictReader(f)}
    out = {}
    for group, split in GROUPS.items():
        rows = [r for r in ts.rows if r["split"] == split]
        if rows and all("true_br_putamen_left" in truth.get(r["study_id"], {}) for r in rows):
            binding = np.array([min(float(truth[r["study_id"]]["true_br_putamen_left"]),
                                    float(truth[r["study_id"]]["true_br_putamen_right"]))
                                for r in rows])
            out[group] = binary_ceiling(
                binding, truth_reduced([r["disease_class"] for r in rows]))
    return out


def write_card(out_model: Path, fields: dict[str, str]) -> Path:
    """Fill :data:`CARD_TEMPLATE` into ``<model>.card.md``."""
    text = string.Template(CARD_TEMPLATE.read_text()).substitute(fields)
    path = out_model.with_suffix(".card.md")
    path.write_text(text)
    return path


def run_train(bench_dir: Path, work_dir: Path, out_model: Path, config: Any,
              workers: int = 1, limit_per_site: int | None = None,
              measure_fn: MeasureFn = measure_study, label_source: str = "gmm",
              keep_splits: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole ``dopanode train`` (see module docstring); returns the summary.

    ``measure_fn`` turns a study's series folder into the arrays to cache; the
    default runs the pipeline (tests pass a synthetic one). ``label_source``:
    ``"gmm"`` or ``"truth"`` (:mod:`models.training.data`).
    """
    from models.training.export import check_parity, write_json

    start = time.perf_counter()
    ts = build(bench_dir, work_dir, config.seed, workers, limit_per_site, measure_fn,
               label_source, keep_splits)
    contract = contract_for_atlas(load_atlas())
    summary = train_export(ts, contract, work_dir, out_model, config, label_source)
    held_out = ts.subset(np.isin(ts.column("split"), list(GROUPS.values())))
    parity = check_parity(_net(work_dir), out_model, held_out.x[:PARITY_SCANS])
    summary["parity"] = parity.to_dict()
    if not parity.ok:
        raise SystemExit(f"torch/onnxruntime parity failed: {parity.max_abs_diff:.2e}")
    report = evaluate_model(work_dir, out_model)
    report["binary_ceiling"] = ceilings(bench_dir, load_training_set(work_dir))
    write_json(out_model.with_suffix(".evaluation.json"), report)
    thresholds = {site.name: json.loads((site / "calibration.json").read_text())
                  for site in sorted((work_dir / "labels").iterdir())}
    write_json(out_model.with_suffix(".labels.json"), thresholds)
    summary["total_seconds"] = time.perf_counter() - start
    write_card(out_model, _card_fields(out_model, summary, report, config))
    return summary


def _net(work_dir: Path) -> Any:
    from models.training.train import load_checkpoint

    return load_checkpoint(work_dir / "checkpoint.pt")[0]


def midline_box_index(contract: PreprocessContract, atlas: Any) -> float:
    """Box column (x index, may be fractional) of the MNI midline x = 0 mm."""
    column = (0.0 - float(atlas.origin_lps_mm[0])) / float(atlas.spacing_mm[0])
    return column - contract.box_start_zyx[2]


def scan_targets(ts: TrainingSet, label_source: str) -> np.ndarray:
    """The global head's target per scan, ``(N,)`` bool.

    GMM labels: the simulated disease class (PD or atypical = reduced). Truth
    labels: any region at truth level 2 or worse, the same rule that makes
    the served verdict consistent with its regional table
    (:func:`service.pipelines.dat_spect.cnn.rate_scan`).
    """
    if label_source == "truth":
        return np.asarray((ts.levels >= 2).any(axis=1))
    return truth_reduced(ts.column("disease_class").tolist())


def train_export(ts: TrainingSet, contract: PreprocessContract, work_dir: Path,
                 out_model: Path, config: Any, label_source: str = "gmm") -> dict[str, Any]:
    """Train on the ``train`` split (best epoch on ``val``), save, export; summary dict."""
    from models.training.export import export_onnx
    from models.training.train import save_checkpoint, train

    if ts.x.shape[1:] != contract.input_shape:
        raise SystemExit(f"cached inputs {ts.x.shape[1:]} do not match the contract "
                         f"{contract.input_shape}: clear {work_dir / 'cache'}")
    if config.augment.mirror_x_vox is None:  # flip about the brain's midline, not the box's
        config = replace(config, augment=replace(
            config.augment, mirror_x_vox=midline_box_index(contract, load_atlas())))
    split = ts.column("split")
    tr, va = ts.subset(split == "train"), ts.subset(split == "val")
    result = train(tr.x, tr.levels, scan_targets(tr, label_source),
                   va.x, va.levels, scan_targets(va, label_source), config)
    sites = sorted({r["site"] for r in tr.rows})
    save_checkpoint(result, config, work_dir / "checkpoint.pt",
                    {"training_sites": sites, "label_source": label_source})
    sha = export_onnx(result.net, contract, out_model, {
        "dopanode_model_name": out_model.stem, "dopanode_seed": str(config.seed),
        "dopanode_training_sites": ",".join(sites), "dopanode_best_epoch": str(result.best_epoch),
        "dopanode_label_source": label_source,
        "dopanode_mirror_channel": str(result.net.mirror_x_vox is not None).lower(),
    })
    return {"sha256": sha, "n_train": len(tr.x), "n_val": len(va.x), "sites": sites,
            "label_source": label_source,
            "best_epoch": result.best_epoch, "train_seconds": result.seconds,
            "history": result.history, "config": asdict(config)}


LABEL_TEXT = {
    "gmm": ("Labels: per-site Gaussian-mixture thresholds on the measured SBRs "
            "(`service/pipelines/dat_spect/levels.py`; thresholds in `{name}.labels.json`), as in "
            "Buddenkotte et al. 2025.",
            "simulated PD or atypical parkinsonism = reduced",
            "Labels are the GMM thresholds of each dataset: the model learns those thresholds, "
            "including their arbitrariness at level boundaries."),
    "truth": ("Labels come from the SIMULATED TRUTH, not from a reader: per region the "
              "remaining fraction of the subject's own binding without disease, cut at 80 / 65 "
              "/ 45 / 25 % into levels 0-4 (`service.sim.reference.truth_levels`). Per-site GMM "
              "labels do not suit a benchmark whose every subject has its own appearance and, "
              "on the broad site, its own camera.",
              "any region at truth level 2 or worse = reduced, the rule that keeps the served "
              "verdict consistent with the regional table",
              "Labels are the simulator's truth: the model learns what the simulator calls a "
              "loss; a reader's visual grading of real scans was never its target."),
}
AUGMENT_TEXT = (
    "augmentation for camera and appearance independence: left/right flip about the MNI "
    "midline with the labels swapped, pose jitter (scale +-8 %, rotation +-6 deg, shift +-2 "
    "voxels), resolution blur (sigma up to 1.6 voxels), intensity nonlinearity (gamma "
    "0.87-1.15), reference mis-estimate (0.9-1.1), intensity scale ({lo:g}-{hi:g}), a smooth "
    "background field and Poisson-like noise{warp}")
WARP_TEXT = (", and a smooth random displacement field (striatal shape and size) of "
             "amplitude up to {vox:g} x the 2 mm voxel")


def augment_text(config: Any) -> str:
    """:data:`AUGMENT_TEXT` with the intensity-scale range and shape term of ``config.augment``."""
    lo, hi = config.augment.scale_range
    vox = config.augment.warp_max_vox
    return AUGMENT_TEXT.format(lo=lo, hi=hi, warp=WARP_TEXT.format(vox=vox) if vox > 0 else "")


def augment_flags(config: Any) -> str:
    """`` --contrast-range LO HI`` / `` --warp-max VOX`` where not the default ("" otherwise)."""
    from models.training.augment import AugmentConfig

    lo, hi = config.augment.scale_range
    vox = config.augment.warp_max_vox
    return (("" if (lo, hi) == AugmentConfig().scale_range else f" --contrast-range {lo:g} {hi:g}")
            + (f" --warp-max {vox:g}" if vox > 0 else ""))

MIRROR_TEXT = (
    "; a second input channel, the crop minus its left/right mirror image about the MNI "
    "midline, so a one-sided loss is a signed difference the first convolution sees (the "
    "mirror is part of the graph: the model's input is still the one-channel crop)")
WEIGHT_TEXT = (" Scans with a one-sided putamen loss (a putamen at level 2 or worse, the other "
               "at 0-1) weigh {weight:g} times the others in both losses.")


def _card_fields(out_model: Path, summary: dict[str, Any], report: dict[str, Any],
                 config: Any) -> dict[str, str]:
    source = summary.get("label_source", "gmm")
    labels, global_text, limit = LABEL_TEXT[source]
    mirror = bool(getattr(config, "mirror_channel", False))
    weight = float(getattr(config, "one_sided_weight", 1.0))
    return {
        "mirror_text": MIRROR_TEXT if mirror else "",
        "weight_text": "" if weight == 1.0 else WEIGHT_TEXT.format(weight=weight),
        "train_flags": (" --mirror-channel" if mirror else "")
        + ("" if weight == 1.0 else f" --one-sided-weight {weight:g}") + augment_flags(config),
        "labels_text": labels.replace("{name}", out_model.stem), "global_text": global_text,
        "labels_limit": limit, "label_source": source, "augment_text": augment_text(config),
        "name": out_model.stem, "sha256": summary["sha256"],
        "sites": ", ".join(summary["sites"]), "n_train": str(summary["n_train"]),
        "n_val": str(summary["n_val"]), "seed": str(config.seed), "epochs": str(config.epochs),
        "best_epoch": str(summary["best_epoch"]),
        "train_minutes": f"{summary['train_seconds'] / 60:.1f}",
        "total_minutes": f"{summary['total_seconds'] / 60:.1f}", "device": config.device,
        "parity": f"{summary['parity']['max_abs_diff']:.2e} over {summary['parity']['n_scans']} scans",
        "table": report["table"],
        "ceiling": ", ".join(f"{g}: {v:.1%}" for g, v in report["binary_ceiling"].items())
        or "not computed (the manifest has no true binding ratios)",
        "ms_per_scan": ", ".join(f"{g}: {report[g]['ms_per_scan']:.1f} ms"
                                 for g in GROUPS if g in report),
    }
