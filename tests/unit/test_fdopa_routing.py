"""FDOPA routing: select, the study-level input plan, and the scheduler path to ONE job per study.

The FLAIR of the MR-guided route: taken when complete, waited for (bounded)
when announced or expected, never a job of its own.

Tiny simulator series (3 slices of 8 x 8; a 2-frame dynamic) are received
into a real SQLite store and routed by the real :class:`Scheduler`, in every
arrival order; no pixels are analysed here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service.dicom.header import read_header
from service.imaging.mr_volume import MR_IMAGE_STORAGE
from service.pipelines.base import PRIMARY, InputPlan, InputSeries, SeriesView
from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline, Options
from service.pipelines.fdopa_pet.plan import DYNAMIC, FLAIR, WaitRules
from service.scheduler import Scheduler
from service.sim.fdopa.pet_writer import PetEncoding, PetSeriesInfo, build_pet_series, write_series
from service.store import db, jobs
from service.store import series as completion
from service.store.spool import Spool
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.storage import node_rows

NOW = 1_800_000_000.0
QUIET_S = 10.0
RULES = WaitRules(companion_wait_s=300.0, static_wait_s=60.0)
IMG = sitk.GetImageFromArray(np.ones((3, 8, 8), np.float32))


def _info(number: int, ac: bool = True) -> PetSeriesInfo:
    return PetSeriesInfo("routing-seed", 70.0, 180.0, 40, "M", "GE", "Discovery", "OSEM", number,
                         f"Brain FDOPA {'AC' if ac else 'NAC'}", attenuation_corrected=ac)


def static_series(number: int = 2, ac: bool = True) -> list[Dataset]:
    return build_pet_series([IMG], [600.0], [1200.0], _info(number, ac), PetEncoding(), False)


def dynamic_series(number: int = 4) -> list[Dataset]:
    return build_pet_series([IMG, IMG], [0.0, 15.0], [15.0, 15.0], _info(number),
                            PetEncoding(), True)


def pipeline() -> FdopaPetPipeline:
    template: Any = SimpleNamespace(sha256="0" * 64)  # routing never touches the template
    return FdopaPetPipeline(template, None, Options(rules=RULES))


def view(ds: Dataset, count: int | None = None, complete: bool = True,
         completed_at: float | None = NOW) -> SeriesView:
    n = count if count is not None else int(ds.get("NumberOfSlices", 1)) * int(
        ds.get("NumberOfTimeSlices", 1) or 1)
    return SeriesView(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID),
                      n, ds, complete, completed_at if complete else None)


# --- select ------------------------------------------------------------------------
def test_select_takes_ac_static_and_dynamic_declines_nac_and_dat(tmp_path: Path) -> None:
    p = pipeline()
    static = p.select(view(static_series()[0]))
    dynamic = p.select(view(dynamic_series()[0]))
    assert static.taken and static.reason.startswith("attenuation-corrected static; code SCT")
    assert dynamic.taken and dynamic.reason.startswith("attenuation-corrected dynamic")
    nac = p.select(view(static_series(3, ac=False)[0]))
    assert not nac.taken
    assert nac.reason == "not attenuation-corrected (Corrected Image lacks ATTN)"
    dat = write_marker_study(tmp_path / "dat", "multiframe",
                             image=marker_image((8, 8, 4), (4.0, 4.0, 4.0)), uid_seed="dat")
    declined = p.select(view(pydicom.dcmread(dat[0], stop_before_pixels=True)))
    assert not declined.taken
    assert declined.reason == "not an FDOPA PET series: modality is NM, not PT"


# --- the plan on its own ---------------------------------------------------------
def test_plan_static_only_and_static_with_dynamic() -> None:
    p, st, dy = pipeline(), view(static_series()[0]), view(dynamic_series()[0])
    assert p.inputs(st, [], NOW).series == (InputSeries(PRIMARY, st.series_uid),)
    both = (InputSeries(PRIMARY, st.series_uid), InputSeries(DYNAMIC, dy.series_uid))
    for trigger, other in ((st, dy), (dy, st)):
        plan = p.inputs(trigger, [other], NOW)
        assert plan.series == both and plan.wait_until is None


def test_plan_waits_for_an_arriving_dynamic_then_goes_without_it() -> None:
    p, st = pipeline(), view(static_series()[0])
    arriving = view(dynamic_series()[0], count=2, complete=False)
    plan = p.inputs(st, [arriving], NOW + 1)
    assert plan.wait_until == NOW + RULES.companion_wait_s
    assert plan.note == "waiting for the dynamic series (still arriving)"
    late = p.inputs(st, [arriving], NOW + RULES.companion_wait_s)
    assert late.wait_until is None
    assert late.series == (InputSeries(PRIMARY, st.series_uid),)
    assert late.note == "dynamic series still arriving after 300 s: analysed without curves"


def test_plan_dynamic_only_waits_for_a_static_then_sums_frames() -> None:
    p, dy = pipeline(), view(dynamic_series()[0])
    plan = p.inputs(dy, [], NOW + 1)
    assert plan.wait_until == NOW + RULES.static_wait_s
    final = p.inputs(dy, [], NOW + RULES.static_wait_s)
    assert final.wait_until is None and final.series == (InputSeries(PRIMARY, dy.series_uid),)
    assert final.note == ("no static series after 60 s: static image summed from the "
                          "dynamic frames")
    # an arriving static: the dynamic defers to it
    arriving = view(static_series()[0], count=1, complete=False)
    deferred = p.inputs(dy, [arriving], NOW + 10 * RULES.static_wait_s)
    assert deferred.wait_until is not None and deferred.wait_until > NOW + 10 * RULES.static_wait_s
    assert deferred.series[0].series_uid == arriving.series_uid


def test_plan_incomplete_static_waits_then_is_taken_as_it_is() -> None:
    p = pipeline()
    short = view(static_series()[0], count=2)  # 2 of 3 announced slices, quiet-time complete
    plan = p.inputs(short, [], NOW + 1)
    assert plan.wait_until == NOW + RULES.companion_wait_s
    assert plan.note == "waiting for the static series (2 of 3 announced instances)"
    assert p.inputs(short, [], NOW + RULES.companion_wait_s).wait_until is None


def test_plan_lowest_series_number_and_nac_ignored() -> None:
    p = pipeline()
    first, second = view(static_series(2)[0]), view(static_series(5)[0])
    nac = view(static_series(3, ac=False)[0])
    for trigger in (first, second):
        others = [v for v in (first, second, nac) if v is not trigger]
        assert p.inputs(trigger, others, NOW).series == (InputSeries(PRIMARY, first.series_uid),)


# --- the scheduler path ----------------------------------------------------------
class Node:
    """A store, a spool and the real scheduler with the FDOPA pipeline only."""

    def __init__(self, tmp_path: Path) -> None:
        self.database = node_rows(tmp_path / "state.sqlite3")
        self.database.migrate()
        self.conn = self.database.connect()
        self.spool = Spool(tmp_path / "spool")
        self.files = tmp_path / "files"
        self.scheduler = Scheduler(self.database, self.spool, {"fdopa_pet": pipeline()})

    def receive(self, datasets: list[Dataset], at: float, upto: int | None = None) -> None:
        folder = self.files / str(datasets[0].SeriesNumber)
        for path in write_series(datasets[:upto], folder):
            parsed = read_header(path)
            target = self.spool.instance_path(parsed.study_uid, parsed.series_uid,
                                              parsed.sop_instance_uid)
            size = self.spool.write_atomic(target, [path.read_bytes()])
            rec = db.InstanceRecord(parsed.sop_instance_uid, parsed.study_uid,
                                    parsed.series_uid, parsed.info.sop_class_uid,
                                    parsed.transfer_syntax, "STORESCU",
                                    self.spool.relative(target), size, at)
            with self.conn:
                completion.record_instance(self.conn, rec, parsed.info, QUIET_S)

    def round(self, at: float) -> int:
        return self.scheduler.run_once(self.conn, at)

    def jobs(self) -> list[tuple[str, str, list[tuple[str, str, int]]]]:
        out = []
        for (job_id,) in self.conn.execute("SELECT id FROM jobs ORDER BY id"):
            job = jobs.get(self.conn, job_id)
            assert job is not None
            out.append((job.state, job.series_uid,
                        [(i.role, i.series_uid, len(i.instance_uids)) for i in job.inputs]))
        return out

    def states(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT series_uid, state FROM series"))


@pytest.fixture
def node(tmp_path: Path) -> Any:
    n = Node(tmp_path)
    yield n
    n.conn.close()


def _uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


def test_static_then_dynamic_arriving_makes_one_job(node: Node) -> None:
    st, dy = static_series(), dynamic_series()
    node.receive(st, NOW)                       # complete by count (3 slices)
    node.receive(dy, NOW, upto=3)               # half of the dynamic so far
    assert node.round(NOW + 1) == 0             # the static waits for the dynamic
    node.receive(dy[3:], NOW + 20)
    assert node.round(NOW + 21) == 1            # the dynamic completes: the study's job
    assert node.round(NOW + 22) == 0            # the static's plan is the same job
    assert node.jobs() == [("pending", _uid(st), [(PRIMARY, _uid(st), 3),
                                                  (DYNAMIC, _uid(dy), 6)])]
    assert set(node.states().values()) == {"routed"}


def test_dynamic_then_static_makes_one_job(node: Node) -> None:
    st, dy = static_series(), dynamic_series()
    node.receive(dy, NOW)
    assert node.round(NOW + 1) == 0             # waits static_wait_s for a static
    node.receive(st, NOW + 30)
    assert node.round(NOW + 31) == 1
    assert node.round(NOW + 32) == 0
    assert node.jobs() == [("pending", _uid(st), [(PRIMARY, _uid(st), 3),
                                                  (DYNAMIC, _uid(dy), 6)])]
    assert set(node.states().values()) == {"routed"}


def test_dynamic_only_after_the_wait(node: Node) -> None:
    dy = dynamic_series()
    node.receive(dy, NOW)
    assert node.round(NOW + RULES.static_wait_s - 1) == 0
    assert node.round(NOW + RULES.static_wait_s) == 1
    assert node.jobs() == [("pending", _uid(dy), [(PRIMARY, _uid(dy), 6)])]


def test_late_dynamic_supersedes_the_static_only_job(node: Node) -> None:
    st, dy = static_series(), dynamic_series()
    node.receive(st, NOW)
    assert node.round(NOW + 1) == 1             # nothing announced: the static alone
    node.receive(dy, NOW + 100)
    assert node.round(NOW + 101) == 1           # same primary: replaces the first job
    assert node.jobs() == [
        ("superseded", _uid(st), [(PRIMARY, _uid(st), 3)]),
        ("pending", _uid(st), [(PRIMARY, _uid(st), 3), (DYNAMIC, _uid(dy), 6)])]


def test_nac_series_is_ignored_with_its_reason(node: Node) -> None:
    nac = static_series(3, ac=False)
    node.receive(nac, NOW)
    assert node.round(NOW + 1) == 0
    [(routing,)] = node.conn.execute("SELECT routing_json FROM series").fetchall()
    assert node.states() == {_uid(nac): "ignored"}
    assert "declined: not attenuation-corrected (Corrected Image lacks ATTN)" in routing


# --- the FLAIR of the MR-guided route ---------------------------------------------------
FLAIR_RULES = WaitRules(companion_wait_s=300.0, static_wait_s=60.0, flair_wait_s=200.0)


def flair_series(study_uid: str, number: int = 10, inversion_ms: float | None = 2500.0,
                 description: str = "AX FLAIR", slices: int = 3) -> list[Dataset]:
    """A tiny per-slice MR series (8 x 8 pixels) of the study."""
    series_uid = generate_uid(entropy_srcs=[study_uid, str(number)])
    out = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID, ds.Modality = MR_IMAGE_STORAGE, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, description
        ds.ScanningSequence = "SE\\IR" if inversion_ms is not None else "GR"
        if inversion_ms is not None:
            ds.InversionTime = inversion_ms
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "for"])
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = np.full((8, 8), 100 + k, np.uint16).tobytes()
        out.append(ds)
    return out


def flair_pipeline(rules: WaitRules = FLAIR_RULES) -> FdopaPetPipeline:
    template: Any = SimpleNamespace(sha256="0" * 64)
    return FdopaPetPipeline(template, None, Options(rules=rules))


def test_plan_takes_a_complete_flair_without_waiting() -> None:
    st, dy = static_series(), dynamic_series()
    study = str(st[0].StudyInstanceUID)
    flair, other = view(flair_series(study)[0]), view(flair_series(study, 12)[0])
    t1 = view(flair_series(study, 8, None, "T1 MPRAGE")[0])
    p, sv, dv = flair_pipeline(), view(st[0]), view(dy[0])
    for trigger, others in ((sv, [dv, other, flair, t1]), (dv, [t1, flair, sv, other])):
        plan = p.inputs(trigger, others, NOW)
        assert plan.wait_until is None and plan.note == ""
        assert plan.series == (InputSeries(PRIMARY, sv.series_uid),
                               InputSeries(DYNAMIC, dv.series_uid),
                               InputSeries(FLAIR, flair.series_uid))  # lowest Series Number


def test_plan_waits_bounded_for_an_arriving_flair_then_goes_pet_only() -> None:
    st = static_series()
    sv = view(st[0])
    arriving = view(flair_series(str(st[0].StudyInstanceUID))[0], count=1, complete=False)
    p = flair_pipeline()
    plan = p.inputs(sv, [arriving], NOW + 1)
    assert plan.wait_until == NOW + FLAIR_RULES.flair_wait_s
    assert plan.note == "waiting for the FLAIR series (still arriving)"
    late = p.inputs(sv, [arriving], NOW + FLAIR_RULES.flair_wait_s)
    assert late.wait_until is None and late.series == (InputSeries(PRIMARY, sv.series_uid),)
    assert late.note == "PET-only route: FLAIR series still arriving after 200 s"


def test_plan_waits_for_an_expected_flair_only_when_the_site_says_so() -> None:
    sv = view(static_series()[0])
    t1 = view(flair_series(str(sv.study_uid), 8, None, "T1 MPRAGE")[0])
    assert flair_pipeline().inputs(sv, [t1], NOW + 1) == InputPlan.single(sv.series_uid)
    expecting = flair_pipeline(replace(FLAIR_RULES, expect_flair=True))
    plan = expecting.inputs(sv, [t1], NOW + 1)
    assert plan.wait_until == NOW + FLAIR_RULES.flair_wait_s
    assert plan.note == "waiting for a FLAIR series (expected at this site)"
    late = expecting.inputs(sv, [t1], NOW + FLAIR_RULES.flair_wait_s)
    assert late == InputPlan.single(sv.series_uid,
                                    "PET-only route: no FLAIR in the study after 200 s")


def test_plan_flair_waits_after_the_dynamic_waits() -> None:
    st, dy = static_series(), dynamic_series()
    sv = view(st[0])
    dynamic = view(dy[0], count=2, complete=False)
    flair = view(flair_series(str(sv.study_uid))[0])
    plan = flair_pipeline().inputs(sv, [dynamic, flair], NOW + 1)
    assert plan.note == "waiting for the dynamic series (still arriving)"
    assert plan.wait_until == NOW + FLAIR_RULES.companion_wait_s
    late = flair_pipeline().inputs(sv, [dynamic, flair], NOW + FLAIR_RULES.companion_wait_s)
    assert late.series == (InputSeries(PRIMARY, sv.series_uid),
                           InputSeries(FLAIR, flair.series_uid))
    assert late.note.startswith("dynamic series still arriving after 300 s")


def test_static_then_arriving_flair_makes_one_job_with_the_flair(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.scheduler = Scheduler(n.database, n.spool, {"fdopa_pet": flair_pipeline()})
    try:
        st = static_series()
        mr = flair_series(str(st[0].StudyInstanceUID))
        n.receive(st, NOW)
        n.receive(mr, NOW, upto=1)                  # the FLAIR's first slice
        assert n.round(NOW + 1) == 0                # the static waits for the FLAIR
        n.receive(mr[1:], NOW + 5)
        assert n.round(NOW + 5 + QUIET_S) == 1      # the FLAIR is quiet: the study's job
        assert n.round(NOW + 6 + QUIET_S) == 0
        assert n.jobs() == [("pending", _uid(st), [(PRIMARY, _uid(st), 3),
                                                   (FLAIR, _uid(mr), 3)])]
        assert n.states()[_uid(mr)] == "routed"     # its plan is the PET's: the same job
    finally:
        n.conn.close()


def test_late_static_supersedes_the_dynamic_only_job(node: Node) -> None:
    st, dy = static_series(), dynamic_series()
    node.receive(dy, NOW)
    assert node.round(NOW + RULES.static_wait_s) == 1    # no static: the dynamic alone
    sent = {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34", "sop_instance_uid": "1.2.3.4"}
    with node.conn:  # the dynamic-only result reached the PACS
        node.conn.execute("UPDATE jobs SET state = 'done', outputs_json = ? WHERE id = 1",
                          (json.dumps([sent]),))
        node.conn.execute(
            "INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid, path,"
            " state, next_attempt_at, created_at) VALUES (1, 'pacs', '1.2.3.4', ?, 'x', 'sent',"
            " ?, ?)", (sent["sop_class_uid"], NOW, NOW))
    node.receive(st, NOW + 500)
    assert node.round(NOW + 501) == 1                     # the static's job reads both
    assert node.jobs() == [
        ("superseded", _uid(dy), [(PRIMARY, _uid(dy), 6)]),
        ("pending", _uid(st), [(PRIMARY, _uid(st), 3), (DYNAMIC, _uid(dy), 6)])]
    newest = jobs.get(node.conn, 2)
    assert newest is not None  # its SR names the dynamic-only result as predecessor
    assert jobs.previous_sent_outputs(node.conn, newest) == (sent,)


def test_select_takes_a_flair_and_its_plan_is_the_pets_or_no_job() -> None:
    st = static_series()
    study = str(st[0].StudyInstanceUID)
    p, sv = flair_pipeline(), view(st[0])
    flair, t1 = view(flair_series(study)[0]), view(flair_series(study, 8, None, "T1 MPRAGE")[0])
    assert p.select(flair).taken and "FLAIR" in p.select(flair).reason
    assert not p.select(t1).taken
    assert p.inputs(flair, [sv, t1], NOW) == p.inputs(sv, [flair, t1], NOW)  # one job
    assert p.inputs(flair, [sv], NOW).series == (InputSeries(PRIMARY, sv.series_uid),
                                                 InputSeries(FLAIR, flair.series_uid))
    alone = p.inputs(flair, [t1], NOW)
    assert alone.series == () and alone.wait_until is None
    assert alone.note == "FLAIR series: no FDOPA PET series in the study"


def test_late_flair_supersedes_the_pet_only_job(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.scheduler = Scheduler(n.database, n.spool, {"fdopa_pet": flair_pipeline()})
    try:
        st = static_series()
        mr = flair_series(str(st[0].StudyInstanceUID))
        n.receive(st, NOW)
        assert n.round(NOW + 1) == 1                # no FLAIR announced: the PET-only job
        sent = {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34", "sop_instance_uid": "1.2.3.5"}
        with n.conn:  # the PET-only result reached the PACS
            n.conn.execute("UPDATE jobs SET state = 'done', outputs_json = ? WHERE id = 1",
                           (json.dumps([sent]),))
            n.conn.execute(
                "INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid, path,"
                " state, next_attempt_at, created_at) VALUES (1, 'pacs', '1.2.3.5', ?, 'x',"
                " 'sent', ?, ?)", (sent["sop_class_uid"], NOW, NOW))
        n.receive(mr, NOW + 900)                    # the FLAIR, long after the job
        assert n.round(NOW + 900 + QUIET_S) == 1    # the FLAIR's plan: PET + FLAIR
        assert n.round(NOW + 901 + QUIET_S) == 0
        assert n.jobs() == [
            ("superseded", _uid(st), [(PRIMARY, _uid(st), 3)]),
            ("pending", _uid(st), [(PRIMARY, _uid(st), 3), (FLAIR, _uid(mr), 3)])]
        newest = jobs.get(n.conn, 2)
        assert newest is not None  # its SR names the PET-only result as predecessor
        assert jobs.previous_sent_outputs(n.conn, newest) == (sent,)
    finally:
        n.conn.close()


def test_a_flair_without_fdopa_pet_in_its_study_makes_no_job(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.scheduler = Scheduler(n.database, n.spool, {"fdopa_pet": flair_pipeline()})
    try:
        mr = flair_series(generate_uid(entropy_srcs=["an MR-only study"]))
        n.receive(mr, NOW)
        assert n.round(NOW + QUIET_S) == 0
        assert n.jobs() == [] and n.states() == {_uid(mr): "ignored"}
        [(routing,)] = n.conn.execute("SELECT routing_json FROM series").fetchall()
        assert "declined: FLAIR series: no FDOPA PET series in the study" in routing
    finally:
        n.conn.close()

