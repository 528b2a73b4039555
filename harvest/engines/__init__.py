"""Evaluation engines: Hugging Face transformers (default) and vLLM."""
