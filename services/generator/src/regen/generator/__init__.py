"""regen generator service: a text-to-image model under test. The request path is
`regen.generator.core`, the models are engines in `regen.generator.engines`, and the
adapters are `grpc_api` (regen.v1.Generator, `regen serve generator`) and `http_api`
(BentoML)."""
