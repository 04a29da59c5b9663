"""FDOPA FLAIR encodings, a whole simulated study in the new shapes, the benchmark's variants.

Companion of ``test_fdopa_encodings.py`` (PET): MR Image Storage per slice in
every lossless transfer syntax, native Enhanced MR and compressed Legacy
Converted Enhanced MR read back to the per-slice volume and pass the FLAIR
gate; a small simulated study written as native Enhanced PET/MR in JPEG-LS is
read and gated by the node; the benchmark draws the variants from their own
random stream; legacy conversions are the same bytes for the same seed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.imaging.mr_volume import MrVolume, mr_volume_from_datasets
from service.imaging.pet_volume import volume_from_datasets
from service.imaging.suv import suv_scale
from service.pipelines.fdopa_pet.flair_gate import classify_mr_series
from service.pipelines.fdopa_pet.gate import classify_series
from service.sim.fdopa.enhanced_mr import build_enhanced_flair
from service.sim.fdopa.flair import PROTOCOLS, FlairImage, MrPose
from service.sim.fdopa.mr_writer import build_flair_series, build_legacy_enhanced_mr
from service.sim.fdopa.pet_writer import (
    PetEncoding,
    PetSeriesInfo,
    build_legacy_enhanced,
    build_pet_series,
    write_series,
)
from service.sim.fdopa.study import StudyPlan
from service.sim.transfer_syntax import TRANSFER_SYNTAXES, encode_pixels
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

INFO = PetSeriesInfo("enc-seed", 68.0, 190.0, 47, "M", "SIEMENS", "Biograph", "OSEM", 2,
                     "Brain FDOPA")
MR_INFO = PetSeriesInfo(**{**INFO.__dict__, "series_number": 10, "description": "FLAIR"})
COMPRESSED = ["rle", "jpegls", "jpeg2000", "deflate"]
STATIC = ([600.0], [1200.0])


def _volume(seed: int) -> sitk.Image:
    arr = np.random.default_rng(seed).uniform(300.0, 9000.0, (4, 36, 44)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.5, 3.0))
    return img


def _round_trip(datasets: list[Dataset], folder: Path, prefix: str = "MR") -> list[Dataset]:
    return [pydicom.dcmread(p) for p in write_series(datasets, folder, prefix)]


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]

def _flair(acquisition: str) -> tuple[FlairImage, str]:
    name = "ax2d_3t" if acquisition == "2D" else "iso3d_3t"
    vol = np.random.default_rng(5).uniform(0.0, 900.0, (5, 34, 40)).astype(np.float32)
    spacing = (0.9, 1.1, 5.0) if acquisition == "2D" else (1.2, 1.2, 1.2)
    return FlairImage(vol, np.zeros(vol.shape, np.uint8), np.array([-20.0, -18.5, -30.0]),
                      spacing, MrPose(np.zeros(3), np.zeros(3))), name


def _assert_same_mr(got: MrVolume, ref: MrVolume) -> None:
    np.testing.assert_array_equal(got.array_zyx, ref.array_zyx)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-6)


@pytest.mark.parametrize("syntax", COMPRESSED)
def test_per_slice_flair_reads_back_identically(syntax: str, tmp_path: Path) -> None:
    image, name = _flair("2D")
    ref = mr_volume_from_datasets(build_flair_series(image, PROTOCOLS[name], MR_INFO))
    back = _round_trip(build_flair_series(image, PROTOCOLS[name], MR_INFO, syntax), tmp_path,
                       "MR")
    assert back[0].file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    _assert_same_mr(mr_volume_from_datasets(back), ref)
    if syntax == "jpeg2000":
        assert not _dciodvfy_errors(tmp_path / "MR00001.dcm")


@pytest.mark.parametrize("acquisition,syntax", [("2D", "explicit"), ("3D", "jpeg2000"),
                                                ("2D", "rle")])
def test_native_enhanced_mr_flair(acquisition: str, syntax: str, tmp_path: Path) -> None:
    image, name = _flair(acquisition)
    protocol = PROTOCOLS[name]
    ref = mr_volume_from_datasets(build_flair_series(image, protocol, MR_INFO))
    (native,) = _round_trip([build_enhanced_flair(image, protocol, MR_INFO, syntax)], tmp_path,
                            "MR")
    assert native.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    _assert_same_mr(mr_volume_from_datasets([native]), ref)
    decision = classify_mr_series(native)
    assert decision.is_flair and f"{protocol.ti_ms:.0f} ms" in decision.reason
    assert "SeriesDescription" in native and "InversionTime" not in native  # gate read the groups
    assert not _dciodvfy_errors(tmp_path / "MR00001.dcm")
    if syntax == "explicit":  # GDCM reads the Enhanced MR geometry too
        back = sitk.ReadImage(str(tmp_path / "MR00001.dcm"))
        np.testing.assert_allclose(back.GetOrigin(), image.origin_lps_mm, atol=1e-4)
        np.testing.assert_allclose(back.GetSpacing(), image.spacing_mm, atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), ref.array_zyx)


def test_legacy_converted_enhanced_mr_compressed_reads_back(tmp_path: Path) -> None:
    image, name = _flair("3D")
    singles = build_flair_series(image, PROTOCOLS[name], MR_INFO)
    enhanced = build_legacy_enhanced_mr(singles, MR_INFO)
    encode_pixels(enhanced, "rle")
    (back,) = _round_trip([enhanced], tmp_path, "MR")
    _assert_same_mr(mr_volume_from_datasets([back]), mr_volume_from_datasets(singles))
    assert classify_mr_series(back).is_flair
    assert not _dciodvfy_errors(tmp_path / "MR00001.dcm")


def test_benchmark_variants_come_from_their_own_stream() -> None:
    from dataclasses import replace

    from service.sim.fdopa.benchmark import SITES, plan_study

    variant_fields = ("encoding", "enhanced", "flair_enhanced", "enhanced_kind",
                      "dynamic_enhanced")
    seen: set[str] = set()
    for site in SITES.values():
        plain = replace(site, transfer_syntax_mix=None, native_enhanced_fraction=0.0)
        for i in range(60):
            plan, base = plan_study(site, i), plan_study(plain, i)
            assert base.encoding.transfer_syntax == "explicit" and base.enhanced_kind == "legacy"
            for name in StudyPlan.__dataclass_fields__:
                if name not in variant_fields:
                    assert getattr(plan, name) == getattr(base, name), (site.name, i, name)
            assert replace(plan.encoding, transfer_syntax="explicit") == base.encoding
            if plan.enhanced_kind == "native":
                assert plan.encoding.units != "CNTS" and plan.enhanced
                assert plan.dynamic_enhanced == (plan.schedule is not None)
            elif (plan.enhanced, plan.flair_enhanced) != (base.enhanced, base.flair_enhanced):
                raise AssertionError(f"{site.name} {i}: enhanced changed without a variant")
            seen.add(plan.encoding.transfer_syntax)
            seen.add(plan.enhanced_kind)
    assert seen >= {*TRANSFER_SYNTAXES, "native", "legacy"}


def test_a_simulated_study_in_native_enhanced_jpegls_reads_and_gates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from service.sim.fdopa import kinetics
    from service.sim.fdopa.kinetics import FrameSchedule
    from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile
    from service.sim.fdopa.study import simulate_study

    profile = replace(get_pet_profile("petmr_unseen"), name="test_tiny_enc", sim_voxel_mm=5.0,
                      n_views=24, iterations=1, subsets=4, matrix=48, pixel_mm=5.0,
                      slice_mm=5.0)
    schedule = FrameSchedule("test_enc_4", (120.0, 480.0, 600.0, 600.0))
    monkeypatch.setitem(PET_PROFILES, profile.name, profile)
    monkeypatch.setitem(kinetics.SCHEDULES, schedule.name, schedule)
    plan = StudyPlan("enc", profile.name, "hgg", False, 5, schedule=schedule.name,
                     encoding=PetEncoding(transfer_syntax="jpegls"), flair="ax2d_15t",
                     enhanced=True, flair_enhanced=True, enhanced_kind="native",
                     dynamic_enhanced=True)
    row = simulate_study(plan, tmp_path)
    assert (row["transfer_syntax"], row["enhanced_kind"], row["dynamic_enhanced"]) == (
        "jpegls", "native", True)
    folder = tmp_path / "enc"
    read = {name: [pydicom.dcmread(p) for p in sorted((folder / name).iterdir())]
            for name in ("PT_STATIC", "PT_DYNAMIC", "PT_NAC", "MR_FLAIR")}
    for datasets in read.values():
        assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {pydicom.uid.JPEGLSLossless}
    static, dynamic = read["PT_STATIC"], read["PT_DYNAMIC"]
    assert len(static) == len(dynamic) == len(read["MR_FLAIR"]) == 1
    assert classify_series(static[0]).role == "static"
    assert classify_series(dynamic[0]).role == "dynamic"
    assert classify_series(read["PT_NAC"][0]).role == "ignored"
    assert classify_mr_series(read["MR_FLAIR"][0]).is_flair
    frames = volume_from_datasets(dynamic)
    np.testing.assert_allclose(frames.durations_s, schedule.durations_s)
    np.testing.assert_allclose(frames.starts_s, np.asarray(schedule.starts_s) - schedule.starts_s[0])
    image = volume_from_datasets(static)
    assert image.shape_zyx == volume_from_datasets(read["PT_NAC"]).shape_zyx
    assert suv_scale(static[0], image.first_frame_start).available
    assert mr_volume_from_datasets(read["MR_FLAIR"]).array_zyx.shape[0] == 28


def test_legacy_conversions_are_deterministic() -> None:
    """highdicom stamps the wall clock and a random UID; the writers pin them to the seed."""
    import io

    def encoded(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    image, name = _flair("3D")
    pet = [encoded(build_legacy_enhanced(build_pet_series(
        [_volume(1)], *STATIC, INFO, PetEncoding(), False), INFO)) for _ in range(2)]
    mr = [encoded(build_legacy_enhanced_mr(build_flair_series(
        image, PROTOCOLS[name], MR_INFO), MR_INFO)) for _ in range(2)]
    assert pet[0] == pet[1] and mr[0] == mr[1]

