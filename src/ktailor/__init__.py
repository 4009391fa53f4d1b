"""ktailor: tailor, build, verify and install minimal Linux guest kernels for microVMs."""

__version__ = "0.1.0"
