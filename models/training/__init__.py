"""Training of the DaT SPECT CNN: data set, network, augmentation, training,
evaluation, ONNX export. Needs the ``sim`` extra (``pip install -e '.[sim]'``).

Preprocessing is :func:`service.inference.preprocess.cnn_input`, the same
function the node calls at serving time.
"""
