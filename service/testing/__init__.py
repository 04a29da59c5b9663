"""Test support shared by the tests, the benchmarks (bench/) and ``make demo``.

Real peers and a real node on free loopback ports, polling with deadlines,
small DICOM data and two test-only pipelines:

* :mod:`.ports` -- ``free_port``, ``tcp_open``; :mod:`.polling` -- ``wait_until``;
  :mod:`.peers` -- ``require_tool`` (DCMTK, Orthanc, dciodvfy binaries);
* :mod:`.node` -- ``NodeProcess`` (``dopanode serve`` as a subprocess),
  ``fake_settings``, ``to_toml``;
* :mod:`.orthanc` -- ``OrthancPeer``; :mod:`.pacs` -- Orthanc and a node wired
  to each other (``pacs_and_node``, ``route_and_wait``);
* :mod:`.pipelines` -- ``fake_nm`` and ``echo_ct``, registered through the
  ``dopanode.pipelines`` entry points of ``plugins/*.dist-info`` (a node
  started by ``NodeProcess`` has ``plugins/`` on its PYTHONPATH);
* :mod:`.nmdata`, :mod:`.dat_phantom`, :mod:`.samples` -- NM marker studies,
  posed DaT phantoms, a small SR.

Shipped with the distribution so that ``pip install -e .`` makes it
importable from tests, bench/ and scripts/ without touching ``sys.path``.
The node never imports it (tests/unit/test_layering.py guards that), and
this ``__init__`` imports nothing, so each helper brings only its own
dependencies (``orthanc`` needs httpx from the ``dev`` extra, ``nmdata``
the simulator's writer).
"""
