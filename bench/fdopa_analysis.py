"""FDOPA analysis benchmark: time per study by stage, and peak RSS of ``dopanode serve``.

One command, ``python bench/fdopa_analysis.py``, in one run:

1. simulates (or reuses, ``--work``) one study of the FDOPA benchmark with its
   seed (``plan_study(SITES[site], index)``, default ``site_a`` #1: the
   Siemens-like profile, a hemispheric high-grade glioma, static 10-30 min and
   a ``nancy30`` dynamic series of 17 frames; the MR series is left out unless
   ``--with-mr``, which takes the site's first paediatric tumour study with a
   dynamic series and a FLAIR, so serve also runs the MR-guided route) and
   one DaT SPECT study with ``dopanode simulate`` (the peer);
2. runs the FDOPA pipeline in-process (the shipped U-Net and template, as
   ``[pipelines.fdopa_pet]`` builds it) after one untimed warm-up run, ``--n``
   times on the static series alone and ``--n`` times on static + dynamic, and
   the DaT pipeline ``--n`` times on the DaT study; prints the median of every
   stage, the median total, and the ratio FDOPA / DaT measured in this run;
3. with ``--rss``, starts ``dopanode serve`` (both pipelines enabled, the
   shipped worker and sender settings, DCMTK ``storescp`` as destination),
   sends the FDOPA study (static + dynamic + non-AC + CT) and the DaT study with
   ``storescu``, waits until both jobs are done, and prints the peak RSS of the
   serve process tree (VmRSS of the tree sampled every 50 ms and the sum of
   every process's VmHWM, ``bench/e2e.py``'s sampler).

Goals (issue 12): static study under 10 s, with dynamic curves under 20 s;
peak RSS of serve with both pipelines under 700 MB.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common import Study, machine_note, median, print_table, simulate, verdict

STATIC_GOAL_S, DYNAMIC_GOAL_S, RSS_GOAL_MB = 10.0, 20.0, 700.0
DAT_PROFILE = "siemens_lehr_osem_ctac"
#: Stage names of ``FdopaPetPipeline.run`` (``stage_durations_s``), in run order.
FDOPA_STAGES = ("gate", "volume", "suv", "register", "segment", "reference", "lesions",
                "measure", "dynamic", "seg", "sr", "picture", "summary")
STAGE_MEANING = {"volume": "load volumes (highdicom)", "suv": "SUV factor",
                 "register": "spatial normalisation", "segment": "U-Net (ONNX)",
                 "reference": "reference regions", "lesions": "PET RANO lesions",
                 "measure": "measures", "dynamic": "curves", "seg": "DICOM SEG",
                 "sr": "DICOM SR", "picture": "picture report"}


def mr_index(site: str) -> int:
    """The site's first paediatric tumour study with a dynamic series and a FLAIR."""
    from service.sim.fdopa.benchmark import SITES, plan_study

    for index in range(SITES[site].n_studies):
        plan = plan_study(SITES[site], index)
        if (plan.paediatric and plan.flair and plan.schedule
                and plan.tumour_class != "none"):
            return index
    raise SystemExit(f"{site} has no paediatric study with dynamic series and FLAIR")


