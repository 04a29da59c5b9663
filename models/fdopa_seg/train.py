"""Train the FDOPA tumour U-Net: resumable, seeded, one command.

::

    python -m models.fdopa_seg.train --out .cache/fdopa_seg/run1 \\
        --data .cache/fdopa_seg/data --steps 4000 --workers 2 --threads 2 \\
        --export models/dopanode_fdopa_seg.onnx

makes the missing training samples (:mod:`models.fdopa_seg.data`), trains
(AdamW, warm-up then cosine learning rate, loss soft Dice + binary
cross-entropy on patches, :mod:`models.fdopa_seg.augment`), validates on
whole boxes every ``--val-every`` steps (Dice of the PET-active tumour at
probability >= 0.5) and keeps the best step in ``<out>/best.pt``. Every
``--checkpoint-every`` steps ``<out>/checkpoint.pt`` holds the network,
optimiser, step and every random state: the same command continues where a
stopped run ended. ``<out>/history.jsonl`` has one line per validation.

More than one head anatomy: ``--data`` once per anatomy's cache, e.g.
``--data .cache/fdopa_seg/data_dk --data .cache/fdopa_seg/data_syn``
(:mod:`models.fdopa_seg.caches`; each cache is checked against its
own ``anatomy.txt``, only the caches of this process's anatomy are filled
here, the others must be complete). Training patches come from the union;
validation is reported per anatomy (``val_by_anatomy`` in the history) and in
total, the total being the mean over the anatomies (:func:`combine`), so that
one anatomy with more studies cannot dominate the choice of the best step.
With one ``--data`` the records are as before.

Reproducibility: the seed fixes the weight initialisation (torch's global
generator), patch sampling and augmentation (a ``torch.Generator``). On CPU
with the same thread count a rerun gives the same weights (checked by the
unit test); torch's deterministic mode is off because its CPU conv3d path is
about ten times slower.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from models.fdopa_seg.augment import AugmentConfig, make_patch
from models.fdopa_seg.caches import (
    anatomy_fields,
    check_validation,
    open_caches,
    prepare_caches,
)
from models.fdopa_seg.data import Sample, load_samples, sample_ids
from models.fdopa_seg.network import UNet3d

log = logging.getLogger(__name__)

DEFAULT_SEED = 20261130
DEFAULT_DATA = Path(".cache/fdopa_seg/data")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    width: int = 8
    seed: int = DEFAULT_SEED
    threads: int = 2
    checkpoint_every: int = 250
    val_every: int = 250
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Transfer learning: weights to start from (a ``best.pt`` or ``checkpoint.pt``).
    init: str | None = None
    #: Encoder levels (``net.down[:k]``) whose weights and batch-norm statistics stay fixed.
    freeze_encoder_levels: int = 0
    #: Learning-rate factor of the encoder levels that are not frozen.
    encoder_lr_factor: float = 1.0
    #: Largest gradient norm (``None``: not clipped, as run1 and run2).
    grad_clip: float | None = None
    #: Batches of training patches that re-estimate the batch-norm statistics before
    #: each validation (0: the running averages of training are kept, as run1 and run2).
    precise_bn_batches: int = 0
    #: ``"dice_bce"`` (:func:`loss_fn`, run1-run4) or ``"tversky_bce"`` (:func:`tversky_loss`).
    loss: str = "dice_bce"
    #: Weight of the missed voxels in the Tversky index (that of false positives: 1 - beta).
    tversky_beta: float = 0.7


LOSSES = ("dice_bce", "tversky_bce")


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (over the whole batch, smoothed by 1 voxel)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - dice)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Binary cross-entropy + (1 - Tversky index) per patch, averaged over the batch.

    Tversky index ``(TP + 1) / (TP + (1 - beta) FP + beta FN + 1)`` of each
    patch on its own: the batch-wide soft Dice of :func:`loss_fn` is ruled by
    the largest tumour in the batch, so a faint small lesion missed whole costs
    almost nothing; per patch and with ``beta > 0.5`` a missed lesion costs
    its patch's whole index (recall before precision).
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, prob.dim()))
    tp = (prob * target).sum(dims)
    fp = (prob * (1 - target)).sum(dims)
    fn = ((1 - prob) * target).sum(dims)
    index = (tp + 1) / (tp + (1 - beta) * fp + beta * fn + 1)
    return bce + (1 - index).mean()


def training_loss(config: TrainConfig, logits: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """The loss ``config.loss`` names."""
    if config.loss == "dice_bce":
        return loss_fn(logits, target)
    if config.loss == "tversky_bce":
        return tversky_loss(logits, target, config.tversky_beta)
    raise ValueError(f"unknown loss {config.loss!r} (one of {', '.join(LOSSES)})")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def predict_box(net: UNet3d, image_zyx: np.ndarray) -> np.ndarray:
    """Probability ``(D, H, W)`` float32 of one whole box (eval mode, no gradient)."""
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(image_zyx, np.float32))[None, None]
        return torch.sigmoid(net(x))[0, 0].numpy()


def validate(net: UNet3d | Callable[[np.ndarray], np.ndarray],
             samples: list[Sample]) -> dict[str, float]:
    """Mean and median Dice over the samples with a tumour; false-positive mL without one.

    ``net``: the network, or any box-probability function (an exported model's
    ``predict_box``), judged by the same rule (cut 0.5).
    """
    predict = (lambda image: predict_box(net, image)) if isinstance(net, UNet3d) else net
    dices, fp_ml = [], []
    for s in samples:
        pred = predict(s.image_zyx) >= 0.5
        truth = s.target_zyx.astype(bool)
        if truth.any():
            dices.append(dice(pred, truth))
        else:
            fp_ml.append(float(pred.sum()) * 0.008)  # 2 mm voxels: 8 uL each
    return {"val_dice_mean": float(np.mean(dices)) if dices else float("nan"),
            "val_dice_median": float(np.median(dices)) if dices else float("nan"),
            "val_n_tumour": len(dices),
            "val_fp_ml_no_tumour": float(np.mean(fp_ml)) if fp_ml else 0.0}


def combine(per_anatomy: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The total of per-anatomy validation records (:func:`validate`).

    Dice mean, Dice median and false-positive mL are the means over the
    anatomies (each anatomy weighs the same, whatever its number of studies;
    a NaN of one anatomy makes the total NaN); ``val_n_tumour`` is the sum.
    """
    records = list(per_anatomy.values())
    out: dict[str, float] = {
        key: float(np.mean([r[key] for r in records]))
        for key in ("val_dice_mean", "val_dice_median", "val_fp_ml_no_tumour")}
    out["val_n_tumour"] = int(sum(r["val_n_tumour"] for r in records))
    return out


