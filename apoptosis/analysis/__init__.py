"""Reading runs: comparisons with their intervals, summaries and tables, plots, the throughput
bench and the fitness check."""
