#!/bin/sh
# The FDOPA SEG overlaid on its PET in the OHIF viewer: docs/img/fdopa_seg_ohif.png.
#
# Manual, not part of `make test`. Needs (once):
#   apt-get install -y orthanc orthanc-dicomweb chromium chromium-driver npm
#   mkdir -p .cache/ohif && (cd .cache/ohif && npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz)
# (the prebuilt OHIF app, 50 MB, MIT licence; its dist/ folder is served as is).
# This script installs nothing. About 2 min on 2 cores (simulation, analysis, viewer).
set -eu
cd "$(dirname "$0")/.."
DIST=${OHIF_DIST:-.cache/ohif/package/dist}
PY=${PYTHON:-.venv/bin/python}
PYTHONPATH=$PWD exec "$PY" -m service.testing.fdopa_viewer "$DIST" docs/img/fdopa_seg_ohif.png "$@"
