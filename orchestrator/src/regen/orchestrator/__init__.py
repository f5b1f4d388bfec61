"""The regeneration loop, run over gRPC only. Never imports torch, transformers or diffusers."""
