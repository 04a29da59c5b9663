"""Synthetic example results for the report builders, their tests and docs.

Made from the shipped MNI atlas: a smoothed activity map with striatal uptake
``1 + SBR`` times the occipital grey-matter level, averaged over an axial slab
through the striatum. Nothing here is a measurement of anyone; it exists so the
SR and the picture report can be built, checked and looked at without running
the pipeline. ``python -m service.pipelines.dat_spect.example OUT_DIR`` writes the example
SR, picture report and PNG (the PNG in docs/img/ is made this way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter

from service.dicom import codes as dicom_codes
from service.imaging.atlas import LABELS, load_atlas
from service.pipelines.dat_spect.cnn import REGIONAL_RULE
from service.pipelines.dat_spect.levels import GLOBAL_RULE
from service.pipelines.dat_spect.provenance import SIMULATED, CalibrationInfo
from service.pipelines.dat_spect.quantify import ratios
from service.pipelines.dat_spect.result import (
    AlgorithmInfo,
    GlobalScore,
    Level,
    Region,
    RegionResult,
    ReportImages,
    SourceReference,
    StudyResult,
)

#: Axial slab through the striatum on the MNI 2 mm grid (z indices, inclusive-exclusive).
SLAB_Z = (33, 42)
#: Smoothing that mimics a SPECT resolution of about 12 mm FWHM on the 2 mm grid.
SMOOTHING_SIGMA_VOX = 2.5
#: Age-expected normal SBR mean and SD per structure (occipital reference), illustrative.
NORMAL_SBR = {"caudate": (3.35, 0.35), "putamen": (1.85, 0.22)}

_REDUCED = {
    Region.CAUDATE_LEFT: (2.55, Level.BORDERLINE, Level.BORDERLINE),
    Region.CAUDATE_RIGHT: (2.95, Level.NORMAL, Level.BORDERLINE),
    Region.PUTAMEN_LEFT: (0.72, Level.STRONG_REDUCTION, Level.STRONG_REDUCTION),
    Region.PUTAMEN_RIGHT: (1.12, Level.MODERATE_REDUCTION, Level.MODERATE_REDUCTION),
}
_NORMAL = {
    Region.CAUDATE_LEFT: (3.30, Level.NORMAL, None),
    Region.CAUDATE_RIGHT: (3.42, Level.NORMAL, None),
    Region.PUTAMEN_LEFT: (1.81, Level.NORMAL, None),
    Region.PUTAMEN_RIGHT: (1.90, Level.NORMAL, None),
}


def example_images(sbr: dict[Region, float], seed: int = 3) -> ReportImages:
    """Slab and outline labels of a synthetic scan with the given regional SBRs.

    Returns
    -------
    ReportImages
        ``slab_yx`` (109, 91) float32 in units of the reference concentration,
        ``labels_yx`` (109, 91) uint8; row 0 anterior, column 0 patient right.
    """
    atlas = load_atlas()
    activity = 0.15 * atlas.brain_zyx + atlas.gm_zyx * 1.0 + atlas.wm_zyx * 0.35
    for region, value in sbr.items():
        activity = np.where(atlas.mask(region.value), 1.0 + value, activity)
    activity = gaussian_filter(activity.astype(np.float32), SMOOTHING_SIGMA_VOX)
    rng = np.random.default_rng(seed)
    activity = activity * (1.0 + 0.03 * rng.standard_normal(activity.shape))
    z0, z1 = SLAB_Z
    slab_yx = activity[z0:z1].mean(axis=0)[::-1, :]
    labels = atlas.labels_zyx[z0:z1]
    labels_yx = np.zeros(labels.shape[1:], np.uint8)
    for value in sorted(LABELS.values()):
        present = (labels == value).sum(axis=0) >= 2
        labels_yx[present & (labels_yx == 0)] = value
    return ReportImages(
        slab_yx=np.ascontiguousarray(slab_yx, np.float32),
        labels_yx=np.ascontiguousarray(labels_yx[::-1, :]),
        pixel_mm=float(atlas.spacing_mm[0]),
    )


def example_result(reduced: bool = True, with_cnn: bool = True) -> StudyResult:
    """A complete, internally consistent synthetic :class:`StudyResult`.

    ``reduced`` picks a Parkinson-like pattern (left putamen strongly reduced)
    or a normal scan; ``with_cnn`` adds CNN levels, probabilities and a model
    checksum (else the SBR-threshold method alone, as without a model).
    """
    table = _REDUCED if reduced else _NORMAL
    regions = []
    for region in Region:
        sbr, level_sbr, level_cnn = table[region]
        mean, sd = NORMAL_SBR[region.structure]
        cnn = (level_cnn if level_cnn is not None else level_sbr) if with_cnn else None
        probabilities = None
        if cnn is not None:
            p = np.full(5, 0.04)
            p[cnn] = 0.84
            probabilities = tuple(float(v) for v in p)
        regions.append(
            RegionResult(
                region=region,
                sbr=sbr,
                level_sbr=level_sbr,
                z_score=(sbr - mean) / sd,
                normal_mean=mean,
                normal_sd=sd,
                level_cnn=cnn,
                cnn_probabilities=probabilities,
            )
        )
    sbr_by_region = {r.region: r.sbr for r in regions}
    study_uid = generate_uid(entropy_srcs=["dopanode-example", "study"])
    series_uid = generate_uid(entropy_srcs=["dopanode-example", "series", str(reduced)])
    source = SourceReference(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_class_uid=dicom_codes.NM_IMAGE_STORAGE,
        sop_instance_uids=(generate_uid(entropy_srcs=[series_uid, "instance"]),),
    )
    return StudyResult(
        source=source,
        regions=tuple(regions),
        global_score=GlobalScore(
            reduced=reduced,
            inconclusive=False,
            rule=REGIONAL_RULE if with_cnn else GLOBAL_RULE,  # the node's own rule texts
            method="cnn" if with_cnn else "sbr",
        ),
        ratios=ratios(sbr_by_region),
        reference_region="occipital cortex",
        registration_quality=0.93,
        algorithm=AlgorithmInfo(
            name="dopanode DaT SPECT",
            version="0.1.0",
            model_name="dat-cnn-example" if with_cnn else None,
            model_sha256=("0f" * 32) if with_cnn else None,
        ),
        images=example_images(sbr_by_region),
        patient_age_years=67.0,
        calibration=CalibrationInfo(SIMULATED, SIMULATED),
    )


def example_evidence(result: StudyResult) -> list[Dataset]:
    """NM source headers (no pixel data) for ``result.source``, synthetic patient."""
    headers = []
    for number, sop_uid in enumerate(result.source.sop_instance_uids, start=1):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Example^Synthetic"
        ds.PatientID = "DN-EXAMPLE-1"
        ds.PatientBirthDate = "19590101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = result.source.study_instance_uid
        ds.StudyID = "1"
        ds.StudyDate = "20260101"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC-EXAMPLE"
        ds.ReferringPhysicianName = ""
        ds.Modality = "NM"
        ds.SeriesInstanceUID = result.source.series_instance_uid
        ds.SeriesNumber = 3
        ds.SOPClassUID = result.source.sop_class_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        headers.append(ds)
    return headers


def main(argv: list[str] | None = None) -> int:
    """Write the example SR, picture report (DICOM) and PNG into a folder."""
    from service.pipelines.dat_spect.picture import build_picture_report
    from service.pipelines.dat_spect.render import render_report_png
    from service.pipelines.dat_spect.sr import build_sr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--normal", action="store_true", help="a normal scan instead")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = example_result(reduced=not args.normal)
    evidence = example_evidence(result)
    dcmwrite(
        args.out_dir / "example_sr.dcm",
        build_sr(result, evidence, "example-job"),
        enforce_file_format=True,
    )
    picture = build_picture_report(result, evidence, "example-job")
    dcmwrite(args.out_dir / "example_picture.dcm", picture, enforce_file_format=True)
    (args.out_dir / "picture_report_example.png").write_bytes(render_report_png(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
