"""Train the FLAIR tumour U-Net with transfer learning: the three arms of the ablation.

::

    python -m models.flair_seg.train --out .cache/flairnet/run1 \\
        --data .cache/flairnet/data --adult-limit 12 --paediatric-limit 5 \\
        --pretrain-steps 600 --finetune-steps 600 --freeze-encoder-levels 1 \\
        --encoder-lr-factor 0.1 --threads 1 --export models/dopanode_flair_seg.onnx

makes the missing samples (:mod:`models.flair_seg.data`) and trains, with
the PET U-Net's network, augmentation and trainer
(:func:`models.fdopa_seg.train.train`: AdamW, warm-up + cosine, soft Dice +
BCE on patches, best validation step kept, resumable checkpoints):

* ``adult``: from scratch on the adult training studies (pre-training; the
  paper's BraTS step), best step by the adult validation Dice. Served
  unchanged, it is the "adult model without fine-tuning" arm;
* ``scratch``: from scratch on the SMALL paediatric training subset only;
* ``finetune``: from ``adult/best.pt`` on the same paediatric subset, the
  first ``--freeze-encoder-levels`` encoder levels frozen (weights and
  batch-norm statistics) and the other encoder levels at
  ``--encoder-lr-factor`` x the learning rate (the paper freezes the first
  *k* blocks).

The paediatric arms pick their best step by the paediatric validation Dice.
Each arm lives in ``<out>/<arm>/`` (``checkpoint.pt``, ``best.pt``,
``history.jsonl``) and is exported to ``<out>/<arm>/model.onnx``; stopped,
the same command continues every arm where it ended. ``--export`` copies the
arm with the best paediatric validation Dice (never the test split) to the
shipped path with its card. ``--arms`` runs a subset (e.g. ``adult,scratch``
in one process and ``finetune`` later).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.fdopa_seg.augment import AugmentConfig
from models.fdopa_seg.data import Sample
from models.fdopa_seg.train import DEFAULT_SEED, TrainConfig, load_net, train, validate
from models.flair_seg.data import extra_val_ids, flair_sample_ids, generate, load_samples

log = logging.getLogger(__name__)

ARMS = ("adult", "scratch", "finetune")
#: Patches smaller than the PET model's 64^3: the FLAIR box is the same size, the CPU is shared.
FLAIR_AUGMENT = AugmentConfig(patch_zyx=(48, 48, 48))


def arm_configs(base: TrainConfig, pretrain_steps: int, finetune_steps: int, out: Path,
                freeze_levels: int, encoder_lr_factor: float,
                finetune_lr: float) -> dict[str, TrainConfig]:
    """The training configuration of each arm (module docstring)."""
    return {
        "adult": replace(base, steps=pretrain_steps),
        "scratch": replace(base, steps=finetune_steps),
        "finetune": replace(base, steps=finetune_steps, init=str(out / "adult" / "best.pt"),
                            freeze_encoder_levels=freeze_levels,
                            encoder_lr_factor=encoder_lr_factor, learning_rate=finetune_lr,
                            warmup_steps=min(base.warmup_steps, max(1, finetune_steps // 10))),
    }


def run_arms(arms: list[str], configs: dict[str, TrainConfig], sets: dict[str, list[Sample]],
             out: Path) -> dict[str, dict[str, Any]]:
    """Train ``arms`` in order into ``out/<arm>``; their paediatric validation records."""
    records = {}
    for arm in arms:
        train_set = sets["adult_train"] if arm == "adult" else sets["paediatric_train"]
        val_set = sets["adult_val"] if arm == "adult" else sets["paediatric_val"]
        log.info("arm %s: %d training, %d validation samples", arm, len(train_set), len(val_set))
        train(configs[arm], train_set, val_set, out / arm)
        records[arm] = paediatric_record(out / arm, sets["paediatric_val"])
    return records


def paediatric_record(run: Path, paediatric_val: list[Sample]) -> dict[str, Any]:
    """The best step of ``run`` validated on the paediatric validation studies."""
    net, state = load_net(run / "best.pt")
    return {"step": state["record"]["step"], **validate(net, paediatric_val)}


def record_command(out: Path, arms: list[str], argv: list[str], counts: dict[str, int]) -> None:
    """Add the arms' command and sample counts to ``<out>/command.json`` (for the card)."""
    path = out / "command.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    runs = record.get("runs", {})
    for arm in arms:
        group = "adult" if arm == "adult" else "paediatric"
        runs[arm] = {"argv": argv, "n_train": counts[f"{group}_train"],
                     "n_val": counts[f"{group}_val"]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # arms may run in parallel
    tmp.write_text(json.dumps({"runs": runs}) + "\n")
    os.replace(tmp, path)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.flair_seg.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (one sub-folder per arm)")
    p.add_argument("--data", type=Path, default=Path(".cache/flairnet/data"))
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    p.add_argument("--adult-limit", type=int, default=12, help="adult training studies per site")
    p.add_argument("--paediatric-limit", type=int, default=5,
                   help="paediatric training studies per site (the small fine-tuning subset)")
    p.add_argument("--adult-val-limit", type=int, default=4, help="adult validation per site")
    p.add_argument("--extra-paediatric-val", type=int, default=0,
                   help="paediatric validation studies per site beyond the benchmark's last "
                        "index, added to its validation split (a steadier choice of step)")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=600)
    p.add_argument("--freeze-encoder-levels", type=int, default=1)
    p.add_argument("--encoder-lr-factor", type=float, default=0.1)
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="simulation and loading workers")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--export", type=Path, default=None,
                   help="ONNX path for the arm with the best paediatric validation Dice")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a = _args(argv)
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    if unknown := [x for x in arms if x not in ARMS]:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    t0 = time.monotonic()
    ids = {"paediatric_val": flair_sample_ids("val", True)
           + extra_val_ids(a.extra_paediatric_val),
           "paediatric_train": flair_sample_ids("train", True, limit=a.paediatric_limit),
           "adult_val": flair_sample_ids("val", False, limit=a.adult_val_limit),
           "adult_train": flair_sample_ids("train", False, limit=a.adult_limit)}
    if "adult" not in arms:
        ids["adult_train"] = ids["adult_val"] = []
    generate(a.data, [s for v in ids.values() for s in v], a.workers)
    sets = {k: load_samples(a.data, v, a.workers) for k, v in ids.items()}
    log.info("samples ready (%.0f s): %s", time.monotonic() - t0,
             {k: len(v) for k, v in sets.items()})
    base = TrainConfig(width=a.width, seed=a.seed, threads=a.threads,
                       checkpoint_every=a.checkpoint_every, val_every=a.val_every,
                       augment=FLAIR_AUGMENT)
    configs = arm_configs(base, a.pretrain_steps, a.finetune_steps, a.out,
                          a.freeze_encoder_levels, a.encoder_lr_factor, a.finetune_lr)
    a.out.mkdir(parents=True, exist_ok=True)
    record_command(a.out, arms, argv if argv is not None else sys.argv[1:],
                   {k: len(v) for k, v in ids.items()})
    records = run_arms(arms, configs, sets, a.out)
    log.info("paediatric validation of the arms: %s", records)
    from models.flair_seg.export import export_arms

    export_arms(a.out, sets["paediatric_val"], a.export,
                {"command_seconds": f"{time.monotonic() - t0:.0f} s"})


if __name__ == "__main__":
    main()
