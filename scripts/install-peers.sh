#!/usr/bin/env bash
# Installs the real DICOM peers the tests talk to (Debian packages):
# DCMTK (storescu, echoscu, storescp, dsrdump, dsr2html), Orthanc, dicom3tools (dciodvfy),
# Prometheus (prometheus, promtool: the alert rules and their tests under deploy/prometheus/)
# docker-compose (validates deploy/compose/docker-compose.yml offline), PostgreSQL
# (the server the tests of the postgres storage backend start on loopback) and
# Chromium with its WebDriver (the admin page's browser test), HAProxy (the TCP
# balancer in front of two listeners, tests/integration/test_haproxy.py) and Orthanc's
# DICOMweb plugin (the OHIF front's test, tests/integration/test_ohif_server.py) and
# rsyslog with its TLS driver (the audit trail to an audit record repository,
# deploy/rsyslog/, tests/integration/test_audit_syslog.py).
set -euo pipefail
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
    || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog-gnutls)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing test peers: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
