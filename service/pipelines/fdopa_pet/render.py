"""Render the FDOPA picture report to an RGB image (matplotlib, Agg, no pyplot state).

A :class:`FdopaResult` in, pixels or PNG bytes out; safe in worker threads.
Layout (1280 x 960 px), read top to bottom in five seconds:

* the red banner "RESEARCH USE - NOT FOR DIAGNOSIS - derived from simulated
  data" and a one-line headline (lesions found, measurable, TBRmax);
* the PET in three planes (axial, coronal, sagittal) through the largest
  lesion's centroid (through the reference striatum without a lesion), in
  SUVbw (series units when SUV is unavailable), lesions outlined in red, the
  background crescent green, the contralateral striatum cyan, the white
  matter orange (dashed); radiological convention (patient's right on the
  left), assuming a near-axial acquisition;
* the table of indices per lesion and for all lesions: SUVmax, TBRmax,
  TBRmean, MTV, measurable, T/S, T/N; without SUV the SUV column reads
  "n/a" and a line says why;
* the time-activity curves (tumour, striatum, background) against frame
  start time when there is a dynamic series, with TTP, slopes and the slope
  ratio; else the reason there are none;
* footer: reference side rule and values, flags, segmentation method and
  model, which route ran and why.

On the MR-guided route (:mod:`.render_route`) the headline gives the
paediatric FLAIR-guided T/S and T/N and the route's reason is written under
it; the top row shows the FLAIR with its lesion, the PET fused over the
registered FLAIR with the FLAIR-guided VOI, and the PET alone with the
PET RANO outlines; the curves are those of the FLAIR-guided VOI.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from service.pipelines.fdopa_pet.result import FdopaResult, LesionMeasures
from service.report.picture import figure_rgb

WIDTH_PX = 1280
HEIGHT_PX = 960
DPI = 100
BANNER = "RESEARCH USE - NOT FOR DIAGNOSIS - derived from simulated data"
#: Lesion rows shown in the table (all are in the SR).
MAX_TABLE_LESIONS = 4
#: Outline colour and line style per region.
OUTLINES = {"lesion": ("#ff1744", "solid"), "background": ("#76ff03", "solid"),
            "striatum": ("#00e5ff", "solid"), "white_matter": ("#ff9100", "dashed")}
OUTLINE_LEGEND = ("Outlines - red: lesion, green: background crescent, cyan: contralateral "
                  "striatum, orange dashed: contralateral white matter")
CURVE_COLOURS = {"tumour": "#d50000", "striatum": "#0091ea", "background": "#2e7d32"}


def display_volume(result: FdopaResult) -> tuple[np.ndarray, str]:
    """(z, y, x) float32 image to show and its unit label (SUVbw, else series units)."""
    values = np.nan_to_num(result.static.frames[0].volume_zyx.astype(np.float32))
    if result.suv.factor is not None:
        return values * np.float32(result.suv.factor), "SUVbw (g/mL)"
    if result.suv.bqml_per_unit is not None:
        return values * np.float32(result.suv.bqml_per_unit), "Bq/mL (SUV unavailable)"
    return values, "series units (SUV unavailable)"


def centre_voxel(result: FdopaResult) -> tuple[int, int, int]:
    """The voxel the three planes go through: largest lesion, else the striatum."""
    mask = result.lesions[0].mask_zyx if result.lesions else result.reference.striatum_zyx
    if not mask.any():
        return tuple(s // 2 for s in result.static.shape_zyx)  # type: ignore[return-value]
    z, y, x = np.argwhere(mask).mean(axis=0).round().astype(int)
    return int(z), int(y), int(x)


def region_masks(result: FdopaResult) -> dict[str, np.ndarray]:
    lesions = np.zeros(result.static.shape_zyx, bool)
    for lesion in result.lesions:
        lesions |= lesion.mask_zyx
    ref = result.reference
    return {"lesion": lesions, "background": ref.background_zyx, "striatum": ref.striatum_zyx,
            "white_matter": ref.white_matter_zyx}


def plane_cut(array: np.ndarray, plane: str, centre: tuple[int, int, int],
           affine: np.ndarray) -> np.ndarray:
    """2-D cut displayed as (rows, columns), radiological, superior/anterior up."""
    z, y, x = centre
    cut = {"axial": array[z], "coronal": array[:, y, :], "sagittal": array[:, :, x]}[plane]
    if plane != "axial" and affine[2, 0] > 0:  # slice index grows superior: put it on top
        cut = cut[::-1]
    if plane == "axial" and affine[1, 1] < 0:
        cut = cut[::-1]
    if plane in ("axial", "coronal") and affine[0, 2] < 0:  # keep the patient's right left
        cut = cut[:, ::-1]
    if plane == "sagittal" and affine[1, 1] < 0:  # anterior on the left
        cut = cut[:, ::-1]
    return cut


def plane_aspect(plane: str, spacing_zyx: np.ndarray) -> float:
    z, y, x = (float(v) for v in spacing_zyx)
    return {"axial": y / x, "coronal": z / x, "sagittal": z / y}[plane]


def draw_plane(ax: Axes, result: FdopaResult, image: np.ndarray, plane: str,
                vmax: float) -> object:
    centre = centre_voxel(result)
    affine, spacing = result.static.affine, result.static.spacing_zyx_mm
    shown = ax.imshow(plane_cut(image, plane, centre, affine), cmap="gray_r", vmin=0.0,
                      vmax=vmax, aspect=plane_aspect(plane, spacing), interpolation="nearest")
    for name, mask in region_masks(result).items():
        cut = plane_cut(mask, plane, centre, affine)
        if cut.any():
            colour, style = OUTLINES[name]
            ax.contour(cut.astype(float), levels=[0.5], colors=[colour], linewidths=1.4,
                       linestyles=style)
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    left, right = ("R", "L") if plane != "sagittal" else ("A", "P")
    for xpos, letter in ((0.04, left), (0.96, right)):
        ax.text(xpos, 0.5, letter, transform=ax.transAxes, color="#ffab00", fontsize=12,
                fontweight="bold", ha="center", va="center")
    ax.set_title(plane.capitalize(), fontsize=11)
    return shown


def crop_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """The head's bounding box (above 10 % of the 99.9th percentile), padded by 2 voxels."""
    head = np.argwhere(image > 0.1 * float(np.percentile(image, 99.9)))
    if head.size == 0:
        return slice(None), slice(None), slice(None)
    lo = np.maximum(head.min(axis=0) - 2, 0)
    hi = np.minimum(head.max(axis=0) + 3, image.shape)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


