"""The HTTP front doors, one ``APIRouter`` each, over the one pipeline (server/pipeline.py):
``native`` (``/predict``, ``/v1/models``), ``ops`` (probes, metrics, the page); ``errors`` maps
``ServingError`` to HTTP; ``body`` reads uploads within limits."""
