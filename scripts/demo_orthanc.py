"""From a fresh clone to an SR in a real PACS: ``make demo``.

Starts a throw-away Orthanc (the Debian package) with dopanode as a
modality, starts ``dopanode serve`` with Orthanc as its destination, simulates
one DaT study, uploads it to Orthanc, pushes it to dopanode through Orthanc's
REST API exactly as an auto-routing rule would, waits until the SR and the
picture report are back in the same study in Orthanc, and prints the levels
read from the SR. ``--keep`` leaves both running so you can open the study in
Orthanc Explorer; Ctrl-C stops them.

Research use, not for diagnosis: the study is simulated, and the script prints
the simulator's truth beside the levels so the method's misses are visible.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd

from service.pipelines.dat_spect import codes
from service.testing.pacs import pacs_and_node, route_and_wait

ROOT = Path(__file__).resolve().parents[1]


def simulate(out: Path, seed: int) -> list[Path]:
    subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "simulate",
                    "--profile", "siemens_lehr_osem_ctac", "--n", "1", "--seed", str(seed),
                    "--variant", "multiframe", str(out)], check=True, cwd=ROOT)
    return sorted(out.rglob("*.dcm"))


def print_levels(sr_bytes: bytes, truth: dict[str, str]) -> None:
    """The SR's level per region beside the simulator's truth for that region."""
    print(f"simulated truth: {truth['disease_class']}, severity {truth['severity']}, "
          f"more affected side {truth['more_affected_side'] or '-'}")
    report = hd.sr.srread(io.BytesIO(sr_bytes))
    for group in report.content.get_image_measurement_groups():
        values = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
        level = values.get(codes.UPTAKE_LEVEL_CONCEPT.value)
        if level is not None:
            key = group.tracking_identifier.replace(" ", "_")
            sbr = next(float(m.value) for m in group.get_measurements()
                       if m.name.value == codes.SPECIFIC_BINDING_RATIO.value)
            print(f"  {group.tracking_identifier:15s} {level.meaning:20s} SBR {sbr:.2f} "
                  f"(true binding ratio {float(truth['true_br_' + key]):.2f}, "
                  f"SBR in the true ROI {float(truth['roi_sbr_' + key]):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep Orthanc and dopanode running")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dopanode-demo-"))
    print(f"working folder: {work}")
    files = simulate(work / "study", args.seed)
    with (work / "study" / "manifest.csv").open() as f:
        truth = next(csv.DictReader(f))
    with pacs_and_node(work) as (pacs, node):
        print(f"Orthanc: {pacs.url}/app/explorer.html   dopanode API: "
              f"http://127.0.0.1:{node.api_port}/ready (config {node.config_path})")
        ids = [pacs.upload(f.read_bytes()) for f in files]
        started = time.monotonic()
        series = route_and_wait(pacs, ids[0])
        print(f"SR and picture report are in the study after "
              f"{time.monotonic() - started:.1f} s:")
        sr = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
        sr_bytes = pacs._http().get(f"/instances/{sr['Instances'][0]}/file").content
        print_levels(sr_bytes, truth)
        if args.keep:
            print("running; Ctrl-C stops Orthanc and dopanode")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
