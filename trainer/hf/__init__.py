"""Files copied verbatim into a Hugging Face export folder (loaded by transformers, not imported here)."""
