"""n-gram language models for beam search: estimated from transcripts, optionally with spelled-out
words."""