def fdopa_study(work: Path, site: str, index: int, with_mr: bool = False) -> Path:
    """The benchmark study's folder (simulated once; kept under ``work``)."""
    from service.sim.fdopa.benchmark import SITES, plan_study
    from service.sim.fdopa.study import simulate_study

    plan = plan_study(SITES[site], index)
    if not with_mr:
        plan = replace(plan, flair=None)
    elif plan.flair is None:
        raise SystemExit(f"{site} #{index} has no FLAIR; pick another --index")
    if plan.schedule is None:
        raise SystemExit(f"{site} #{index} has no dynamic series; pick another --index")
    folder = work / plan.study_id
    if not (folder / "truth.json").is_file():
        t0 = time.perf_counter()
        simulate_study(plan, work)
        print(f"simulated {plan.study_id} ({plan.profile}, {plan.tumour_class}, "
              f"{plan.schedule}) in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def _timed(run: Callable[[], dict[str, float]], n: int) -> list[dict[str, float]]:
    """``n`` runs after one warm-up; each run's stages plus ``total``, seconds."""
    run()
    rows = []
    for i in range(n):
        t0 = time.perf_counter()
        stages = dict(run())
        stages["total"] = time.perf_counter() - t0
        rows.append(stages)
        print(f"  run {i + 1}/{n}: {stages['total']:.2f} s", flush=True)
    return rows


def fdopa_runs(folder: Path, n: int) -> dict[str, list[dict[str, float]]]:
    """Static-only and static + dynamic runs of the FDOPA pipeline, in process."""
    from service.dicom.header import read_series
    from service.pipelines.base import PRIMARY, JobContext, LoadedInputs
    from service.pipelines.fdopa_pet.plan import DYNAMIC
    from service.pipelines.fdopa_pet.plugin import FdopaPetSettings, build

    pipeline = build(FdopaPetSettings())
    series = {PRIMARY: sorted((folder / "PT_STATIC").iterdir()),
              DYNAMIC: sorted((folder / "PT_DYNAMIC").iterdir())}

    def run(roles: tuple[str, ...]) -> dict[str, float]:
        t0 = time.perf_counter()
        loaded = {role: read_series(series[role]) for role in roles}
        read_s = time.perf_counter() - t0
        output = pipeline.run(LoadedInputs(loaded), JobContext(f"bench-{len(roles)}", time.time()))
        return {"read files": read_s, **output.stage_durations_s}

    return {"static": _timed(lambda: run((PRIMARY,)), n),
            "static + dynamic": _timed(lambda: run((PRIMARY, DYNAMIC)), n)}


def dat_runs(study: Study, n: int) -> list[dict[str, float]]:
    """The DaT pipeline on one simulated DaT study (the peer), in process."""
    from service.dicom.header import read_series
    from service.pipelines.base import PRIMARY, JobContext, LoadedInputs
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline

    pipeline = DatSpectPipeline()

    def run() -> dict[str, float]:
        loaded = {PRIMARY: read_series(study.files)}
        out = pipeline.run(LoadedInputs(loaded), JobContext("bench-dat", time.time()))
        return {k: float(v) for k, v in out.stage_durations_s.items()}

    return _timed(run, n)


def stage_table(runs: dict[str, list[dict[str, float]]], dat: list[dict[str, float]]) -> None:
    """Median seconds per stage, one column per case."""
    names = ["read files", *FDOPA_STAGES, "total"]
    rows = []
    for name in names:
        cells = [median([r.get(name, 0.0) for r in rs]) for rs in runs.values()]
        rows.append([f"{name} ({STAGE_MEANING[name]})" if name in STAGE_MEANING else name,
                     *[f"{c:.3f}" for c in cells]])
    print_table(["stage (median s)", *runs], rows)
    dat_total = median([r["total"] for r in dat])
    print(f"\nDaT pipeline on a DaT study (peer, same run): median {dat_total:.3f} s "
          f"over {len(dat)} runs")
    for case, rs in runs.items():
        total = median([r["total"] for r in rs])
        goal = STATIC_GOAL_S if case == "static" else DYNAMIC_GOAL_S
        print(f"FDOPA {case}: median {total:.2f} s = {total / dat_total:.2f} x DaT; "
              f"U-Net alone {median([r['segment'] for r in rs]):.2f} s; goal < {goal:.0f} s: "
              f"{verdict(total < goal)}")


def serve_rss(folder: Path, dat: Study, work: Path, timeout_s: float) -> tuple[float, float]:
    """(ready, peak) RSS of ``dopanode serve`` analysing the FDOPA and the DaT study, MB."""
    from e2e import RssSampler, start_storescp, storescu

    from service.config import SenderSettings, WorkerSettings
    from service.testing.node import NodeProcess
    from service.testing.polling import wait_until
    from service.testing.ports import free_port

    dest_port = free_port()
    dest = start_storescp(work / "dest", dest_port, "DEST")
    settings = {
        "destinations": [{"name": "dest", "ae_title": "DEST", "host": "127.0.0.1",
                          "port": dest_port}],
        "worker": WorkerSettings().model_dump(), "sender": SenderSettings().model_dump(),
        "pipelines": {"dat_spect": {"enabled": True}, "fdopa_pet": {"enabled": True}},
    }
    # The FLAIR (when simulated) goes first: a job made while it arrives waits for it.
    fdopa_files = [p for s in ("MR_FLAIR", "PT_DYNAMIC", "PT_STATIC", "PT_NAC", "CT_AC")
                   if (folder / s).is_dir() for p in sorted((folder / s).iterdir())]
    try:
        with NodeProcess(work / "node", settings=settings, test_pipelines=False) as node:
            node.start(timeout_s=120)
            assert node.proc is not None
            with RssSampler(node.proc.pid) as rss:
                for files in (fdopa_files, dat.files):
                    proc = storescu(node.scp_port, node.ae_title, files, required=True)
                    _, err = proc.communicate(timeout=timeout_s)
                    if proc.returncode != 0:
                        raise RuntimeError(f"storescu to the node failed: {err.decode()[-500:]}")

                def finished() -> bool:
                    states = [r[0] for r in node.query("SELECT state FROM jobs")]
                    return len(states) == 2 and all(s in ("done", "failed") for s in states)

                wait_until(finished, timeout_s, "both jobs finished")
            jobs = node.query("SELECT pipeline, state, reason FROM jobs ORDER BY id")
            print(f"serve jobs: {jobs}")
            outputs = node.query("SELECT j.pipeline, o.sop_class_uid, COUNT(*) FROM outbox o "
                                 "JOIN jobs j ON j.id = o.job_id "
                                 "GROUP BY j.pipeline, o.sop_class_uid ORDER BY 1, 2")
            print(f"outputs per pipeline and SOP class: {outputs}")
            if any(state != "done" for _, state, _ in jobs):
                raise RuntimeError(f"a job did not finish: {jobs}")
            return rss.ready_mb, rss.peak_mb
    finally:
        dest.terminate()
        dest.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default="site_a")
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--n", type=int, default=5, help="timed runs per case")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the simulated studies here (reused when present)")
    parser.add_argument("--rss", action="store_true", help="also measure dopanode serve")
    parser.add_argument("--rss-only", action="store_true", help="only measure dopanode serve")
    parser.add_argument("--with-mr", action="store_true",
                        help="a paediatric study with FLAIR (the MR-guided route runs too); "
                             "--index is then the site's first such study")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.with_mr:
        args.index = mr_index(args.site)
    with tempfile.TemporaryDirectory(prefix="dopanode-bench-fdopa-") as tmp:
        work = args.work or Path(tmp)
        folder = fdopa_study(work / "fdopa", args.site, args.index, args.with_mr)
        [dat_study] = simulate(Path(tmp) / "dat", DAT_PROFILE, 1, seed=7, variant=None)
        if not args.rss_only:
            print("DaT pipeline (peer)", flush=True)
            dat = dat_runs(dat_study, args.n)
            print("FDOPA pipeline", flush=True)
            runs = fdopa_runs(folder, args.n)
            print(f"\n{folder.name}: {machine_note()}\n")
            stage_table(runs, dat)
        if args.rss or args.rss_only:
            ready, peak = serve_rss(folder, dat_study, Path(tmp) / "serve", args.timeout)
            print(f"\ndopanode serve (DaT + FDOPA enabled): ready {ready:.0f} MB, peak "
                  f"{peak:.0f} MB during both jobs; goal < {RSS_GOAL_MB:.0f} MB: "
                  f"{verdict(peak < RSS_GOAL_MB)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