def cropped(result: FdopaResult) -> tuple[FdopaResult, np.ndarray, str]:
    """The result's image, masks and grid cut to the head (same spacing, shifted affine)."""
    from dataclasses import replace

    image, unit = display_volume(result)
    box = crop_box(image)
    shift = np.eye(4)
    shift[:3, 3] = [s.start or 0 for s in box]
    static = replace(result.static, affine=result.static.affine @ shift)
    ref = result.reference
    cut = replace(result, static=static, lesions=tuple(
        replace(les, mask_zyx=les.mask_zyx[box]) for les in result.lesions),
        reference=replace(ref, background_zyx=ref.background_zyx[box],
                          striatum_zyx=ref.striatum_zyx[box],
                          white_matter_zyx=ref.white_matter_zyx[box]))
    frame = replace(result.static.frames[0], volume_zyx=result.static.frames[0].volume_zyx[box])
    return replace(cut, static=replace(static, frames=(frame,))), image[box], unit


def draw_planes(fig: Figure, grid: object, result: FdopaResult) -> None:
    """Axial, coronal and sagittal planes with outlines and a colour bar."""
    cut, image, unit = cropped(result)
    vmax = float(np.percentile(image, 99.9)) or 1.0
    shown = None
    for k, plane in enumerate(("axial", "coronal", "sagittal")):
        shown = draw_plane(fig.add_subplot(grid[0, k]), cut, image, plane,  # type: ignore[index]
                           vmax)
    bar = fig.colorbar(shown, ax=fig.axes[-3:], fraction=0.02, pad=0.01)  # type: ignore[arg-type]
    bar.set_label(unit, fontsize=9)


def _fmt(number: float | None, digits: int = 2) -> str:
    return "n/a" if number is None else f"{number:.{digits}f}"


def table_row(name: str, m: LesionMeasures) -> list[str]:
    return [name, _fmt(m.suv_max), _fmt(m.tbr_max), _fmt(m.tbr_mean), _fmt(m.volume_ml),
            "yes" if m.measurable else "no", _fmt(m.ts_ratio), _fmt(m.tn_ratio)]


TABLE_HEADER = ["Lesion", "SUVmax", "TBRmax", "TBRmean", "MTV cm3", "Measur.", "T/S", "T/N"]


def table_rows(result: FdopaResult) -> list[list[str]]:
    """The rows of the table of indices (lesions, then all lesions together)."""
    lesions = result.measures.lesions
    rows = [table_row(f"Lesion {m.index}", m) for m in lesions[:MAX_TABLE_LESIONS]]
    if len(lesions) > MAX_TABLE_LESIONS:
        rows.append([f"+{len(lesions) - MAX_TABLE_LESIONS} more in the SR"] + [""] * 7)
    if result.measures.tumour is not None:
        rows.append(table_row("All lesions", result.measures.tumour))
    if not rows:
        rows.append(["no lesion"] + ["-"] * 7)
    return rows


