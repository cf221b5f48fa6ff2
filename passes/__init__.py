"""Graph-to-graph passes and the pass manager. Imports kiln.ir only."""
