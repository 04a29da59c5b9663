"""Render the picture report of one analysis to an RGB image (matplotlib, Agg).

Pure apart from matplotlib: a :class:`StudyResult` in, pixels or PNG bytes
out. No pyplot state is used (a private ``Figure`` with an Agg canvas), so it
is safe to call from worker threads. The layout puts the global result in
large type at the top and "Research use, not for diagnosis" beside it; below
are the axial slab with the regions outlined, the SBR chart against the
normal range, and the table of levels, SBR and z-scores.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.pipelines.dat_spect.provenance import SIMULATED
from service.pipelines.dat_spect.putamen_estimator import X_CLEAR_RATIO, lower_ratio
from service.pipelines.dat_spect.result import (
    Level,
    Region,
    RegionResult,
    ReportImages,
    StudyResult,
)
from service.pipelines.dat_spect.verdict import contradiction
from service.report.picture import figure_rgb

WIDTH_PX = 1280
HEIGHT_PX = 960
DPI = 100
RESEARCH_BANNER = "RESEARCH USE - NOT FOR DIAGNOSIS"
#: Warning lines that fit under the footer; the SR carries all of them.
MAX_WARNING_LINES = 2
#: The global rule line wraps at this many characters (11 pt on 1280 px).
RULE_WRAP_CHARS = 150

#: The calibration line when levels and z-scores are indicative (simulated calibration).
CALIBRATION_COLOUR = "#bf360c"
#: One colour per level 0..4, green to dark red.
LEVEL_COLOURS = ("#2e7d32", "#c0ca33", "#fb8c00", "#e53935", "#7b1f1f")
#: Outline colour per label value of ReportImages.labels_yx.
OUTLINE_COLOURS = {1: "#29b6f6", 2: "#29b6f6", 3: "#b2ff59", 4: "#b2ff59", 5: "#ffffff"}
_REGION_NAMES = {
    Region.CAUDATE_RIGHT: "Caudate R",
    Region.CAUDATE_LEFT: "Caudate L",
    Region.PUTAMEN_RIGHT: "Putamen R",
    Region.PUTAMEN_LEFT: "Putamen L",
}
#: Display order: right before left, as the image shows the patient's right on the left.
REGION_ORDER = tuple(_REGION_NAMES)


def headline(result: StudyResult) -> tuple[str, str]:
    """The global result in words and its colour.

    Never NORMAL (or REDUCED) above a table that contradicts it: where the
    methods or the reported levels disagree with the call
    (:func:`.verdict.contradiction`), the headline is INCONCLUSIVE and says
    why, even for a result whose flag was not set.
    """
    score = result.global_score
    why = contradiction(result.regions, score)
    if score.inconclusive or why:
        text = "INCONCLUSIVE - " + (why or ("reduced?" if score.reduced else "normal?"))
        return text, "#f9a825"
    if score.method == "sbr" and result.calibration is not None and (
            result.calibration.thresholds == SIMULATED):
        # The call rests on thresholds from simulated scans, not this camera.
        if score.reduced:
            return "REDUCED DaT uptake - INDICATIVE", LEVEL_COLOURS[3]
        return "NORMAL DaT uptake - INDICATIVE", LEVEL_COLOURS[0]
    if score.reduced:
        return "REDUCED striatal DaT uptake (abnormal)", LEVEL_COLOURS[3]
    return "NORMAL striatal DaT uptake", LEVEL_COLOURS[0]


def _draw_banner(fig: Figure, result: StudyResult) -> None:
    fig.text(
        0.5,
        0.975,
        RESEARCH_BANNER,
        fontsize=14,
        fontweight="bold",
        color="white",
        ha="center",
        va="center",
        bbox={"facecolor": "#b71c1c", "edgecolor": "none", "pad": 5},
    )
    text, colour = headline(result)
    fig.text(0.02, 0.915, text, fontsize=32, fontweight="bold", color=colour, va="center")
    score = result.global_score
    flag = "YES" if score.inconclusive else "no"
    rule = textwrap.fill(
        f"Global score by {score.method.upper()}, inconclusive: {flag}.   Rule: {score.rule}",
        width=RULE_WRAP_CHARS,
    )
    fig.text(0.02, 0.862, rule, fontsize=11 if "\n" not in rule else 10, color="#333333",
             va="center", linespacing=1.2)


def _crop_box(slab_yx: np.ndarray, pad_px: int = 4) -> tuple[slice, slice]:
    """Rows and columns holding the head (above 15 % of the maximum), padded."""
    rows, cols = np.nonzero(slab_yx > 0.15 * float(np.max(slab_yx)))
    if rows.size == 0:
        return slice(None), slice(None)
    r0, r1 = max(rows.min() - pad_px, 0), min(rows.max() + pad_px + 1, slab_yx.shape[0])
    c0, c1 = max(cols.min() - pad_px, 0), min(cols.max() + pad_px + 1, slab_yx.shape[1])
    return slice(r0, r1), slice(c0, c1)


def _draw_slab(ax: Axes, images: ReportImages | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if images is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        return
    finite = np.nan_to_num(images.slab_yx.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = _crop_box(finite)
    slab = finite[rows, cols]
    labels = images.labels_yx[rows, cols]
    ax.imshow(slab, cmap="inferno", interpolation="bilinear", vmin=0.0)
    for value, colour in OUTLINE_COLOURS.items():
        mask = labels == value
        if mask.any():
            style = "dashed" if value == 5 else "solid"
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.6, linestyles=style)
    ax.set_facecolor("black")
    for x, y, letter in ((0.03, 0.5, "R"), (0.97, 0.5, "L"), (0.5, 0.97, "A"), (0.5, 0.03, "P")):
        ax.text(
            x,
            y,
            letter,
            color="white",
            fontsize=14,
            fontweight="bold",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_title(
        f"Normalised axial slab through the striatum ({images.pixel_mm:g} mm pixels)\n"
        "blue: caudate, green: putamen, dashed: reference",
        fontsize=10,
    )


def _draw_chart(ax: Axes, result: StudyResult) -> None:
    """Horizontal SBR chart: the patient's value against mean +- 2 SD."""
    for row, region in enumerate(REGION_ORDER):
        r = result.region(region)
        y = len(REGION_ORDER) - 1 - row
        if r.normal_mean is not None and r.normal_sd is not None:
            lo, hi = r.normal_mean - 2 * r.normal_sd, r.normal_mean + 2 * r.normal_sd
            ax.barh(y, hi - lo, left=lo, height=0.5, color="#c8e6c9", edgecolor="#81c784")
            ax.plot([r.normal_mean] * 2, [y - 0.25, y + 0.25], color="#2e7d32", lw=2)
        ax.plot(r.sbr, y, "o", ms=14, color=LEVEL_COLOURS[r.level], mec="black", zorder=3)
        ax.text(r.sbr, y + 0.36, f"{r.sbr:.2f}", ha="center", fontsize=11, fontweight="bold")
    ax.set_yticks(range(len(REGION_ORDER)))
    ax.set_yticklabels([_REGION_NAMES[r] for r in reversed(REGION_ORDER)], fontsize=12)
    ax.set_ylim(-0.6, len(REGION_ORDER) - 0.3)
    values = [r.sbr for r in result.regions] + [
        r.normal_mean + 2 * r.normal_sd
        for r in result.regions
        if r.normal_mean is not None and r.normal_sd is not None
    ]
    ax.set_xlim(left=min(0.0, min(values) - 0.2), right=max(4.5, max(values) * 1.1))
    ax.set_xlabel(f"Specific binding ratio (reference: {result.reference_region})")
    ax.set_title("SBR against the normal range (green band: mean +- 2 SD)", fontsize=10)
    ax.grid(axis="x", color="#dddddd")


