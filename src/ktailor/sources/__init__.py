"""Where kernel sources come from: kernel.org releases, signed checksums, local mirrors, source trees."""
