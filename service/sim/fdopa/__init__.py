"""[18F]FDOPA brain-tumour PET simulator (issue 11): anatomy, tumours, kinetics, PET, DICOM.

Modules: :mod:`.kinetics` (plasma input, compartment models, frame schedules,
TTP and slopes), :mod:`.uptake` (tissue and tumour classes, per-subject
kinetics), :mod:`.literature` (the published values the simulated population
must reproduce), :mod:`.head` (labels of the chosen anatomy, tissue maps, adult
and paediatric heads), :mod:`.harvard_oxford` (the Harvard-Oxford anatomy), :mod:`.growth` (Fisher-Kolmogorov growth), :mod:`.tumour` (glioma
phantoms with truth masks), :mod:`.subject` (one subject on a scan grid),
:mod:`.truth` (reference regions and metrics), :mod:`.pet` (PET projection,
noise, OSEM), :mod:`.profiles` and :mod:`.scanner` (scanner profiles,
acquisition), :mod:`.flair` (synthetic FLAIR), :mod:`.pet_writer`,
:mod:`.mr_writer` and :mod:`.ct_writer` (DICOM), :mod:`.enhanced_pet`,
:mod:`.enhanced_mr` and :mod:`.multiframe` (native Enhanced PET / MR), :mod:`.study` and
:mod:`.benchmark` (one study, the benchmark), :mod:`.commands` (CLI) and
:mod:`.validation` (report pictures and tables). torch is imported only by
:mod:`.pet` and the modules that drive it. See ``docs/fdopa_simulator.md``.
"""