def _level_text(level: Level | None) -> str:
    return "-" if level is None else f"{int(level)} {level.label}"


def _table_row(r: RegionResult) -> list[str]:
    z = "-" if r.z_score is None else f"{r.z_score:+.1f}"
    normal = "-"
    if r.normal_mean is not None and r.normal_sd is not None:
        normal = f"{r.normal_mean - 2 * r.normal_sd:.2f}-{r.normal_mean + 2 * r.normal_sd:.2f}"
    return [
        _REGION_NAMES[r.region],
        _level_text(r.level),
        _level_text(r.level_cnn),
        _level_text(r.level_sbr),
        f"{r.sbr:.2f}",
        z,
        normal,
    ]


def _indicative(result: StudyResult) -> bool:
    return result.calibration is not None and result.calibration.indicative


def _draw_table(ax: Axes, result: StudyResult) -> None:
    ax.axis("off")
    mark = " *" if _indicative(result) else ""
    header = [
        "Region",
        "Reported level",
        "CNN level",
        f"SBR-threshold level{mark}",
        "SBR",
        f"z-score{mark}",
        f"Normal SBR{mark}",
    ]
    rows = [_table_row(result.region(region)) for region in REGION_ORDER]
    table = ax.table(
        cellText=rows,
        colLabels=header,
        loc="center",
        cellLoc="center",
        colWidths=[0.11, 0.19, 0.18, 0.19, 0.08, 0.09, 0.13],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(12)
    table.scale(1.0, 1.9)
    for col in range(len(header)):
        table[0, col].set_text_props(fontweight="bold")
        table[0, col].set_facecolor("#eeeeee")
    for i, region in enumerate(REGION_ORDER, start=1):
        level = result.region(region).level
        table[i, 1].set_facecolor(LEVEL_COLOURS[level])
        text_colour = "black" if level == Level.BORDERLINE else "white"
        table[i, 1].set_text_props(color=text_colour, fontweight="bold")


def _estimator_text(result: StudyResult) -> str:
    """The learnt putamen estimator's ratio (what the one-sided override compares), or ""."""
    left = result.region(Region.PUTAMEN_LEFT).sbr_estimated
    right = result.region(Region.PUTAMEN_RIGHT).sbr_estimated
    if left is None or right is None:
        return ""
    return (f"   Learnt putamen estimator ratio {lower_ratio(left, right):.2f} "
            f"(one-sided below {X_CLEAR_RATIO:.2f}).")


def _footer_lines(result: StudyResult) -> list[str]:
    ratios, algorithm = result.ratios, result.algorithm
    model = ""
    if algorithm.model_name:
        model = f", model {algorithm.model_name}"
    if algorithm.model_sha256:
        model += f" (sha256 {algorithm.model_sha256[:12]})"
    lines = [
        f"Putamen/caudate ratio L {ratios.putamen_caudate_left:.2f}, "
        f"R {ratios.putamen_caudate_right:.2f}.   Asymmetry index caudate "
        f"{ratios.asymmetry_caudate_pct:.1f} %, putamen {ratios.asymmetry_putamen_pct:.1f} %."
        + _estimator_text(result),
        f"{algorithm.name} {algorithm.version}{model}.   Registration quality "
        f"{result.registration_quality:.2f}.",
        "Levels: 0 normal, 1 borderline, 2 moderate reduction, 3 strong reduction, "
        "4 almost missing.",
    ]
    room = MAX_WARNING_LINES
    if result.calibration is not None:
        mark = "* " if result.calibration.indicative else ""
        lines.insert(0, f"{mark}{result.calibration.statement()}."[:150])
        room -= 1
    warnings = list(result.warnings)
    if len(warnings) > room:
        hidden = len(warnings) - room + 1
        warnings = warnings[: room - 1] + [f"{hidden} more in the SR"]
    lines.extend(f"Warning: {w}"[:150] for w in warnings)
    return lines


def render_report_figure(result: StudyResult) -> Figure:
    """The picture report as a matplotlib Figure (Agg canvas attached)."""
    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        2,
        2,
        left=0.07,
        right=0.98,
        top=0.79,
        bottom=0.13,
        height_ratios=[1.9, 1.0],
        width_ratios=[1.0, 1.25],
        hspace=0.22,
        wspace=0.18,
    )
    _draw_banner(fig, result)
    _draw_slab(fig.add_subplot(grid[0, 0]), result.images)
    _draw_chart(fig.add_subplot(grid[0, 1]), result)
    _draw_table(fig.add_subplot(grid[1, :]), result)
    for i, line in enumerate(_footer_lines(result)):
        calibration = i == 0 and result.calibration is not None
        indicative = calibration and _indicative(result)
        fig.text(0.02, 0.112 - 0.025 * i, line, fontsize=10.5,
                 color=CALIBRATION_COLOUR if indicative else "#333333",
                 fontweight="bold" if indicative else "normal")
    return fig


def render_report_rgb(result: StudyResult) -> np.ndarray:
    """The picture report as pixels.

    Returns
    -------
    (HEIGHT_PX, WIDTH_PX, 3) uint8 array
        RGB, row 0 at the top.
    """
    return figure_rgb(render_report_figure(result))


def render_report_png(result: StudyResult) -> bytes:
    """The picture report as PNG bytes (for docs and the offline ``analyze``)."""
    fig = render_report_figure(result)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
