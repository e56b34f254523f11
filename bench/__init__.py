"""Measurements (docs/benchmarks.md). Each script runs as a module from the repository root,
``python -m bench.<name>``, so that ``bench``, ``model``, ``export`` and ``server`` import from
the checkout even where the project is not installed (bench/gpu_check.py on the GPU machine)."""
