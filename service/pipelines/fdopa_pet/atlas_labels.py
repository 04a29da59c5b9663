"""The FDOPA analysis atlas on the MNI 2 mm grid, derived from the shipped atlas.

Sources (``models/atlas/PROVENANCE.md``; licences in
``models/fdopa_template/PROVENANCE.md``):

* caudate and putamen per side: AAL2, as shipped in ``models/atlas/mni_2mm.npz``;
* cortex and cerebral white matter per side: the ICBM 2009a grey and white
  matter probability maps of the same file (the larger of the two where their
  sum is at least :data:`TISSUE_MIN_PROBABILITY`), split at the mid-sagittal
  plane MNI x = 0;
* ``midline``: brain tissue on that plane itself, so that neither hemisphere's
  reference reaches across the interhemispheric fissure; ``csf_partial``: the
  rest of the brain mask (mostly CSF: sulci, ventricle walls). With them every
  voxel of the brain mask has a label (``labels > 0`` is the brain);
* pallidum, thalamus, brain stem and cerebellum: not in the shipped atlas,
  so a **geometric construction** in MNI (RAS) millimetres, documented in the
  constants below. Its numbers are approximate anatomy (centres and extents
  read from standard MNI atlases, stated from general knowledge, not copied
  from any file), intersected with the shipped brain mask:

  * pallidum: an ellipsoid medial to the putamen; putamen voxels win;
  * thalamus: an ellipsoid either side of the third ventricle;
  * brain stem: an elliptic cylinder whose axis runs from the midbrain
    (MNI y -24 mm at z -8 mm) to the medulla (y -40 mm at z -64 mm), its
    half-width narrowing from 14 mm (pons) to 9 mm (medulla);
  * cerebellum: brain posterior to MNI y -32 mm and below the tentorium,
    modelled as a tent: z_tent = -10 mm at the midline falling 0.35 mm per mm
    towards the sides and 0.30 mm per mm anterior of y = -60 mm; the occipital
    lobe (AAL label of the shipped atlas) is never cerebellum.

Nothing here reads the simulator's label maps (``service.sim.fdopa.head``):
the simulated studies the analysis is tested on are labelled by other code.
"""

from __future__ import annotations

import numpy as np

from service.imaging.atlas import LABELS as AAL_LABELS
from service.imaging.atlas import Atlas

#: Label values of the FDOPA analysis atlas.
FDOPA_LABELS: dict[str, int] = {
    "caudate_left": 1,
    "caudate_right": 2,
    "putamen_left": 3,
    "putamen_right": 4,
    "pallidum_left": 5,
    "pallidum_right": 6,
    "thalamus_left": 7,
    "thalamus_right": 8,
    "white_matter_left": 9,
    "white_matter_right": 10,
    "cortex_left": 11,
    "cortex_right": 12,
    "brain_stem": 13,
    "cerebellum_left": 14,
    "cerebellum_right": 15,
    "midline": 16,
    "csf_partial": 17,
}
#: Labels below the tentorium (the infratentorial rule of :mod:`.reference`).
INFRATENTORIAL = ("brain_stem", "cerebellum_left", "cerebellum_right")
#: Cortex and white matter need at least this grey + white matter probability:
#: voxels mostly CSF (sulci, ventricle walls) belong to no reference region.
TISSUE_MIN_PROBABILITY = 0.5
#: Pallidum: centre (|x|, y, z) and semi-axes, MNI mm.
PALLIDUM_CENTRE_MM = (19.0, -4.0, -1.0)
PALLIDUM_SEMI_AXES_MM = (5.0, 9.5, 6.0)
#: Thalamus: centre (|x|, y, z) and semi-axes, MNI mm.
THALAMUS_CENTRE_MM = (12.0, -19.0, 6.0)
THALAMUS_SEMI_AXES_MM = (9.5, 14.0, 10.0)
#: Brain stem axis: (y, z) at its top and bottom, MNI mm; half-widths (x, y) there.
STEM_TOP_YZ_MM = (-24.0, -8.0)
STEM_BOTTOM_YZ_MM = (-40.0, -64.0)
STEM_TOP_HALF_MM = (14.0, 13.0)
STEM_BOTTOM_HALF_MM = (9.0, 9.0)
#: Cerebellum: posterior of this y, below the tentorium model (see module docstring).
CEREBELLUM_MAX_Y_MM = -32.0
TENTORIUM_MIDLINE_Z_MM = -10.0
TENTORIUM_LATERAL_SLOPE = 0.35
TENTORIUM_AP_SLOPE = 0.30
TENTORIUM_AP_ORIGIN_Y_MM = -60.0


