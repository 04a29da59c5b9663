"""Sub-commands of the CNN (see :mod:`service.cli`): ``train``, ``evaluate``, ``export``.

The training code lives in ``models/training`` (torch, the ``sim`` extra);
it is imported only inside the command functions, after the source tree
root (the folder holding ``models/``) is put on ``sys.path``.

Reproducing the shipped model::

    dopanode benchmark generate bench/
    dopanode train bench/ --work work/ --out models/dopanode_dat_cnn.onnx
    dopanode evaluate work/ --model models/dopanode_dat_cnn.onnx
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from service.paths import default_models_dir
from service.pipelines.dat_spect.levels import NORMAL_CV_MAX
from service.pipelines.dat_spect.plugin import MODEL_FILE

TORCH_MISSING = "torch is not installed: the training commands need pip install -e '.[sim]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``export``."""
    p = subparsers.add_parser("train", help="train, export and evaluate the CNN (needs [sim])")
    p.add_argument("bench", type=Path, help="benchmark folder with manifest.csv")
    p.add_argument("--work", type=Path, required=True, help="cache and checkpoint folder")
    p.add_argument("--out", type=Path, default=None, help=f"ONNX file (default models/{MODEL_FILE})")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=8, help="channels of the first conv block")
    p.add_argument("--seed", type=int, default=20261121)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--workers", type=int, default=2, help="processes measuring the benchmark")
    p.add_argument("--limit", type=int, default=None, help="at most this many studies per site")
    p.add_argument("--labels", choices=("gmm", "truth"), default="gmm",
                   help="gmm: per-site GMM labels on measured SBR (one camera per site); "
                        "truth: the simulator's truth levels (mixed-appearance benchmarks)")
    p.add_argument("--mirror-channel", action="store_true",
                   help="second input channel: the crop minus its left/right mirror image")
    p.add_argument("--one-sided-weight", type=float, default=1.0,
                   help="loss weight of scans with a one-sided putamen loss (others 1)")
    p.add_argument("--contrast-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="augmentation: specific binding scaled by a factor uniform in "
                        "[LO, HI] (default 0.75 1.33)")
    p.add_argument("--warp-max", type=float, default=0.0, metavar="VOX",
                   help="augmentation: a smooth random displacement field (striatal shape) "
                        "with amplitude uniform in [0, VOX] voxels (default 0: off)")
    p.add_argument("--keep-splits", type=Path, default=None, metavar="INDEX_CSV",
                   help="studies in this earlier index.csv keep their split; only new "
                        "anatomy groups are split (compare with that model fairly)")
    p.add_argument("--new-groups-split", choices=("train", "val", "test"), default=None,
                   help="with --keep-splits: every new anatomy group goes to this split "
                        "(e.g. val: a larger validation split for a model choice)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="paper-format evaluation of an ONNX model")
    p.add_argument("work", type=Path, help="work folder of 'dopanode train'")
    p.add_argument("--model", type=Path, default=None, help=f"default models/{MODEL_FILE}")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("robustness", help="sensitivity/specificity per data set of CNN "
                              "models and the SBR path (e.g. on 'benchmark robustness' output)")
    p.add_argument("bench", type=Path, help="folder with manifest.csv")
    p.add_argument("--work", type=Path, required=True, help="cache folder (measured once)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="an ONNX model to rate with (repeatable; default: the shipped one)")
    p.add_argument("--workers", type=int, default=2, help="processes measuring the studies")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    p.add_argument("--cases", type=Path, default=None, metavar="CSV",
                   help="also write one row per rated scan here: each method's call and "
                        "levels, the SBRs and the putamen ratio (which scans are missed)")
    p.add_argument("--site-normals", type=Path, default=None, metavar="NORMALS",
                   help="the variants' normals ('dopanode benchmark robustness NORMALS "
                        "--normals'): also score the SBR path and the verdicts with each "
                        "variant's own thresholds built from them (a calibrated site)")
    p.add_argument("--site-cv-max", type=float, default=NORMAL_CV_MAX, metavar="CV",
                   help="with --site-normals: cap on the normals' SD as a fraction of their "
                        "mean, as 'dopanode label --normal-cv-max' (default %(default)s)")
    p.add_argument("--site-rule", choices=("mixture", "scaled"), default="mixture",
                   help="with --site-normals: 'mixture' fits thresholds to the normals (as "
                        "'dopanode label --max-components 1'); 'scaled' multiplies the shipped "
                        "thresholds by the normals' recovery factors (measured, not adopted: "
                        "models/training/rules/dat30_site_scaled_shipped.md)")
    p.add_argument("--splits", type=Path, default=None, metavar="INDEX_CSV",
                   help="a training's index.csv: rate only its validation and test studies, "
                        "one row per split (the node's verdict on a model's own held-out scans)")
    p.set_defaults(func=cmd_robustness)

    p = subparsers.add_parser("heldout-v1", help="generate the benchmark-1 test groups the "
                              "shipped version-1 CNN held out (first N per site)")
    p.add_argument("out", type=Path)
    p.add_argument("--per-site", type=int, default=8, help="anatomy groups (4 scans) per site")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_heldout_v1)

    p = subparsers.add_parser("export", help="export a checkpoint to ONNX, check parity")
    p.add_argument("work", type=Path, help="work folder with checkpoint.pt and the cache")
    p.add_argument("--out", type=Path, default=None, help=f"default models/{MODEL_FILE}")
    p.set_defaults(func=cmd_export)


def _training(module: str) -> ModuleType:
    """Import ``models.training.<module>`` from the source tree, or exit clearly."""
    root = default_models_dir().parent
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        raise SystemExit(TORCH_MISSING) from exc
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"models.training.{module}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"training code not found under {root}/models/training: "
                         "run from a source checkout") from exc


