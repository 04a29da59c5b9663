"""The DaT pipeline's shipped assets: FP-CIT template, SBR calibration, normal database.

They live in ``models/template/`` (see its README for how they were made, from
simulated scans); a site may point ``[pipelines.dat_spect] template_dir`` at
its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.imaging.atlas import Atlas, load_atlas
from service.paths import default_models_dir
from service.pipelines.dat_spect.levels import Calibration
from service.pipelines.dat_spect.normals import NormalDatabase
from service.pipelines.dat_spect.protocol import ByProtocol, read_by_protocol
from service.pipelines.dat_spect.template import load_template

TEMPLATE_FILE = "fpcit_template_mni2mm.npz"
#: The second registration target, for series without attenuation correction
#: (``models/template/build_noac_template.py``; optional in a site's folder).
NOAC_TEMPLATE_FILE = "fpcit_template_noac_mni2mm.npz"
CALIBRATION_FILE = "calibration.json"
NORMALS_FILE = "normals.json"


@dataclass(frozen=True, eq=False)
class DatModels:
    """What the conventional analysis needs besides the scan.

    Attributes
    ----------
    atlas : Atlas
    template_zyx : (91, 109, 91) float32 array
    calibration : ByProtocol of Calibration, or None
        One set of thresholds per correction family, or one for every series
        (:mod:`.protocol`); None only where no scoring is done (labelling,
        building normals).
    normals : ByProtocol of NormalDatabase, or None
    sha256 : str
        Hash over the files present, identifying this configuration in the SR.
    directory : Path
        Where the files were read from.
    noac_template_zyx : (91, 109, 91) float32 array or None
        The second registration target for series without attenuation
        correction (:func:`service.pipelines.dat_spect.normalise.normalise_series`);
        None where the folder has none (no second attempt).
    """

    atlas: Atlas
    template_zyx: np.ndarray
    calibration: ByProtocol[Calibration] | None
    normals: ByProtocol[NormalDatabase] | None
    sha256: str
    directory: Path
    noac_template_zyx: np.ndarray | None = None


def load_dat_models(directory: Path | None = None, atlas: Atlas | None = None) -> DatModels:
    """Load template, calibration and normal database from ``directory``.

    Calibration, normal database and the no-AC template are None where their
    files are absent.

    Raises
    ------
    FileNotFoundError
        The template is missing.
    """
    directory = directory or default_models_dir() / "template"
    atlas = atlas or load_atlas()
    digest = hashlib.sha256()
    paths = [directory / TEMPLATE_FILE, directory / CALIBRATION_FILE, directory / NORMALS_FILE,
             directory / NOAC_TEMPLATE_FILE]
    for path in paths:
        if path.exists():
            digest.update(path.read_bytes())
    normals = (read_by_protocol(json.loads(paths[2].read_text()), NormalDatabase.from_dict)
               if paths[2].exists() else None)
    calibration = (read_by_protocol(json.loads(paths[1].read_text()), Calibration.from_dict)
                   if paths[1].exists() else None)
    return DatModels(
        atlas=atlas,
        template_zyx=load_template(paths[0], atlas),
        calibration=calibration,
        normals=normals,
        sha256=digest.hexdigest(),
        directory=directory,
        noac_template_zyx=load_template(paths[3], atlas) if paths[3].exists() else None,
    )
