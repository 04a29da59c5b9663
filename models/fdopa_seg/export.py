"""ONNX export of the FDOPA tumour U-Net, its checksum, parity check and model card.

The exported graph is :class:`models.fdopa_seg.network.ProbabilityModel`:
input ``volume`` ``(batch, 1, D, H, W)`` float32 (the contract's box),
output ``probability`` ``(batch, 1, D, H, W)`` float32, dynamic batch axis,
opset :data:`OPSET` (the repository's). The preprocessing contract
(:data:`service.pipelines.fdopa_pet.segment.CONTRACT`) goes into the model's
``metadata_props`` so the SHA-256 sidecar covers it; serving
(:class:`service.pipelines.fdopa_pet.segment.TumourSegmenter`) refuses a model
whose contract differs.

``python -m models.fdopa_seg.export --run .cache/fdopa_seg/run1 --out
models/dopanode_fdopa_seg.onnx`` exports the run's best step at any time
(also while it trains) and writes the card beside the model.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from models.fdopa_seg.augment import AugmentConfig, augment_text
from models.fdopa_seg.network import ProbabilityModel, UNet3d, n_parameters
from models.training.export import finish_onnx
from service.pipelines.fdopa_pet.segment import (
    CONTRACT,
    CONTRACT_METADATA_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
)

OPSET = 17
#: Largest accepted |torch - onnxruntime| of the probability.
PARITY_TOLERANCE = 1e-4
CARD_TEMPLATE = Path(__file__).with_name("CARD_TEMPLATE.md")


class ExportContract(Protocol):
    """What the export needs of a preprocessing contract (the PET's or the FLAIR's)."""

    @property
    def box_shape_zyx(self) -> tuple[int, int, int]: ...

    def to_json(self) -> str: ...


class BoxPredictor(Protocol):
    def predict_box(self, image_zyx: np.ndarray) -> np.ndarray: ...


def export_onnx(net: UNet3d, path: Path, contract: ExportContract = CONTRACT,
                metadata: dict[str, str] | None = None,
                contract_key: str = CONTRACT_METADATA_KEY) -> str:
    """Write ``net`` (with a sigmoid) as ONNX to ``path`` and its sidecar; returns the SHA-256.

    The contract goes into the metadata under ``contract_key`` (the PET
    segmenter's key unless another model, e.g. the FLAIR one, is exported).
    """
    model = ProbabilityModel(net).eval()
    dummy = torch.zeros((1, 1, *contract.box_shape_zyx), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(raw), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    props = {contract_key: contract.to_json(),
             "dopanode_use": "research use only, not for diagnosis; trained on simulated data",
             **(metadata or {})}
    return finish_onnx(raw, path, props)


def check_parity(net: UNet3d, onnx_path: Path, boxes: Sequence[np.ndarray],
                 segmenter: BoxPredictor | None = None) -> float:
    """Max |torch - onnxruntime| of the probability over ``boxes`` ((D, H, W) each).

    onnxruntime runs through the node's serving class (``segmenter``, by
    default :class:`service.pipelines.fdopa_pet.segment.TumourSegmenter` of
    ``onnx_path``): checksum and contract checks included.
    """
    from service.pipelines.fdopa_pet.segment import TumourSegmenter

    seg = segmenter if segmenter is not None else TumourSegmenter(onnx_path)
    model = ProbabilityModel(net).eval()
    worst = 0.0
    with torch.no_grad():
        for box in boxes:
            x = torch.from_numpy(np.ascontiguousarray(box, np.float32))[None, None]
            ref = model(x)[0, 0].numpy()
            worst = max(worst, float(np.abs(ref - seg.predict_box(box)).max()))
    return worst


def synthetic_boxes(n: int, seed: int, contract: ExportContract = CONTRACT) -> list[np.ndarray]:
    """Seeded smooth random boxes (parity inputs that need no data)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return [ndimage.gaussian_filter(rng.gamma(2.0, 0.5, contract.box_shape_zyx), 2.0)
            .astype(np.float32) * 4 for _ in range(n)]


def write_card(path: Path, fields: dict[str, Any], template: Path = CARD_TEMPLATE) -> None:
    """The model card from ``template`` (``${name}`` placeholders)."""
    from string import Template

    text = Template(template.read_text()).substitute(
        {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()})
    path.write_text(text)