def validate_sets(net: UNet3d, sets: Mapping[str, list[Sample]]) -> dict[str, Any]:
    """:func:`validate` of one set, or of each anatomy's set with their :func:`combine`d
    total and ``val_by_anatomy`` (the per-anatomy records)."""
    per = {name: validate(net, samples) for name, samples in sets.items()}
    if len(per) == 1:
        return next(iter(per.values()))
    return {**combine(per), "val_by_anatomy": per}


def recompute_batch_norm(net: UNet3d, samples: list[Sample], config: TrainConfig,
                         step: int) -> None:
    """Re-estimate the batch-norm statistics of the layers in training mode ("precise BN").

    With batches of two tumour-biased patches the running averages (momentum
    0.1) follow the last few batches, so the whole-box validation, the best
    step and the export depend on which patches came last (run2's validation
    Dice jumped between 0.0 and 0.65 from one check to the next). Here the
    statistics become the plain average over ``config.precise_bn_batches``
    batches drawn as in training, from a generator seeded by ``seed + step``
    (so a resumed run repeats them). Frozen levels (transfer learning) keep theirs.
    """
    layers = [m for m in net.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if config.precise_bn_batches <= 0 or not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen = torch.Generator().manual_seed(config.seed + step)
    with torch.no_grad():
        for _ in range(config.precise_bn_batches):
            net(_batch(samples, config, gen)[0])
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + np.cos(np.pi * min(t, 1.0)))


