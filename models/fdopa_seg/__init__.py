"""Training of the FDOPA PET tumour U-Net (issue 12 point 4): data, network,
augmentation, training, ONNX export, evaluation. Needs the ``sim`` extra.

The preprocessing contract is :mod:`service.pipelines.fdopa_pet.segment`, the
same code the node serves the model with. See ``README.md`` here.
"""
