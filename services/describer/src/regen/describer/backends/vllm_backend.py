"""In-process vLLM (`AsyncLLM`, the V1 engine) running Qwen2.5-VL, written against vLLM 0.33.

The chat is rendered with the model's own processor (its chat template), images go in as
`multi_modal_data`, and the schema constrains decoding through
`SamplingParams(structured_outputs=StructuredOutputsParams(json=...))`. vLLM batches
concurrent requests continuously; each request carries its own seed, so sampled answers
do not depend on their batch neighbours. vLLM is an optional dependency (extra `vllm`,
GPU only) and is imported only when this backend is built.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from regen.common.batching import BatchStats
from regen.common.identity import model_revision
from regen.describer.backends.base import BackendIdentity, CallCounter, Completion, ModelCall
from regen.describer.backends.transformers_backend import chat_conversation

if TYPE_CHECKING:
    from regen.describer.settings import DescriberSettings

MAX_IMAGES_PER_PROMPT = 2


class VLLMBackend:
    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None,
        model_revision: str,
        dtype: str,
        gpu_memory_utilization: float,
        max_model_len: int,
        max_num_seqs: int | None = None,
        image_max_side: int,
        seed: int = 0,
    ) -> None:
        try:
            from transformers import AutoProcessor
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                f"the vllm backend needs vLLM (pip install 'regen-describer[vllm]' on a GPU machine): {exc}"
            ) from None

        self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        optional = {"max_num_seqs": max_num_seqs} if max_num_seqs else {}
        args = AsyncEngineArgs(
            model=model_id,
            revision=revision,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": MAX_IMAGES_PER_PROMPT},
            # The engine already scales images to image_max_side; this keeps vLLM's own
            # processor from scaling them up again.
            mm_processor_kwargs={"max_pixels": image_max_side * image_max_side},
            seed=seed,
            disable_log_stats=True,
            **optional,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.identity = BackendIdentity(
            backend="vllm", model_id=model_id, revision=model_revision, device="cuda", dtype=dtype
        )
        self._counter = CallCounter()

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> VLLMBackend:
        return cls(
            settings.model,
            revision=settings.revision,
            model_revision=model_revision(settings.model, settings.revision),
            dtype="bfloat16" if settings.dtype == "auto" else settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            image_max_side=settings.image_max_side,
        )

    def stats(self) -> BatchStats:
        return self._counter.stats

    async def aclose(self) -> None:
        self.engine.shutdown()

    def prompt(self, call: ModelCall) -> dict[str, Any]:
        text = self.processor.apply_chat_template(
            chat_conversation(call.messages), add_generation_prompt=True, tokenize=False
        )
        prompt: dict[str, Any] = {"prompt": text}
        if call.images:
            prompt["multi_modal_data"] = {"image": call.images}
        return prompt

    def sampling_params(self, call: ModelCall):
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if call.schema is not None:
            structured = StructuredOutputsParams(json=call.schema, disable_any_whitespace=True)
        return SamplingParams(
            temperature=call.temperature,
            seed=call.seed,
            max_tokens=call.max_new_tokens,
            min_tokens=call.min_new_tokens,
            structured_outputs=structured,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def complete(self, call: ModelCall) -> Completion:
        started = time.monotonic()
        final = None
        try:
            async for output in self.engine.generate(
                self.prompt(call), self.sampling_params(call), request_id=f"describer-{uuid.uuid4().hex}"
            ):
                final = output
        finally:
            self._counter.record(started)
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output")
        sample = final.outputs[0]
        return Completion(
            text=sample.text,
            output_tokens=len(sample.token_ids),
            truncated=sample.finish_reason == "length",
            input_tokens=len(final.prompt_token_ids or ()),
        )
