"""regen.v1.Describer over gRPC (grpc.aio): the servicer over the core, and
`regen serve describer`, the describer as a standalone gRPC process.

Batching happens below, in the backend: the transformers backend coalesces concurrent
model calls (repairs included) in its MicroBatcher; vLLM and remote APIs batch on their
side."""

from __future__ import annotations

from regen.common.grpc_server import CoreSlot, grpc_errors
from regen.common.identity import server_info
from regen.common.serving import ServiceDefinition
from regen.describer import convert
from regen.describer.core import DescriberCore
from regen.describer.settings import DescriberSettings
from regen.v1 import common_pb2, describer_pb2, describer_pb2_grpc

LIBRARIES = ("torch", "transformers", "xgrammar", "vllm", "openai", "jsonschema", "pillow")


def describer_info(core: DescriberCore) -> describer_pb2.DescriberInfo:
    identity = core.identity
    return describer_pb2.DescriberInfo(
        model=common_pb2.ModelInfo(
            model_id=identity.model_id,
            revision=identity.revision,
            backend=identity.backend,
            device=identity.device,
            dtype=identity.dtype,
        ),
        server=server_info(core.backend.stats(), *LIBRARIES),
        template_version=core.template_version,
        max_variants=core.options.max_variants,
        judge_temperature=core.options.judge_temperature,
    )


class DescriberServicer(describer_pb2_grpc.DescriberServicer):
    def __init__(self, slot: CoreSlot[DescriberCore]) -> None:
        self.slot = slot

    @grpc_errors
    async def Info(self, request, context):
        return describer_info(self.slot.get())

    @grpc_errors
    async def Understand(self, request, context):
        result = await self.slot.get().understand(request.image_png)
        return describer_pb2.UnderstandResponse(
            iut=convert.iut_to_proto(result.answer), call=convert.call_info(result.call)
        )

    @grpc_errors
    async def WritePrompt(self, request, context):
        core = self.slot.get()
        result = await core.write_prompt(convert.iut_from_proto(request.iut), request.token_budget)
        return describer_pb2.PromptResponse(prompt=result.answer, call=convert.call_info(result.call))

    @grpc_errors
    async def Variants(self, request, context):
        result = await self.slot.get().variants(request.prompt, request.n, request.token_budget, request.seed)
        return describer_pb2.VariantsResponse(prompts=result.answer, call=convert.call_info(result.call))

    @grpc_errors
    async def Compare(self, request, context):
        result = await self.slot.get().compare(request.reference_png, request.candidate_png, request.prompt)
        return describer_pb2.CompareResponse(
            differences=convert.differences_to_proto(result.answer), call=convert.call_info(result.call)
        )

    @grpc_errors
    async def Revise(self, request, context):
        result = await self.slot.get().revise(
            request.prompt, convert.differences_from_proto(request.differences), request.token_budget
        )
        return describer_pb2.PromptResponse(prompt=result.answer, call=convert.call_info(result.call))

    @grpc_errors
    async def Judge(self, request, context):
        result = await self.slot.get().judge(request.reference_png, request.candidate_png, request.seed)
        judgement = result.answer
        return describer_pb2.JudgeResponse(
            content_consistency=judgement.content_consistency,
            perceptual_quality=judgement.perceptual_quality,
            rationale=judgement.rationale,
            call=convert.call_info(result.call),
        )


DEFINITION: ServiceDefinition[DescriberSettings, DescriberCore] = ServiceDefinition(
    settings_class=DescriberSettings,
    build_core=DescriberCore.from_settings,
    add_servicer=describer_pb2_grpc.add_DescriberServicer_to_server,
    servicer=DescriberServicer,
    service_name=describer_pb2.DESCRIPTOR.services_by_name["Describer"].full_name,
    close_core=lambda core: core.aclose(),
)
# `regen serve describer`: bind, load the models, serve until SIGTERM.
serve = DEFINITION.serve
