"""The lowest layer: errors, progress output, file records (hashes, JSON reports), locks, child processes."""
