"""Engine subpackage (see the package docstring of vsr)."""
