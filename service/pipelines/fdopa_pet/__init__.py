"""[18F]FDOPA PET brain-tumour analysis (gate, series selection, kinetics; not yet wired)."""
