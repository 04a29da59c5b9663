"""ONNX export of the FLAIR U-Net arms, the choice of the shipped arm, its card.

The graph, opset, checksum sidecar and parity check are the PET U-Net's
(:mod:`models.fdopa_seg.export`) with the FLAIR contract
(:data:`service.pipelines.fdopa_pet.flair_segment.CONTRACT`) under its own
metadata key; parity runs through the node's serving class
(:class:`service.pipelines.fdopa_pet.flair_segment.FlairSegmenter`).

``python -m models.flair_seg.export --run .cache/flairnet/run1 --data
.cache/flairnet/data --out models/dopanode_flair_seg.onnx`` exports every
arm's best step so far (also while training runs), and the arm with the best
PAEDIATRIC VALIDATION Dice to ``--out`` with its card.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from models.fdopa_seg.data import Sample
from models.fdopa_seg.export import (
    PARITY_TOLERANCE,
    check_parity,
    export_onnx,
    synthetic_boxes,
    write_card,
)
from models.fdopa_seg.network import UNet3d, n_parameters
from models.fdopa_seg.train import load_net, validate
from service.pipelines.fdopa_pet.flair_segment import (
    CONTRACT,
    CONTRACT_METADATA_KEY,
    FlairSegmenter,
)

CARD_TEMPLATE = Path(__file__).with_name("CARD_TEMPLATE.md")
ARMS_FILE = "arms.json"
#: Marker lines around the ablation table in the card (filled by ``evaluate --card``).
TABLE_BEGIN, TABLE_END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def export_flair_onnx(net: UNet3d, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``net`` as the FLAIR model (contract in the metadata); returns the SHA-256.

    Raises
    ------
    ValueError
        When torch and onnxruntime (through :class:`FlairSegmenter`) differ by
        :data:`models.fdopa_seg.export.PARITY_TOLERANCE` or more.
    """
    sha = export_onnx(net, path, CONTRACT, {
        "dopanode_use": "research use only, not for diagnosis; trained on simulated data",
        "dopanode_label": "FLAIR whole tumour (lesion, necrosis and oedema)",
        **(metadata or {})}, contract_key=CONTRACT_METADATA_KEY)
    parity = check_parity(net, path, synthetic_boxes(2, 7, CONTRACT), FlairSegmenter(path))
    if parity >= PARITY_TOLERANCE:
        raise ValueError(f"torch/onnxruntime parity {parity:.2e} >= {PARITY_TOLERANCE}")
    return sha


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def export_arm(run: Path, paediatric_val: list[Sample]) -> dict[str, Any]:
    """Export the best step of one arm to ``<run>/model.onnx``; its record."""
    net, state = load_net(run / "best.pt")
    record = state["record"]
    sha = export_flair_onnx(net, run / "model.onnx", {"dopanode_training": json.dumps(
        {"arm": run.name, "seed": state["config"]["seed"], "step": record["step"]})})
    history = _history(run)
    return {"arm": run.name, "step": record["step"], "steps_done": history[-1]["step"],
            "steps_planned": state["config"]["steps"], "own_val": record, "sha256": sha,
            "paediatric_val": validate(net, paediatric_val) if paediatric_val else {},
            "parameters": n_parameters(net), "config": state["config"]}


