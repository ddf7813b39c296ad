"""relay's benchmarks: ``make bench`` (full), ``make bench-quick``; see BENCHMARKS.md."""
