"""Settings shared by every kiln test."""
from hypothesis import settings

# Deterministic hypothesis runs: the same examples on every machine and every run.
settings.register_profile("kiln", derandomize=True, deadline=None, max_examples=30,
                          database=None, print_blob=True)
settings.load_profile("kiln")
