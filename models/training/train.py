"""The training loop: fixed seed, AdamW, cosine schedule, best epoch on validation.

Reproducibility: the seed fixes torch's global generator (weight
initialisation, dropout), the batch order (``numpy`` generator) and the
augmentation (``torch.Generator``); ``torch.use_deterministic_algorithms``
is on. On CPU with the same thread count a rerun gives the same weights.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.training.augment import AugmentConfig, augment, swap_sides
from models.training.network import (
    StriatumNet,
    global_loss,
    one_sided,
    ordinal_loss,
    predicted_levels,
)

log = logging.getLogger(__name__)

#: Weight of the global head's loss beside the ordinal loss (mean of 16 binary tasks).
GLOBAL_WEIGHT = 0.25


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 24
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 8
    dropout: float = 0.3
    seed: int = 20261121
    threads: int = 2
    device: str = "cpu"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Add the mirror-difference input channel (:class:`~models.training.network.StriatumNet`;
    #: mirrored about ``augment.mirror_x_vox``).
    mirror_channel: bool = False
    #: Loss weight of a scan with a one-sided putamen loss (:func:`~models.training.network.one_sided`)
    #: against 1 for every other scan.
    one_sided_weight: float = 1.0


@dataclass
class TrainResult:
    """The trained network (best validation epoch) and the per-epoch history."""

    net: StriatumNet
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float


@contextmanager
def seeded_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, fix its thread count and deterministic mode; restore both afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # warn_only: some CUDA backward kernels (max-pool) have no deterministic version
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_num_threads(before[2])


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def evaluate_loss(net: StriatumNet, x: np.ndarray, levels: np.ndarray, reduced: np.ndarray,
                  batch_size: int, device: str) -> tuple[float, float, float]:
    """Mean loss (ordinal + global), pooled 5-level accuracy, global accuracy (eval mode)."""
    net.eval()
    losses, correct, correct_global = [], 0, 0
    with torch.no_grad():
        for idx in _batches(len(x), batch_size, None):
            xb = torch.from_numpy(x[idx]).to(device)
            yb = torch.from_numpy(levels[idx]).to(device)
            gb = torch.from_numpy(reduced[idx]).to(device)
            logits, global_logit = net.forward_all(xb)
            loss = ordinal_loss(logits, yb) + GLOBAL_WEIGHT * global_loss(global_logit, gb)
            losses.append(float(loss) * len(idx))
            correct += int((predicted_levels(logits) == yb).sum())
            correct_global += int(((global_logit > 0) == gb).sum())
    return sum(losses) / len(x), correct / levels.size, correct_global / len(x)


def train(x_train: np.ndarray, y_train: np.ndarray, r_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, r_val: np.ndarray,
          config: TrainConfig) -> TrainResult:
    """Train a :class:`StriatumNet` on ``(N, 1, D, H, W)`` inputs, ``(N, 4)`` levels
    and ``(N,)`` scan-level truths (*reduced*, bool).

    The returned network holds the weights of the epoch with the lowest
    validation loss (the last epoch when ``x_val`` is empty).
    """
    if config.epochs < 1 or len(x_train) < 2:
        raise ValueError("training needs at least one epoch and two training scans")
    with seeded_torch(config.seed, config.threads):
        return _train(x_train, y_train, r_train.astype(np.float32), x_val, y_val,
                      r_val.astype(np.float32), config)


def scan_weights(levels: torch.Tensor, one_sided_weight: float) -> torch.Tensor | None:
    """``(N,)`` loss weights: ``one_sided_weight`` for one-sided scans, 1 otherwise (None: all 1)."""
    if one_sided_weight == 1.0:
        return None
    return 1.0 + (one_sided_weight - 1.0) * one_sided(levels).float()


def build_net(input_shape_zyx: tuple[int, ...], config: TrainConfig) -> StriatumNet:
    """The untrained network of ``config`` (mirror channel about ``augment.mirror_x_vox``)."""
    mirror = None
    if config.mirror_channel:
        width = int(input_shape_zyx[2])
        mirror = ((width - 1) / 2.0 if config.augment.mirror_x_vox is None
                  else config.augment.mirror_x_vox)
    shape = (int(input_shape_zyx[0]), int(input_shape_zyx[1]), int(input_shape_zyx[2]))
    return StriatumNet(shape, config.width, config.dropout, mirror)


def _train(x_train: np.ndarray, y_train: np.ndarray, r_train: np.ndarray, x_val: np.ndarray,
           y_val: np.ndarray, r_val: np.ndarray, config: TrainConfig) -> TrainResult:
    net = build_net(tuple(x_train.shape[2:]), config).to(config.device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1))
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    start = time.perf_counter()
    for epoch in range(config.epochs):
        net.train()
        total = 0.0
        for idx in _batches(len(x_train), config.batch_size, rng):
            if len(idx) < 2:  # batch norm needs two samples
                continue
            aug = augment(torch.from_numpy(x_train[idx]), config.augment, gen)
            xb = aug.x.to(config.device)
            yb = swap_sides(torch.from_numpy(y_train[idx]), aug.flipped).to(config.device)
            gb = torch.from_numpy(r_train[idx]).to(config.device)
            logits, global_logit = net.forward_all(xb)
            wb = scan_weights(yb, config.one_sided_weight)
            loss = (ordinal_loss(logits, yb, wb)
                    + GLOBAL_WEIGHT * global_loss(global_logit, gb, wb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        sched.step()
        row = {"epoch": epoch + 1, "train_loss": total / len(x_train)}
        if len(x_val):
            row["val_loss"], row["val_accuracy"], row["val_global_accuracy"] = evaluate_loss(
                net, x_val, y_val, r_val, config.batch_size, config.device)
        history.append(row)
        log.info("epoch", extra={"fields": row})
        score = row.get("val_loss", -epoch)
        if best is None or score < best[0]:
            best = (score, epoch + 1, {k: v.detach().clone() for k, v in net.state_dict().items()})
    assert best is not None  # epochs >= 1 checked above
    net.load_state_dict(best[2])
    net.eval()
    return TrainResult(net.cpu(), history, best[1], time.perf_counter() - start)


def save_checkpoint(result: TrainResult, config: TrainConfig, path: Path,
                    extra: dict[str, Any]) -> None:
    """Weights, architecture arguments, config and history in one torch file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "state_dict": result.net.state_dict(),
        "input_shape_zyx": list(result.net.input_shape_zyx),
        "width": result.net.width,
        "mirror_x_vox": result.net.mirror_x_vox,
        "config": asdict(config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
        **extra,
    }, path)


def load_checkpoint(path: Path) -> tuple[StriatumNet, dict[str, Any]]:
    """The network (eval mode, CPU) and the checkpoint dictionary."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    mirror = ckpt.get("mirror_x_vox")
    net = StriatumNet(tuple(ckpt["input_shape_zyx"]), int(ckpt["width"]),
                      mirror_x_vox=None if mirror is None else float(mirror))
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    return net, ckpt
