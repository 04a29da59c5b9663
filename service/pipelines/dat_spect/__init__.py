"""Everything [123I]FP-CIT SPECT: gate, volume to MNI, SBR, levels, CNN rules, SR, picture report."""
