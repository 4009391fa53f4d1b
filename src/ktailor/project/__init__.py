"""The project's data: paths (layout), targets.toml, versions.toml and the shared tables' state."""