def _model_path(path: Path | None) -> Path:
    return path or default_models_dir() / MODEL_FILE


def cmd_train(args: argparse.Namespace) -> int:
    workflow = _training("workflow")
    train = _training("train")
    config = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, width=args.width,
                               seed=args.seed, threads=args.threads, device=args.device,
                               mirror_channel=args.mirror_channel,
                               one_sided_weight=args.one_sided_weight)
    if args.contrast_range is not None:
        lo, hi = args.contrast_range
        if not 0 < lo <= hi:
            raise SystemExit(f"--contrast-range needs 0 < LO <= HI, got {lo} {hi}")
        config = replace(config, augment=replace(config.augment, scale_range=(lo, hi)))
    if args.warp_max < 0:
        raise SystemExit(f"--warp-max needs VOX >= 0, got {args.warp_max}")
    config = replace(config, augment=replace(config.augment, warp_max_vox=args.warp_max))
    out = _model_path(args.out)
    keep = None
    if args.new_groups_split is not None and args.keep_splits is None:
        raise SystemExit("--new-groups-split needs --keep-splits")
    if args.keep_splits is not None:
        data = _training("data")
        keep = data.read_splits(args.keep_splits)
        if args.new_groups_split is not None:
            keep = data.extend_splits(data.read_manifest(args.bench), keep,
                                      args.new_groups_split)
    summary = workflow.run_train(args.bench, args.work, out, config, args.workers, args.limit,
                                 label_source=args.labels, keep_splits=keep)
    print(f"model {out} sha256 {summary['sha256']}")
    print(f"parity max abs diff {summary['parity']['max_abs_diff']:.2e} "
          f"over {summary['parity']['n_scans']} scans")
    print(f"trained {summary['n_train']} scans in {summary['train_seconds']:.0f} s, "
          f"best epoch {summary['best_epoch']}; card {out.with_suffix('.card.md')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.errors import AnalysisError

    workflow = _training("workflow")
    try:
        report = workflow.evaluate_model(args.work, _model_path(args.model), args.threads)
    except AnalysisError as exc:
        raise SystemExit(f"cannot evaluate: {exc.reason}") from exc
    print(report["table"])
    for group in workflow.GROUPS:
        if group in report:
            print(f"{group}: {report[group]['ms_per_scan']:.1f} ms per scan (onnxruntime)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    train = _training("train")
    export = _training("export")
    data = _training("data")
    from service.imaging.atlas import load_atlas
    from service.pipelines.dat_spect.preprocess import contract_for_atlas

    net, ckpt = train.load_checkpoint(args.work / "checkpoint.pt")
    out = _model_path(args.out)
    sha = export.export_onnx(net, contract_for_atlas(load_atlas()), out, {
        "dopanode_model_name": out.stem, "dopanode_seed": str(ckpt["config"]["seed"]),
        "dopanode_training_sites": ",".join(ckpt.get("training_sites", [])),
        "dopanode_best_epoch": str(ckpt["best_epoch"])})
    ts = data.load_training_set(args.work)
    held_out = ts.subset(np.isin(ts.column("split"), ["test", "test_unseen"]))
    parity = export.check_parity(net, out, held_out.x[:100])
    print(f"model {out} sha256 {sha}")
    print(f"parity max abs diff {parity.max_abs_diff:.2e} over {parity.n_scans} scans: "
          f"{'ok' if parity.ok else 'FAILED'}")
    return 0 if parity.ok else 1


def _named_models(specs: list[str]) -> dict[str, Path]:
    if not specs:
        return {"shipped": _model_path(None)}
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model wants NAME=PATH, not {spec!r}")
        out[name] = Path(path)
    return out


def cmd_robustness(args: argparse.Namespace) -> int:
    robustness = _training("robustness")
    splits = None if args.splits is None else _training("data").read_splits(args.splits)
    result = robustness.evaluate_folder(args.bench, args.work, _named_models(args.model),
                                        args.workers, args.site_normals, splits,
                                        site_cv_max=args.site_cv_max,
                                        site_rule=args.site_rule)
    print(result["markdown"])
    print(f"studies not measured: {result['n_failed']} (see {args.work / 'failures.csv'})")
    cases = result.pop("cases")
    if args.cases:
        robustness.write_case_rows(cases, args.cases)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_heldout_v1(args: argparse.Namespace) -> int:
    robustness = _training("robustness")
    print(f"manifest {robustness.generate_v1_heldout(args.out, args.per_site, args.workers)}")
    return 0
