"""What a kernel is exposed to and what vouches for it: CVEs, VEX, provenance, the install gate's evidence."""
