"""Training of the FLAIR tumour U-Net with transfer learning (torch; the ``sim`` extra).

Research use, not for diagnosis; simulated data only. See ``README.md``.
"""
