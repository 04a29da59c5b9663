"""Screenshot of an FDOPA SEG overlaid on its PET in the OHIF viewer (docs/img).

``python -m service.testing.fdopa_viewer OHIF_DIST OUT.png [--work DIR]``
(``scripts/fdopa_viewer_screenshot.sh`` documents the one manual download):

1. simulates the small ``fine`` study of :mod:`service.testing.fdopa_study`
   (static 10-30 min + dynamic, seed 3, a hemispheric high-grade glioma);
2. runs ``dopanode analyze`` on its static and dynamic series (the shipped
   U-Net, the node's code path), which writes ``seg.dcm``;
3. starts a real Orthanc with its DICOMweb plugin (Debian
   ``orthanc-dicomweb``) and stores the static PET and the SEG through REST;
4. serves the prebuilt OHIF app in front of it (:class:`.ohif.OhifServer`);
5. drives headless Chromium (WebDriver): skips the tour, double-clicks the SEG
   in the study browser, answers "Yes" to "Do you want to open this
   Segmentation?", scrolls the PET stack to the slice with the most lesion
   voxels, and saves a screenshot.

Not part of ``make test`` (the viewer is 50 MB from npm). Fails loudly when a
step does not happen (no silent screenshot of an empty viewer).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from service.testing.fdopa_study import analysed_small_study
from service.testing.ohif import OhifServer, dicomweb_config
from service.testing.orthanc import OrthancPeer
from service.testing.webdriver import ELEMENT_KEY, Browser, Element

#: WebGL without a GPU (SwiftShader); OHIF's cornerstone3D renders with WebGL.
WEBGL_FLAGS = ("--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist")
FIND_BY_TEXT = ("const t = arguments[0]; return [...document.querySelectorAll("
                "'button,div,span,a')].filter(e => e.innerText && e.innerText.trim() == t)"
                ".pop() || null;")
ARROW_DOWN, ARROW_UP = "\ue015", "\ue013"


def lesion_slice_rank(static: Sequence[Path], seg_path: Path) -> int:
    """0-based rank, top (head) first as OHIF shows it, of the slice with most lesion voxels."""
    seg = pydicom.dcmread(seg_path)
    lesion_numbers = {int(s.SegmentNumber) for s in seg.SegmentSequence
                      if str(s.SegmentLabel).startswith("Tumour")}
    voxels: Counter[float] = Counter()
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if number in lesion_numbers:
            z = round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 2)
            voxels[z] += int(np.count_nonzero(frame))
    best_z = voxels.most_common(1)[0][0]
    zs = sorted((round(float(pydicom.dcmread(p, stop_before_pixels=True)
                             .ImagePositionPatient[2]), 2) for p in static), reverse=True)
    return zs.index(best_z)


def click_text(browser: Browser, text: str, double: bool = False, timeout_s: float = 60) -> None:
    """Click (or double-click) the innermost element whose visible text is ``text``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ref = browser.execute(FIND_BY_TEXT, text)
        if ref:
            try:
                if double:
                    _pointer(browser, ref, ("pointerDown", "pointerUp") * 2)
                else:
                    Element(browser, ref[ELEMENT_KEY]).click()
                return
            except RuntimeError:  # re-rendered between find and click: find it again
                pass
        time.sleep(0.5)
    raise RuntimeError(f"no element with the text {text!r} in the viewer")


def _pointer(browser: Browser, origin: dict[str, str], steps: Sequence[str]) -> None:
    actions = [{"type": "pointerMove", "origin": origin, "x": 0, "y": 0},
               *({"type": step, "button": 0} for step in steps)]
    browser.command("POST", "/actions", {"actions": [
        {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
         "actions": actions}]})


def scroll_to(browser: Browser, rank: int, timeout_s: float = 30) -> None:
    """Arrow keys in the viewport until it shows slice ``rank`` + 1 (OHIF's ``(n/87)``)."""
    canvas = browser.execute("return document.querySelector('.cornerstone-canvas, canvas')")
    _pointer(browser, canvas, ())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = re.search(r"\((\d+)/\d+\)", browser.text())
        if shown and int(shown.group(1)) == rank + 1:
            return
        key = ARROW_DOWN if shown is None or int(shown.group(1)) < rank + 1 else ARROW_UP
        keys = [{"type": kind, "value": key} for kind in ("keyDown", "keyUp")]
        browser.command("POST", "/actions", {"actions": [
            {"type": "key", "id": "keyboard", "actions": keys}]})
        time.sleep(0.3)
    raise RuntimeError(f"the viewer did not reach slice {rank + 1}")


def screenshot(dist: Path, png: Path, work: Path) -> Path:
    """Run the whole reproduction (see the module docstring); returns ``png``."""
    static, out = analysed_small_study(work)
    [seg] = out.glob("*/seg.dcm")
    rank = lesion_slice_rank(static, seg)
    study_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).StudyInstanceUID)
    config = dicomweb_config()
    stamp = time.strftime("%Y%m%d%H%M%S")
    with OrthancPeer(work / f"orthanc-{stamp}", extra_config=config) as pacs:
        for path in [*static, seg]:
            pacs.upload(path.read_bytes())
        with OhifServer(dist, pacs.url) as viewer, \
                Browser(work / f"profile-{stamp}", 1400, 900, extra_flags=WEBGL_FLAGS) as browser:
            browser.get(viewer.viewer_url(study_uid))
            click_text(browser, "Skip all")
            click_text(browser, "Confirm and hide")
            click_text(browser, "SEG", double=True)
            click_text(browser, "Yes")
            browser.wait_for("return !document.body.innerText.includes("
                             "'Do you want to open this Segmentation?')", 60, "SEG loaded")
            scroll_to(browser, rank)
            time.sleep(3)  # the labelmap repaints after the slice change; no event to wait on
            png.parent.mkdir(parents=True, exist_ok=True)
            return browser.screenshot(png, full_page=False)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.testing.fdopa_viewer")
    parser.add_argument("dist", type=Path, help="the dist folder of npm's @ohif/app 3.13.2")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dopanode-fdopa-viewer"))
    args = parser.parse_args(argv)
    print(screenshot(args.dist, args.png, args.work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
