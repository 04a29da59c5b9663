"""The MR-guided route's part of the FDOPA picture report (matplotlib, Agg, no pyplot state).

On the MR-guided route (a :class:`FdopaResult` whose ``flair_guided.flair``
is set) the top row of the picture (:mod:`.render`) shows, left to right:

* the FLAIR, axial, on its own grid through the FLAIR lesion's centroid,
  the lesion outlined in yellow (what the FLAIR segmenter found);
* the fusion: the static PET (hot colour map, SUVbw, same scale as the PET
  panel) shown only above the contralateral white-matter maximum (the VOI's
  threshold; the FLAIR shows through elsewhere) over the FLAIR registered
  onto the PET grid, axial
  through the FLAIR-guided PET VOI's centroid, the VOI outlined in magenta
  and the FLAIR lesion carried onto the PET dashed yellow;
* the PET alone in the same plane with the PET-only (PET RANO) outlines of
  :mod:`.render`, so the two definitions are seen side by side.

The headline gives the paediatric FLAIR-guided T/S and T/N first (named so),
the curves panel the FLAIR-guided VOI's curves. Radiological convention,
near-axial acquisitions assumed (as :mod:`.render`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from service.pipelines.fdopa_pet import render as rd
from service.pipelines.fdopa_pet.result import FdopaResult, FlairGuidedMeasures, FlairImage

FLAIR_COLOUR = "#ffd600"
VOI_COLOUR = "#ff00ff"
ROUTE_LEGEND = ("Yellow: FLAIR lesion (dashed: carried onto the PET). Magenta: FLAIR-guided PET "
                "VOI. Right: red PET RANO lesions, green background, cyan striatum, orange WM")


def is_mr_guided(result: FdopaResult) -> bool:
    """Whether the picture shows the MR-guided route (the FLAIR is on the result)."""
    return result.flair_guided is not None and result.flair_guided.flair is not None


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    if not mask.any():
        return mask.shape[0] // 2, mask.shape[1] // 2, mask.shape[2] // 2
    z, y, x = np.argwhere(mask).mean(axis=0).round().astype(int)
    return int(z), int(y), int(x)


def _axes_off(ax: Axes, title: str) -> None:
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    for xpos, letter in ((0.04, "R"), (0.96, "L")):
        ax.text(xpos, 0.5, letter, transform=ax.transAxes, color="#ffab00", fontsize=12,
                fontweight="bold", ha="center", va="center")
    ax.set_title(title, fontsize=11)


def _outline(ax: Axes, cut: np.ndarray, colour: str, style: str = "solid") -> None:
    if cut.any():
        ax.contour(cut.astype(float), levels=[0.5], colors=[colour], linewidths=1.6,
                   linestyles=style)


def draw_flair(ax: Axes, flair: FlairImage, method: str) -> None:
    """The FLAIR through its lesion's centroid, the lesion outlined."""
    box = rd.crop_box(flair.volume_zyx)
    image, lesion = flair.volume_zyx[box], flair.lesion_zyx[box]
    centre = _centre(lesion)
    cut = rd.plane_cut(image, "axial", centre, flair.affine)
    ax.imshow(cut, cmap="gray", vmin=0.0, vmax=float(np.percentile(image, 99.5)) or 1.0,
              aspect=rd.plane_aspect("axial", flair.spacing_zyx_mm), interpolation="nearest")
    _outline(ax, rd.plane_cut(lesion, "axial", centre, flair.affine), FLAIR_COLOUR)
    _axes_off(ax, f"FLAIR with the lesion ({method})")


def draw_fusion(ax: Axes, result: FdopaResult, g: FlairGuidedMeasures, image: np.ndarray,
                vmax: float) -> object:
    """PET over the registered FLAIR through the VOI's centroid; VOI and lesion outlined."""
    assert g.flair is not None
    box = rd.crop_box(image)
    pet, mr = image[box], g.flair.on_pet_zyx[box]
    voi, lesion = g.voi_zyx[box], g.flair_lesion_zyx[box]
    centre, affine = _centre(voi), result.static.affine
    aspect = rd.plane_aspect("axial", result.static.spacing_zyx_mm)
    mr_cut = rd.plane_cut(mr, "axial", centre, affine)
    ax.imshow(mr_cut, cmap="gray", vmin=0.0, vmax=float(np.percentile(mr, 99.5)) or 1.0,
              aspect=aspect, interpolation="bilinear")
    pet_cut = rd.plane_cut(pet, "axial", centre, affine)
    floor = g.reference_measures.white_matter_max_units * rd.curve_scale(result)[0]
    shown = ax.imshow(np.ma.masked_less_equal(pet_cut, floor), cmap="hot", vmin=0.0, vmax=vmax,
                      alpha=0.7, aspect=aspect, interpolation="nearest")
    _outline(ax, rd.plane_cut(voi, "axial", centre, affine), VOI_COLOUR)
    _outline(ax, rd.plane_cut(lesion, "axial", centre, affine), FLAIR_COLOUR, "dashed")
    _axes_off(ax, "PET > white-matter max over the registered FLAIR")
    return shown


def draw_route_planes(fig: Figure, grid: object, result: FdopaResult) -> None:
    """The MR-guided top row (module docstring) and the PET colour bar."""
    g = result.flair_guided
    assert g is not None and g.flair is not None
    image, unit = rd.display_volume(result)
    vmax = float(np.percentile(image, 99.9)) or 1.0
    method = "U-Net" if g.flair.method == "unet" else "classical threshold"
    draw_flair(fig.add_subplot(grid[0, 0]), g.flair, method)  # type: ignore[index]
    draw_fusion(fig.add_subplot(grid[0, 1]), result, g, image, vmax)  # type: ignore[index]
    cut, cropped_image, _ = rd.cropped(result)
    pet_ax = fig.add_subplot(grid[0, 2])  # type: ignore[index]
    shown = rd.draw_plane(pet_ax, cut, cropped_image, "axial", vmax)
    pet_ax.set_title("PET alone, PET RANO lesions (PET-only route)", fontsize=11)
    bar = fig.colorbar(shown, ax=fig.axes[-3:], fraction=0.02, pad=0.01)  # type: ignore[arg-type]
    bar.set_label(f"{unit}; fusion: same scale, hot", fontsize=9)


def route_headline(result: FdopaResult) -> tuple[str, str]:
    """The MR-guided route's headline: the paediatric indices first, then the PET RANO count."""
    g = result.flair_guided
    assert g is not None
    voi = "PET VOI" if g.pet_voi else "low uptake: whole FLAIR lesion"
    n = len(result.lesions)
    return (f"MR-guided: FLAIR-guided T/S {g.ts_ratio:.2f}, T/N {g.tn_ratio:.2f} "
            f"({voi} {g.voi_ml:.1f} cm3); PET RANO: {n} lesion{'' if n == 1 else 's'}",
            "#4a148c")