def export_run(run: Path, onnx_path: Path, extra: dict[str, Any] | None = None,
               card: Path | None = None) -> dict[str, Any]:
    """Export the best step of ``run``, check parity, write the card; returns the card fields."""
    from models.fdopa_seg.train import load_net, loss_text, optimiser_text

    best = run / "best.pt"
    net, state = load_net(best if best.exists() else run / "checkpoint.pt")
    record = state.get("record", {"step": state.get("step"), "val_dice_mean": float("nan")})
    config = state["config"]
    sha = export_onnx(net, onnx_path, metadata={
        "dopanode_training": json.dumps({"seed": config["seed"], "step": record["step"],
                                         "val_dice_mean": record.get("val_dice_mean")})})
    parity = check_parity(net, onnx_path, synthetic_boxes(2, config["seed"]))
    if parity >= PARITY_TOLERANCE:
        raise ValueError(f"torch/onnxruntime parity {parity:.2e} >= {PARITY_TOLERANCE}")
    command = run / "command.json"  # n_train, n_val, limit_arg of the training command
    extra = {**(json.loads(command.read_text()) if command.exists() else {}), **(extra or {})}
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()] \
        if (run / "history.jsonl").exists() else []
    done = history[-1]["step"] if history else record["step"]
    status = ("Final: the run is complete." if done >= config["steps"] else
              f"PRELIMINARY: exported at step {done} of {config['steps']} while training ran.")
    fields = {
        "status": status, "name": onnx_path.stem, "sha256": sha, "size_mb": f"{onnx_path.stat().st_size / 1e6:.1f}",
        "parameters": n_parameters(net), "width": config["width"], "seed": config["seed"],
        "steps_planned": config["steps"], "step": record["step"],
        "steps_done": done,
        "val_dice_mean": _fmt(record.get("val_dice_mean")),
        "val_dice_median": _fmt(record.get("val_dice_median")),
        "val_fp_ml": _fmt(record.get("val_fp_ml_no_tumour")),
        "val_n_tumour": record.get("val_n_tumour", "?"),
        "val_by_anatomy": by_anatomy_text(record.get("val_by_anatomy")),
        "parity": f"{parity:.1e}", "contract": CONTRACT.to_json(),
        "history": "\n".join(f"| {h['step']} | {h['loss']:.3f} | {h['val_dice_mean']:.3f} | "
                             f"{h['val_dice_median']:.3f} | {h['val_fp_ml_no_tumour']:.2f} |"
                             for h in history),
        "limit_arg": "", "n_train": "?", "n_val": "?", "command_seconds": "?",
        "anatomy": "synthetic", "anatomy_scope": "one head anatomy", "truth_version": "1", "optimiser": optimiser_text(_config(config)),
        "loss": loss_text(_config(config)),
        "augmentation": augment_text(_config(config).augment),
        "train_command": RUN1_COMMAND, **extra,
    }
    write_card(card or onnx_path.with_suffix(".card.md"), fields)
    return fields


#: The command of the runs made before ``command.json`` recorded it (run1).
RUN1_COMMAND = ("python -m models.fdopa_seg.train --out .cache/fdopa_seg/run1 \\\n"
                "    --data .cache/fdopa_seg/data --limit 64 --steps 4000 --workers 2 --threads 2 \\\n"
                "    --export models/dopanode_fdopa_seg.onnx")


def _config(saved: dict[str, Any]) -> Any:
    """The saved training configuration as a ``TrainConfig`` (fields it lacks: defaults)."""
    from dataclasses import fields

    from models.fdopa_seg.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)} - {"augment"}
    kept = {f.name for f in fields(AugmentConfig)}
    augment = {k: tuple(v) if isinstance(v, list) else v
               for k, v in (saved.get("augment") or {}).items() if k in kept}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names},
                       augment=AugmentConfig(**augment))


def by_anatomy_text(per_anatomy: dict[str, dict[str, Any]] | None) -> str:
    """The card's sentence on the per-anatomy validation ("" for one anatomy)."""
    if not per_anatomy:
        return ""
    parts = [f"{name} Dice mean {_fmt(r['val_dice_mean'])}, median {_fmt(r['val_dice_median'])} "
             f"({r['val_n_tumour']} with a tumour), false positives {_fmt(r['val_fp_ml_no_tumour'])} mL"
             for name, r in per_anatomy.items()]
    return (" Per anatomy (the figures above are their means, and the best step was chosen "
            "on that mean): " + "; ".join(parts) + ".")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.export")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("models/dopanode_fdopa_seg.onnx"))
    p.add_argument("--command-seconds", default="not measured (exported while training ran)")
    a = p.parse_args(argv)
    fields = export_run(a.run, a.out, {"command_seconds": a.command_seconds})
    print(json.dumps({k: v for k, v in fields.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