def _optimiser(net: UNet3d, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; with transfer learning the frozen levels are left out and the other
    encoder levels get ``encoder_lr_factor`` (one parameter group otherwise, as before)."""
    k = config.freeze_encoder_levels
    if not 0 <= k <= net.levels:
        raise ValueError(f"freeze_encoder_levels must lie in 0..{net.levels}, got {k}")
    if k == 0 and config.encoder_lr_factor == 1.0:
        return torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    for block in net.down[:k]:
        block.requires_grad_(False)
    encoder = [p for block in net.down[k:] for p in block.parameters()]
    ids = {id(p) for block in net.down for p in block.parameters()}
    rest = [p for p in net.parameters() if id(p) not in ids]
    groups = [{"params": encoder, "lr_factor": config.encoder_lr_factor},
              {"params": rest, "lr_factor": 1.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                             weight_decay=config.weight_decay)


def set_train_mode(net: UNet3d, config: TrainConfig) -> None:
    """Training mode, except the frozen encoder levels (their batch-norm statistics stay)."""
    net.train()
    for block in net.down[:config.freeze_encoder_levels]:
        block.eval()


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _batch(samples: list[Sample], config: TrainConfig,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    picks = torch.randint(len(samples), (config.batch_size,), generator=gen).tolist()
    pairs = [make_patch(samples[i].image_zyx, samples[i].target_zyx, config.augment, gen)
             for i in picks]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def train(config: TrainConfig, train_set: list[Sample],
          val_set: list[Sample] | Mapping[str, list[Sample]], out: Path) -> dict[str, Any]:
    """Train (or continue) into ``out``; returns the best validation record.

    ``val_set``: one list, or one list per anatomy (:func:`validate_sets`; the
    best step is the one with the best total Dice mean).
    """
    val_sets = val_set if isinstance(val_set, Mapping) else {"all": val_set}
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    # not torch.use_deterministic_algorithms: on CPU it routes conv3d to a path ~10x
    # slower (measured); CPU kernels with a fixed thread count repeat bit for bit
    # (tests/unit/test_fdopa_seg_training.py checks it)
    net = UNet3d(config.width)
    if config.init is not None:
        net.load_state_dict(torch.load(config.init, weights_only=False)["net"])
    opt = _optimiser(net, config)
    gen = torch.Generator().manual_seed(config.seed)
    step, best = 0, {"step": -1, "val_dice_mean": -1.0}
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, best = state["step"], state["best"]
        log.info("resumed at step %d", step)
    set_train_mode(net, config)
    t0, losses = time.monotonic(), []
    while step < config.steps:
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, step) * group.get("lr_factor", 1.0)
        x, y = _batch(train_set, config, gen)
        loss = training_loss(config, net(x), y)
        opt.zero_grad()
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log.info("step %d loss %.4f", step, float(np.mean(losses[-50:])))
        if step % config.val_every == 0 or step == config.steps:
            recompute_batch_norm(net, train_set, config, step)
            record = {"step": step, "loss": float(np.mean(losses)),
                      "seconds": round(time.monotonic() - t0, 1), **validate_sets(net, val_sets)}
            set_train_mode(net, config)
            losses = []
            with (out / "history.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("%s", record)
            if record["val_dice_mean"] > best["val_dice_mean"]:
                best = record
                _save({"net": net.state_dict(), "record": record, "config": asdict(config)},
                       out / "best.pt")
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save({"net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                   "step": step, "best": best, "config": asdict(config)}, ckpt)
    return best


def loss_text(config: TrainConfig) -> str:
    """The loss as the model card states it."""
    if config.loss == "tversky_bce":
        return (f"binary cross-entropy + (1 - Tversky index) per patch (missed voxels weigh "
                f"{config.tversky_beta:g}, false positives {1 - config.tversky_beta:g})")
    return "binary cross-entropy + soft Dice"


def optimiser_text(config: TrainConfig) -> str:
    """The optimisation settings as the model card states them."""
    text = (f"AdamW (lr {config.learning_rate:g}, weight decay {config.weight_decay:g}, "
            f"warm-up {config.warmup_steps} steps, cosine)")
    if config.init is not None:
        text += f", started from the weights of {config.init}"
    if config.grad_clip is not None:
        text += f", gradient norm clipped at {config.grad_clip:g}"
    if config.precise_bn_batches:
        text += (f", batch-norm statistics re-estimated on {config.precise_bn_batches} "
                 "training batches before each validation")
    return text


def load_net(path: Path) -> tuple[UNet3d, dict[str, Any]]:
    """The network of a ``best.pt`` or ``checkpoint.pt`` and the saved state."""
    state = torch.load(path, weights_only=False)
    net = UNet3d(int(state["config"]["width"]))
    net.load_state_dict(state["net"])
    return net.eval(), state


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
    p.add_argument("--data", type=Path, action="append", default=None,
                   help=f"sample cache of one anatomy; repeat for more anatomies "
                        f"(default {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--width", type=int, default=TrainConfig.width)
    p.add_argument("--lr", type=float, default=TrainConfig.learning_rate, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup_steps,
                   help="warm-up steps of the learning rate")
    p.add_argument("--grad-clip", type=float, default=None, help="largest gradient norm")
    p.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss)
    p.add_argument("--tversky-beta", type=float, default=TrainConfig.tversky_beta,
                   help="weight of missed voxels in the Tversky loss")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a best.pt or checkpoint.pt; fine-tuning)")
    p.add_argument("--precise-bn", type=int, default=0, metavar="BATCHES",
                   help="re-estimate batch-norm statistics on BATCHES batches before validation")
    p.add_argument("--bias-field", type=float, default=AugmentConfig.bias_field_max,
                   metavar="A", help="augmentation: smooth multiplicative bias field up to "
                                     "exp(+-A) (0: none, as run1-run5)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="simulation workers")
    p.add_argument("--limit", type=int, default=None, help="first N studies per site and split")
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument("--val-every", type=int, default=TrainConfig.val_every)
    p.add_argument("--export", type=Path, default=None, help="ONNX path for the best step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    a = _args(argv)
    config = TrainConfig(steps=a.steps, width=a.width, seed=a.seed, threads=a.threads,
                         checkpoint_every=a.checkpoint_every, val_every=a.val_every,
                         learning_rate=a.lr, grad_clip=a.grad_clip,
                         precise_bn_batches=a.precise_bn, warmup_steps=a.warmup,
                         loss=a.loss, tversky_beta=a.tversky_beta,
                         init=None if a.init is None else str(a.init),
                         augment=AugmentConfig(bias_field_max=a.bias_field))
    t0 = time.monotonic()
    caches = open_caches(a.data or [DEFAULT_DATA])
    ids = {s: sample_ids(s, limit=a.limit) for s in ("train", "val")}
    prepare_caches(caches, ids["val"] + ids["train"], a.workers, a.limit)
    train_set, val_sets = [], {}
    for cache in caches:
        train_set += load_samples(cache.path, cache.ids(ids["train"]), a.workers)
        val_sets[cache.anatomy] = load_samples(cache.path, cache.ids(ids["val"]), a.workers)
        log.info("%s (%s): %d train, %d val", cache.path, cache.anatomy, len(ids["train"]),
                 len(ids["val"]))
    log.info("samples ready (%.0f s)", time.monotonic() - t0)
    check_validation(val_sets)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "command.json").write_text(json.dumps({
        "limit_arg": f"--limit {a.limit} " if a.limit else "",
        **anatomy_fields(caches, ids["train"], ids["val"]),
        "train_command": " ".join(["python -m models.fdopa_seg.train", *(argv or sys.argv[1:])]),
        "optimiser": optimiser_text(config), "loss": loss_text(config)}) + "\n")
    best = train(config, train_set, val_sets, a.out)
    log.info("best: %s", best)
    if a.export is not None:
        from models.fdopa_seg.export import export_run

        export_run(a.out, a.export, {"command_seconds": f"{time.monotonic() - t0:.0f} s"})


if __name__ == "__main__":
    main()
