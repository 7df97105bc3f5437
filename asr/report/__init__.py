"""What a run leaves to read: run facts, report.md, scored splits, error analysis, alignments,
seed summaries."""
