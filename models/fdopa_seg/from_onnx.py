"""Training weights from an exported U-Net, for fine-tuning when its checkpoint is gone.

The export (:func:`models.fdopa_seg.export.export_onnx`, eval mode) folds each
batch norm into the convolution before it: ``W' = W g / s`` and
``b' = beta - m g / s`` (``g``, ``beta`` the norm's weight and bias, ``m``,
``s`` its running mean and standard deviation). The ONNX file keeps only
``W'`` and ``b'``, so the norm's own parameters cannot be recovered; but a
network that computes exactly the same function in eval mode can be, with
norms whose batch statistics in training mode are close to their running ones:

1. each folded convolution gets ``W'`` (no bias, as in the network) and the
   norm after it the identity plus ``b'`` (running mean 0, variance 1 - eps,
   weight 1, bias ``b'``): the eval-mode output equals the ONNX model's;
2. on training patches (:func:`models.fdopa_seg.augment.make_patch`, the
   default augmentation, seeded) the per-channel mean ``mu`` and variance
   ``v`` of each convolution's output are measured in eval mode (every layer
   then sees exactly its input in the exported model);
3. each norm becomes running mean ``mu``, running variance ``v``, weight
   ``sqrt(v + eps)``, bias ``mu + b'``: in eval mode
   ``(x - mu) / sqrt(v + eps) * sqrt(v + eps) + mu + b' = x + b'`` (the same
   function again), and in training mode a batch whose statistics are near
   ``mu``, ``v`` is normalised as before.

``python -m models.fdopa_seg.from_onnx --model models/dopanode_fdopa_seg.onnx
--data CACHE [--data CACHE] --out INIT.pt`` writes ``{"net": state_dict,
"config": {"width": ...}, "source_sha256": ...}`` for ``train --init``, and
prints the largest eval-mode difference to onnxruntime on a few boxes
(refused above :data:`models.fdopa_seg.export.PARITY_TOLERANCE`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.fdopa_seg.augment import AugmentConfig, make_patch
from models.fdopa_seg.network import UNet3d

#: Patches whose statistics calibrate the norms (batches of 2, as in training).
CALIBRATION_PATCHES = 100


def _conv_norm_pairs(net: UNet3d) -> list[tuple[nn.Module, nn.BatchNorm3d | None]]:
    """Every convolution in execution order, with the batch norm right after it (or None)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.no_grad():
        net.eval()(torch.zeros((1, 1, 8 * 2, 8 * 2, 8 * 2)))
    for h in hooks:
        h.remove()
    follows: dict[int, nn.BatchNorm3d] = {}
    for block in net.modules():
        if isinstance(block, nn.Sequential):
            items = list(block)
            for a, b in zip(items, items[1:], strict=False):
                if isinstance(b, nn.BatchNorm3d):
                    follows[id(a)] = b
    return [(m, follows.get(id(m))) for m in order]


def _onnx_convs(path: Path) -> list[tuple[np.ndarray, np.ndarray | None]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            bias = init[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            out.append((init[node.input[1]], bias))
    return out


def unfold(path: Path, width: int) -> tuple[UNet3d, list[tuple[nn.BatchNorm3d, torch.Tensor]]]:
    """Step 1: the network with the ONNX weights and identity-plus-bias norms (eval-exact).

    Returns the network and, per norm, the folded bias ``b'`` it carries.
    """
    net = UNet3d(width)
    pairs = _conv_norm_pairs(net)
    convs = _onnx_convs(path)
    if len(convs) != len(pairs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the width-{width} U-Net has "
                         f"{len(pairs)}")
    folded = []
    with torch.no_grad():
        for (module, norm), (weight, bias) in zip(pairs, convs, strict=True):
            w = torch.from_numpy(np.array(weight))
            if tuple(w.shape) != tuple(module.weight.shape):
                raise ValueError(f"{path}: weight {tuple(w.shape)} where the U-Net has "
                                 f"{tuple(module.weight.shape)}")
            module.weight.copy_(w)
            b = torch.zeros(w.shape[1] if isinstance(module, nn.ConvTranspose3d) else w.shape[0])
            if bias is not None:
                b = torch.from_numpy(np.array(bias))
            if norm is None:
                if module.bias is None:
                    raise ValueError(f"{path}: a bias for a convolution without one")
                module.bias.copy_(b)
                continue
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(b)
            folded.append((norm, b.clone()))
    return net.eval(), folded


def calibrate(net: UNet3d, folded: Sequence[tuple[nn.BatchNorm3d, torch.Tensor]],
              images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
              n_patches: int = CALIBRATION_PATCHES, seed: int = 0) -> None:
    """Steps 2-3: norms with the measured statistics of their inputs, same eval function."""
    sums = {id(n): [torch.zeros(b.shape, dtype=torch.float64),
                    torch.zeros(b.shape, dtype=torch.float64), 0] for n, b in folded}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _o: torch.Tensor) -> None:
        x = inputs[0].double()
        acc = sums[id(mod)]
        acc[0] += x.sum(dim=(0, 2, 3, 4))
        acc[1] += (x * x).sum(dim=(0, 2, 3, 4))
        acc[2] += x.numel() // x.shape[1]

    hooks = [norm.register_forward_hook(hook) for norm, _ in folded]
    gen = torch.Generator().manual_seed(seed)
    config = AugmentConfig()
    with torch.no_grad():
        for i in range(0, n_patches, 2):
            batch = [make_patch(images[(i + k) % len(images)], targets[(i + k) % len(images)],
                                config, gen)[0] for k in range(2)]
            net.eval()(torch.stack(batch))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for norm, b in folded:
            s1, s2, n = sums[id(norm)]
            mean = (s1 / n).float()
            var = torch.clamp((s2 / n - (s1 / n) ** 2).float(), min=1e-8)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean + b)


def main(argv: list[str] | None = None) -> None:
    from models.fdopa_seg.caches import open_caches
    from models.fdopa_seg.data import load_samples, sample_ids
    from models.fdopa_seg.export import PARITY_TOLERANCE, check_parity, synthetic_boxes

    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.from_onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="filled sample cache(s): their first training samples calibrate")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--samples", type=int, default=12, help="training samples per cache")
    a = p.parse_args(argv)
    net, folded = unfold(a.model, a.width)
    samples = []
    for cache in open_caches(a.data):
        samples += load_samples(cache.path, cache.ids(sample_ids("train"))[:a.samples], 1)
    before = check_parity(net, a.model, synthetic_boxes(1, 0))
    calibrate(net, folded, [s.image_zyx for s in samples], [s.target_zyx for s in samples])
    after = check_parity(net, a.model, synthetic_boxes(2, 1))
    if max(before, after) > PARITY_TOLERANCE:
        raise SystemExit(f"eval-mode difference to the ONNX model {max(before, after):.1e}")
    sha = hashlib.sha256(a.model.read_bytes()).hexdigest()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": net.state_dict(), "config": {"width": a.width},
                "source_sha256": sha}, a.out)
    print(json.dumps({"out": str(a.out), "source_sha256": sha, "samples": len(samples),
                      "parity_unfolded": before, "parity_calibrated": after}))


if __name__ == "__main__":
    main()
