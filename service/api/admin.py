"""The admin page and the summaries it reads.

``GET /admin`` serves a static page (HTML, CSS, JS from ``static/``; no build
step, no external resources) that holds no data itself: it calls the JSON API
with the token the user enters (kept in the tab's ``sessionStorage``), so it
follows the API's token rules (without ``api.token``, loopback clients only).

Under ``/api`` (token-protected, mounted by :func:`service.api.app.create_app`):

* ``GET /queue``: jobs per pipeline and state, series per state;
* ``GET /outbox``: per destination, items by state, oldest pending age, last
  success and last error;
* ``GET /studies``: the studies with the newest jobs, each pipeline's latest
  job with its result and its picture report's job id; patient names only
  when ``api.show_patient_names`` is on (read from the result's header);
* ``GET /jobs/{id}/picture.png``: the job's picture report (the Secondary
  Capture in the spool) as PNG.
"""

from __future__ import annotations

import io
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydicom
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from service.api.common import SQL_INT_MAX, connection
from service.store import job_views, jobs, outbox_views
from service.store import series as series_store
from service.store.blobs import Blobs, open_blobs
from service.store.spool import output_path

log = logging.getLogger(__name__)

#: SOP classes of picture reports the page can show.
PICTURE_CLASSES = (str(SecondaryCaptureImageStorage),
                   str(MultiFrameTrueColorSecondaryCaptureImageStorage))
_STATIC = {"admin.js": "text/javascript", "admin.css": "text/css"}
_NO_STORE = {"Cache-Control": "no-store"}


def _static(name: str) -> str:
    return resources.files("service.api").joinpath("static", name).read_text(encoding="utf-8")


def page_routes() -> APIRouter:
    """``GET /admin`` and its script and style sheet (no auth: they hold no data)."""
    router = APIRouter(tags=["admin"], include_in_schema=False)
    # Only what the page's own files need: no inline script, no other origin.
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
           "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
    headers = {**_NO_STORE, "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}

    @router.get("/admin", response_class=HTMLResponse)
    def admin_page() -> HTMLResponse:
        return HTMLResponse(_static("admin.html"), headers=headers)

    @router.get("/admin/{name}")
    def admin_file(name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(404, "no such file")
        return Response(_static(name), media_type=_STATIC[name], headers=headers)

    return router


def picture_output(job: jobs.Job) -> dict[str, str] | None:
    """The job's picture report reference (first Secondary Capture output), or None."""
    return next((o for o in job.outputs if o.get("sop_class_uid") in PICTURE_CLASSES), None)


def picture_png(path: Path) -> bytes:
    """Encode the first frame of a Secondary Capture file as PNG.

    Parameters
    ----------
    path : Path
        A Part 10 file (RGB or MONOCHROME2, 8 bit; other depths are scaled to 8 bit).

    Returns
    -------
    bytes
        The PNG file.
    """
    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        span = float(pixels.max() - pixels.min()) or 1.0
        pixels = ((pixels - pixels.min()) * (255.0 / span)).astype(np.uint8)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 255 - pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def output_file(blobs: Blobs, spool_dir: Path, job_id: int,
                ref: dict[str, str]) -> AbstractContextManager[Path]:
    """A local file of one output while the context lasts.

    ``ref["key"]`` is the blob key of the attempt whose finish won (every
    job since per-attempt keys); refs written before have none, their file
    is ``outputs/<job>/<sop>.dcm`` in the spool.
    """
    if "key" in ref:
        return blobs.local_copy(ref["key"])
    return nullcontext(output_path(spool_dir, job_id, ref["sop_instance_uid"]))


def _patient_name(blobs: Blobs, spool_dir: Path, job: jobs.Job) -> str | None:
    """The patient name in the header of the job's first output (None if none is readable)."""
    for ref in job.outputs:
        try:
            with output_file(blobs, spool_dir, job.id, ref) as path:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientName"])
        except (OSError, InvalidDicomError, ValueError, KeyError):
            continue
        return str(ds.get("PatientName", "") or "")
    return None


def _study_job_view(job: jobs.Job) -> dict[str, Any]:
    picture = picture_output(job)
    return {"id": job.id, "pipeline": job.pipeline, "series_uid": job.series_uid,
            "state": job.state, "reason": job.reason, "reason_code": job.reason_code,
            "finished_at": job.finished_at, "result": job.to_dict()["result"],
            "picture": None if picture is None else f"/api/jobs/{job.id}/picture.png"}


def admin_api_routes(settings: Any, db: Any) -> APIRouter:
    """The summaries behind the admin page (mounted under /api with the token)."""
    router = APIRouter(tags=["admin"])
    spool_dir = Path(settings.storage.spool_dir)
    blobs = open_blobs(settings.storage)  # read-only: the API never creates the spool
    destinations = [d.name for d in settings.destinations]
    show_names = bool(settings.api.show_patient_names)

    @router.get("/queue")
    def queue() -> dict[str, Any]:
        """Jobs per pipeline and state (every state present) and series per state."""
        with connection(db) as conn:
            counts = job_views.counts(conn)
            series_counts = series_store.state_counts(conn)
        per_pipeline: dict[str, dict[str, int]] = {}
        for (pipeline, state), n in sorted(counts.items()):
            per_pipeline.setdefault(pipeline, dict.fromkeys(jobs.JOB_STATES, 0))[state] = n
        return {"states": list(jobs.JOB_STATES), "jobs": per_pipeline, "series": series_counts}

    @router.get("/outbox")
    def outbox_summary() -> dict[str, Any]:
        """Deliveries per destination (configured ones first, even when empty)."""
        with connection(db) as conn:
            found = outbox_views.destination_summaries(conn, destinations)
        return {"destinations": [asdict(d) for d in found]}

    @router.get("/studies")
    def recent_studies(
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> dict[str, Any]:
        """The studies with the newest jobs, each pipeline's latest job and result."""
        with connection(db) as conn:
            found = job_views.recent_studies(conn, limit)
        studies = []
        for study_uid, study_jobs in found:
            view: dict[str, Any] = {"study_uid": study_uid,
                                    "jobs": [_study_job_view(j) for j in study_jobs]}
            if show_names:
                view["patient_name"] = next(
                    (n for n in (_patient_name(blobs, spool_dir, j) for j in study_jobs) if n), None)
            studies.append(view)
        return {"studies": studies, "limit": limit}

    @router.get("/jobs/{job_id}/picture.png", response_class=Response,
                responses={200: {"content": {"image/png": {}}}})
    def picture(job_id: Annotated[int, PathParam(ge=1, le=SQL_INT_MAX)]) -> Response:
        """The job's picture report (its Secondary Capture output) as PNG."""
        with connection(db) as conn:
            job = jobs.get(conn, job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} does not exist")
        ref = picture_output(job)
        if ref is None:
            raise HTTPException(404, f"job {job_id} has no picture report")
        try:
            with output_file(blobs, spool_dir, job_id, ref) as path:
                png = picture_png(path)
        except FileNotFoundError:
            raise HTTPException(404, f"job {job_id}'s picture report is no longer in the spool"
                                ) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private"})

    return router
