"""Fragments and what the kernel's kconfig makes of them: audit, explanations, drift, hardening."""