def export_arms(out: Path, paediatric_val: list[Sample], shipped: Path | None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export every arm of ``out`` that has a best step; ship the best paediatric one.

    Writes ``<out>/arms.json``. With ``shipped``, the arm with the highest
    paediatric validation Dice mean is exported there with its card.
    """
    arms = {run.name: export_arm(run, paediatric_val)
            for run in sorted(out.iterdir()) if (run / "best.pt").exists()}
    summary = {"arms": arms, **(extra or {})}
    if shipped is not None and arms:
        best = max(arms.values(), key=lambda r: r["paediatric_val"].get("val_dice_mean", -1.0))
        net, _ = load_net(out / best["arm"] / "best.pt")
        sha = export_flair_onnx(net, shipped, {"dopanode_training": json.dumps(
            {"arm": best["arm"], "seed": best["config"]["seed"], "step": best["step"]})})
        summary["shipped"] = {"arm": best["arm"], "path": str(shipped), "sha256": sha}
        write_flair_card(shipped, best, out, summary)
    (out / ARMS_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def write_flair_card(shipped: Path, best: dict[str, Any], out: Path,
                     summary: dict[str, Any]) -> None:
    """The model card beside ``shipped`` (keeps an ablation table already in it)."""
    card = shipped.with_suffix(".card.md")
    old = card.read_text() if card.exists() else ""
    table = (old[old.index(TABLE_BEGIN) + len(TABLE_BEGIN):old.index(TABLE_END)].strip()
             if TABLE_BEGIN in old and TABLE_END in old else
             "Not run yet: `python -m models.flair_seg.evaluate` (README).")
    runs = json.loads((out / "command.json").read_text()).get("runs", {}) \
        if (out / "command.json").exists() else {}
    commands = sorted({" ".join(r["argv"]) for r in runs.values()})
    counts = {arm: f"{r['n_train']} training, {r['n_val']} validation" for arm, r in runs.items()}
    rows = "\n".join(
        f"| {r['arm']} | {r['step']} of {r['steps_done']} done ({r['steps_planned']} planned) "
        f"| {_f(r['own_val'].get('val_dice_mean'))} | "
        f"{_f(r['paediatric_val'].get('val_dice_mean'))} | "
        f"{_f(r['paediatric_val'].get('val_dice_median'))} |"
        for r in summary["arms"].values())
    done = all(r["steps_done"] >= r["steps_planned"] for r in summary["arms"].values())
    write_card(card, {
        "name": shipped.stem, "sha256": summary["shipped"]["sha256"],
        "size_mb": f"{shipped.stat().st_size / 1e6:.1f}", "parameters": best["parameters"],
        "contract": CONTRACT.to_json(), "arm": best["arm"], "seed": best["config"]["seed"],
        "width": best["config"]["width"], "arm_rows": rows,
        "status": "Final: every arm ran its planned steps." if done else
                  "PRELIMINARY: exported before every arm had run its planned steps; "
                  "the training command resumes them.",
        "command": "\n".join("python -m models.flair_seg.train " + c for c in commands),
        "counts": json.dumps(counts), "table": TABLE_BEGIN + "\n" + table + "\n"
        + TABLE_END, "command_seconds": summary.get("command_seconds", "?")},
        template=CARD_TEMPLATE)


def onnx_validation(path: Path, paediatric_val: list[Sample],
                    mirror: bool = False) -> dict[str, float]:
    """An exported model's paediatric validation record through the serving class, by the
    rule of :func:`models.fdopa_seg.train.validate`: compares a model shipped before with a
    new run's arms on the same studies; ``mirror``: with the left-right mirror test-time
    augmentation (:func:`service.pipelines.fdopa_pet.segment.mirrored_probability`)."""
    return validate(partial(FlairSegmenter(path).predict, mirror=mirror), paediatric_val)


def _f(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def main(argv: list[str] | None = None) -> None:
    from models.flair_seg.data import extra_val_ids, flair_sample_ids, load_samples

    p = argparse.ArgumentParser(prog="python -m models.flair_seg.export")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path(".cache/flairnet/data"))
    p.add_argument("--out", type=Path, default=None, help="shipped ONNX path (best arm)")
    p.add_argument("--extra-paediatric-val", type=int, default=0,
                   help="as given to the training command")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=ONNX",
                   help="only print these exported models' paediatric validation Dice")
    p.add_argument("--mirror", action="store_true",
                   help="with --compare: also with the left-right mirror test-time "
                        "augmentation (the choice of flair_segment.MIRROR_TTA)")
    a = p.parse_args(argv)
    val = load_samples(a.data, flair_sample_ids("val", True)
                       + extra_val_ids(a.extra_paediatric_val))
    if a.compare:
        for spec in a.compare:
            name, _, path = spec.partition("=")
            print(name, json.dumps(onnx_validation(Path(path), val)))
            if a.mirror:
                print(f"{name}+mirror", json.dumps(onnx_validation(Path(path), val, True)))
        return
    summary = export_arms(a.run, val, a.out,
                          {"command_seconds": "not measured (exported separately)"})
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "config"}
                      for k, v in summary["arms"].items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
