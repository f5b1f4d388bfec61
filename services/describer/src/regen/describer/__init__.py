"""The describer service: a multimodal LLM that understands, prompts, compares and judges."""