def draw_table(ax: Axes, result: FdopaResult) -> None:
    ax.axis("off")
    table = ax.table(cellText=table_rows(result), colLabels=TABLE_HEADER, loc="upper center",
                     cellLoc="center", colWidths=[0.19, 0.12, 0.12, 0.13, 0.13, 0.11, 0.1, 0.1])
    table.auto_set_font_size(False)
    table.set_fontsize(10.5)
    table.scale(1.0, 1.6)
    for col in range(len(TABLE_HEADER)):
        table[0, col].set_text_props(fontweight="bold", fontsize=9.5)
        table[0, col].set_facecolor("#eeeeee")
    notes = ["TBR = lesion / background crescent mean (PET RANO); T/S, T/N = lesion max /",
             "contralateral striatum, white-matter max (Genoa); measurable: MTV > 0.5 cm3."]
    if not result.suv.available:
        notes.insert(0, f"SUV unavailable: {result.suv.reason} - ratios and volumes shown.")
    for i, note in enumerate(notes):
        ax.text(0.0, 0.1 * (len(notes) - 1 - i), note[:140], transform=ax.transAxes, fontsize=9,
                color="#b71c1c" if "unavailable" in note else "#333333",
                fontweight="bold" if "unavailable" in note else "normal")


def draw_curves(ax: Axes, result: FdopaResult) -> None:
    """TACs against frame start time, the fit window shaded, TTP and slopes in the legend.

    On the MR-guided route the curves of the FLAIR-guided VOI and its
    reference regions (the paper's dynamic indices), named so.
    """
    guided = result.flair_guided
    dynamic, note = result.dynamic, result.dynamic_note
    names: dict[str, str] = {}
    if guided is not None:
        dynamic, note = guided.dynamic, guided.dynamic_note
        names = {"tumour": "FLAIR-guided VOI"}
    if dynamic is None:
        ax.axis("off")
        ax.text(0.5, 0.5, f"No time-activity curves:\n{note or 'no dynamic series'}",
                ha="center", va="center", fontsize=11, color="#555555", wrap=True)
        return
    factor, unit = curve_scale(result)
    times_min = dynamic.starts_s / 60.0
    for region, tac in dynamic.tacs.items():
        p = dynamic.get(region, "start")
        slope = (f"{p.slope_suv_per_min:+.3f} SUV/min" if p.slope_suv_per_min is not None
                 else f"{p.slope_bqml_per_s:+.2f} Bq/mL/s" if p.slope_bqml_per_s is not None
                 else f"{p.slope_units_per_s:+.2f} units/s")
        label = (f"{names.get(region, region)}: TTP {p.ttp_min:.1f} min, slope {slope} "
                 f"({p.slope_percent_per_min:+.1f} %/min)")
        values = tac * factor
        ax.plot(times_min, values, "o-", color=CURVE_COLOURS.get(region, "#555555"), ms=4,
                lw=1.6, label=label)
    window = min(p.fit_from_s for p in dynamic.parameters) / 60.0
    ax.axvspan(window, float(times_min[-1]), color="#fff3e0", zorder=0)
    ratio = dynamic.slope_ratios.get("start")
    title = "Time-activity curves (frame start; shaded: slope fit window)"
    if ratio is not None:
        title += f"\nslope ratio {names.get('tumour', 'tumour')}/striatum {ratio:.2f}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("time from injection (min, frame start)", fontsize=9)
    ax.set_ylabel(unit, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(color="#dddddd")


def curve_scale(result: FdopaResult) -> tuple[float, str]:
    """Factor from series units to the plotted unit, and its label."""
    if result.suv.factor is not None:
        return result.suv.factor, "SUVbw (g/mL)"
    if result.suv.bqml_per_unit is not None:
        return result.suv.bqml_per_unit, "Bq/mL"
    return 1.0, "series units"


#: Headline font size, points: the size it starts at and the least it shrinks to.
HEADLINE_PT = (20.0, 12.0)


def headline(result: FdopaResult) -> tuple[str, str]:
    """The result in one line and its colour."""
    tumour = result.measures.tumour
    if tumour is None:
        return "No PET-active lesion found", "#2e7d32"
    n = len(result.lesions)
    measurable = "measurable" if tumour.measurable else "not measurable"
    return (f"{n} lesion{'s' if n > 1 else ''} ({measurable}): MTV {tumour.volume_ml:.2f} cm3, "
            f"TBRmax {tumour.tbr_max:.2f}, T/S {tumour.ts_ratio:.2f}", "#b71c1c")


def footer_lines(result: FdopaResult) -> list[str]:
    ref, info = result.measures.reference, result.segmentation
    values = (f"SUVmean {ref.background_suv_mean:.2f}" if ref.background_suv_mean is not None
              else f"mean {ref.background_mean_units:.4g} units")
    method = ("PET-only 3D U-Net" + (f" ({info.model_name}, sha256 {info.model_sha256[:12]})"
                                     if info.model_name and info.model_sha256 else "")
              if info.method == "unet" else "threshold-only baseline (no model)")
    lines = [f"Reference side {result.reference.side}: {result.reference.rule}. "
             f"Background crescent {values}, {ref.background_ml:.0f} cm3.",
             f"Segmentation: {method}; lesions >= 1.6 x background mean. "
             f"{result.algorithm.name} {result.algorithm.version}.",
             "Flags: " + ("; ".join(result.flags) if result.flags else "none"),
             *route_lines(result)]
    return [line[:170] for line in lines]


def route_lines(result: FdopaResult) -> list[str]:
    """Which route ran and why; on the MR-guided route its FLAIR lesion and indices."""
    g = result.flair_guided
    if g is None:
        return [result.route.reason]
    voi = "PET VOI" if g.pet_voi else "low-uptake fallback: the whole FLAIR lesion"
    return [f"{result.route.reason}; {result.route.flair_method}",
            f"Paediatric FLAIR-guided (not PET RANO): T/S {g.ts_ratio:.2f}, T/N "
            f"{g.tn_ratio:.2f} (max/max; {voi}, {g.voi_ml:.1f} cm3)"]


def _draw_banner(fig: Figure, result: FdopaResult) -> None:
    from service.pipelines.fdopa_pet import render_route  # draws with this module's helpers

    fig.text(0.5, 0.978, BANNER, fontsize=14, fontweight="bold", color="white", ha="center",
             va="center", bbox={"facecolor": "#b71c1c", "edgecolor": "none", "pad": 5})
    text, colour = (render_route.route_headline(result) if render_route.is_mr_guided(result)
                    else headline(result))
    line = fig.text(0.02, 0.93, f"[18F]FDOPA PET: {text}", fontsize=HEADLINE_PT[0],
                    fontweight="bold", color=colour, va="center")
    fit_width(fig, line, 0.96)
    if render_route.is_mr_guided(result):  # which route ran and why, under the headline
        fig.text(0.02, 0.893, result.route.reason, fontsize=12, color="#4a148c", va="center")


def fit_width(fig: Figure, text: Text, fraction: float) -> None:
    """Shrink ``text`` (down to :data:`HEADLINE_PT` [1]) until it spans at most ``fraction``
    of the figure's width, so that a long headline is never cut at the edge."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    size = float(text.get_fontsize())
    while size > HEADLINE_PT[1] and (text.get_window_extent(renderer).width
                                     > fraction * fig.bbox.width):
        size -= 1.0
        text.set_fontsize(size)


def render_report_figure(result: FdopaResult) -> Figure:
    """The picture report as a matplotlib Figure (Agg canvas attached)."""
    from service.pipelines.fdopa_pet import render_route  # draws with this module's helpers

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    top = 0.85 if render_route.is_mr_guided(result) else 0.88  # room for the route line
    grid = fig.add_gridspec(2, 3, left=0.03, right=0.93, top=top, bottom=0.17,
                            height_ratios=[1.25, 1.0], hspace=0.25, wspace=0.08)
    _draw_banner(fig, result)
    if render_route.is_mr_guided(result):
        render_route.draw_route_planes(fig, grid, result)
        fig.text(0.03, 0.495, render_route.ROUTE_LEGEND, fontsize=9.5, color="#333333")
    else:
        draw_planes(fig, grid, result)
        fig.text(0.03, 0.495, OUTLINE_LEGEND, fontsize=9.5, color="#333333")
    lower = grid[1, :].subgridspec(1, 2, width_ratios=[1.15, 1.0], wspace=0.12)
    draw_table(fig.add_subplot(lower[0, 0]), result)
    draw_curves(fig.add_subplot(lower[0, 1]), result)
    for i, line in enumerate(footer_lines(result)):
        fig.text(0.02, 0.098 - 0.02 * i, line, fontsize=9.5, color="#333333")
    return fig


def render_report_rgb(result: FdopaResult) -> np.ndarray:
    """The picture report as pixels.

    Returns
    -------
    (HEIGHT_PX, WIDTH_PX, 3) uint8 array
        RGB, row 0 at the top.
    """
    return figure_rgb(render_report_figure(result))



def render_report_png(result: FdopaResult) -> bytes:
    """The picture report as PNG bytes (docs, the offline ``analyze``)."""
    buffer = io.BytesIO()
    render_report_figure(result).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