def mni_coordinates(atlas: Atlas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI (RAS) x, y, z of every voxel centre, each a ``(91, 109, 91)`` float array, mm."""
    nz, ny, nx = atlas.shape_zyx
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    d, s, o = atlas.direction, atlas.spacing_mm, atlas.origin_lps_mm
    lps_x = o[0] + d[0] * s[0] * i
    lps_y = o[1] + d[4] * s[1] * j
    lps_z = o[2] + d[8] * s[2] * k
    return -lps_x, -lps_y, lps_z


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray,
               centre: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
    return (((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
            + ((z - centre[2]) / axes[2]) ** 2) <= 1.0


def _brain_stem(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    (y0, z0), (y1, z1) = STEM_TOP_YZ_MM, STEM_BOTTOM_YZ_MM
    t = np.clip((z - z0) / (z1 - z0), 0.0, 1.0)
    inside_z = (z <= z0) & (z >= z1)
    yc = y0 + t * (y1 - y0)
    hx = STEM_TOP_HALF_MM[0] + t * (STEM_BOTTOM_HALF_MM[0] - STEM_TOP_HALF_MM[0])
    hy = STEM_TOP_HALF_MM[1] + t * (STEM_BOTTOM_HALF_MM[1] - STEM_TOP_HALF_MM[1])
    return inside_z & (((x / hx) ** 2 + ((y - yc) / hy) ** 2) <= 1.0)


def _cerebellum(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    tent = (TENTORIUM_MIDLINE_Z_MM - TENTORIUM_LATERAL_SLOPE * np.abs(x)
            - TENTORIUM_AP_SLOPE * (y - TENTORIUM_AP_ORIGIN_Y_MM).clip(0.0, None))
    return (y <= CEREBELLUM_MAX_Y_MM) & (z < tent)


def fdopa_atlas_labels(atlas: Atlas) -> np.ndarray:
    """Build the FDOPA analysis labels on the atlas grid.

    Parameters
    ----------
    atlas : Atlas
        The shipped MNI 2 mm atlas (:func:`service.imaging.atlas.load_atlas`).

    Returns
    -------
    (91, 109, 91) int16 array
        Values of :data:`FDOPA_LABELS`, 0 outside the brain mask.
    """
    x, y, z = mni_coordinates(atlas)
    brain = atlas.brain_zyx
    left, right = x < -1e-6, x > 1e-6  # RAS x < 0 is the patient's left
    out = np.zeros(atlas.shape_zyx, np.int16)
    out[brain] = FDOPA_LABELS["csf_partial"]
    cortex = atlas.gm_zyx >= atlas.wm_zyx
    tissue = brain & (atlas.gm_zyx + atlas.wm_zyx >= TISSUE_MIN_PROBABILITY)
    for side, half in (("left", left), ("right", right)):
        out[tissue & half & cortex] = FDOPA_LABELS[f"cortex_{side}"]
        out[tissue & half & ~cortex] = FDOPA_LABELS[f"white_matter_{side}"]
    out[tissue & ~left & ~right] = FDOPA_LABELS["midline"]
    occipital = atlas.labels_zyx == AAL_LABELS["occipital"]
    cerebellum = brain & _cerebellum(x, y, z) & ~occipital
    out[cerebellum & (x <= 0)] = FDOPA_LABELS["cerebellum_left"]
    out[cerebellum & (x > 0)] = FDOPA_LABELS["cerebellum_right"]
    out[brain & _brain_stem(x, y, z)] = FDOPA_LABELS["brain_stem"]
    for side, sign in (("left", -1.0), ("right", 1.0)):
        for name, centre, axes in (("thalamus", THALAMUS_CENTRE_MM, THALAMUS_SEMI_AXES_MM),
                                   ("pallidum", PALLIDUM_CENTRE_MM, PALLIDUM_SEMI_AXES_MM)):
            c = (sign * centre[0], centre[1], centre[2])
            out[brain & _ellipsoid(x, y, z, c, axes)] = FDOPA_LABELS[f"{name}_{side}"]
        for name in ("caudate", "putamen"):
            out[atlas.labels_zyx == AAL_LABELS[f"{name}_{side}"]] = FDOPA_LABELS[f"{name}_{side}"]
    return out
