"""Real photographs from the package registries (the packages: ``packages``)."""
