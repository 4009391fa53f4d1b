"""The pipeline, one module per stage, each ending with its row in the graph (STAGE)."""
