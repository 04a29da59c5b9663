#!/usr/bin/env bash
# dciodvfy (dicom3tools) on the first file of every series of every EVERY-th study
# of a generated FDOPA benchmark; prints each error and the totals; exits 1 on any.
# dciodvfy cannot read Deflated Explicit VR Little Endian, so such a file is first
# inflated by DCMTK's dcmconv (+te) into a temporary copy.
# Usage: scripts/dciodvfy_benchmark_sample.sh BENCH_DIR [EVERY (default 15; 1 = every study)]
set -euo pipefail
bench=${1:?usage: $0 BENCH_DIR [EVERY]}
every=${2:-15}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
files=0 errors=0 inflated=0
for site in "$bench"/site_*/; do
  for study in $(find "$site" -mindepth 1 -maxdepth 1 -type d | sort | awk -v k="$every" '(NR - 1) % k == 0'); do
    for series in "$study"/*/; do
      shopt -s nullglob; first=("$series"*.dcm); shopt -u nullglob
      [ "${#first[@]}" -gt 0 ] || continue
      f=${first[0]}
      if dcmdump -q +P 0002,0010 "$f" | grep -q -e 'DeflatedLittleEndianExplicit' -e '1\.2\.840\.10008\.1\.2\.1\.99'; then
        dcmconv -q +te "$f" "$tmp/inflated.dcm"; f_check="$tmp/inflated.dcm"; inflated=$((inflated + 1))
      else
        f_check=$f
      fi
      n=$( (dciodvfy "$f_check" 2>&1 || true) | grep -c '^Error' || true)
      files=$((files + 1)); errors=$((errors + n))
      if [ "$n" -gt 0 ]; then echo "errors in $f:"; dciodvfy "$f_check" 2>&1 | grep '^Error' | head -5; fi
    done
  done
done
echo "files checked: $files (deflated, inflated first: $inflated), dciodvfy errors: $errors"
[ "$errors" -eq 0 ]
