"""regen generator service: a text-to-image model under test, served over gRPC (and HTTP
through BentoML). Engines live in `regen.generator.engines`."""
