"""The committed demo: checkpoint, its export, sample images. Its scripts run as modules from
the repository root: ``python -m demo.make_samples``, ``python -m demo.page_screenshot``."""
