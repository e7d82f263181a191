"""Input/output: tokenizer, image transforms, checkpoint formats."""
