"""[18F]FDOPA brain-tumour PET simulator (issue 11): anatomy, tumours, kinetics, PET, DICOM.

Modules: :mod:`.kinetics` (plasma input, compartment models, frame schedules,
TTP and slopes), :mod:`.literature` (the published values the simulated
population must reproduce), :mod:`.head` (adult and paediatric heads),
:mod:`.tumour` (glioma phantoms with truth masks), :mod:`.pet` (PET
projection, noise, OSEM), :mod:`.profiles` (scanner profiles),
:mod:`.pet_writer` and :mod:`.mr_writer` (DICOM), :mod:`.study` and
:mod:`.benchmark` (one study, the benchmark). Only :mod:`.pet` and the modules
that drive it import torch. See ``docs/fdopa_simulator.md``.
"""
