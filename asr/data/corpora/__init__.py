"""Corpus recipes: each turns a corpus's own layout into JSONL manifests."""
