"""Compiling: toolchains, the compile cache and distcc, the record of compiled files, module archives."""
