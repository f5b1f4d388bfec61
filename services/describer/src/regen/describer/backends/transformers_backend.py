"""In-process Hugging Face model (Qwen2.5-VL by default) with xgrammar-constrained JSON.

Concurrent calls are coalesced by a MicroBatcher into one left-padded `generate` call on
one worker thread. Rows of a batch may differ in task, schema, images and sampling:
`RowControl` gives each row its own grammar, token limit and seeded sampler, so every
call can share a batch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from regen.common.batching import BatchStats, MicroBatcher
from regen.common.identity import model_revision
from regen.common.settings import resolve_device, resolve_dtype
from regen.describer.backends.base import BackendIdentity, Completion, Message, ModelCall
from regen.describer.schemas import canonical_json

if TYPE_CHECKING:
    from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def chat_conversation(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the chat-template form of HF processors: images as placeholders."""
    conversation = []
    for message in messages:
        content = [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image"} for part in message.parts
        ]
        conversation.append({"role": message.role, "content": content})
    return conversation


class TransformersBackend:
    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None,
        device: str,
        dtype: str,
        model_revision: str,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 1024,
        constrained: bool = True,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

        self._torch = torch
        self.device = device
        if processor is None:
            processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
            raise RuntimeError(
                f"{model_id}: AutoProcessor returned {type(processor).__name__}, not a multimodal processor; "
                "the Qwen2.5-VL processor needs torchvision installed"
            )
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if model is None:
            model = AutoModelForImageTextToText.from_pretrained(
                model_id, revision=revision, dtype=getattr(torch, _TORCH_DTYPES[dtype])
            )
            model = model.to(device)
        self.model = model.eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.stop_ids = self._stop_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.identity = BackendIdentity(
            backend="transformers", model_id=model_id, revision=model_revision, device=device, dtype=dtype
        )
        self._compiler = None
        if constrained:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
            )
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self._grammars: dict[str, Any] = {}
        self._grammar_lock = threading.Lock()
        self._batcher: MicroBatcher[ModelCall, Completion] = MicroBatcher(
            self.generate_batch, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue, name="describer"
        )

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> TransformersBackend:
        revision = model_revision(settings.model, settings.revision)
        if settings.cpu_threads:
            import torch

            torch.set_num_threads(settings.cpu_threads)
        device = resolve_device(settings.device)
        return cls(
            settings.model,
            revision=settings.revision,
            device=device,
            dtype=resolve_dtype(settings.dtype, device),
            model_revision=revision,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in [configured, self.tokenizer.eos_token_id]:
            for token in value if isinstance(value, list) else [value]:
                if token is not None and token not in ids:
                    ids.append(int(token))
        if not ids:
            raise RuntimeError("the model defines no end-of-sequence token")
        return ids

    # ------------------------------------------------------------------ async API

    async def complete(self, call: ModelCall) -> Completion:
        return (await self._batcher.run([call]))[0]

    def stats(self) -> BatchStats:
        return self._batcher.stats

    async def aclose(self) -> None:
        await self._batcher.close()

    # ------------------------------------------------------------ worker thread

    def grammar(self, schema: dict[str, Any]) -> Any:
        if self._compiler is None:
            raise RuntimeError("this backend was built with constrained=False: it compiles no grammars")
        key = canonical_json(schema)
        with self._grammar_lock:
            compiled = self._grammars.get(key)
            if compiled is None:
                # The schema's own key order is the answer's property order (the rationale
                # before the scores). Compact separators and no free whitespace: a
                # random-weight model would otherwise emit whitespace until its limit.
                compiled = self._compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
                )
                self._grammars[key] = compiled
            return compiled

    def generate_batch(self, calls: list[ModelCall]) -> list[Completion | BaseException]:
        """One `generate` for all calls; if the batch fails, each call runs alone so that
        one bad call does not fail its neighbours."""
        try:
            return list(self._generate(calls))
        except Exception as exc:
            if len(calls) == 1:
                return [exc]
            log.warning("batch of %d failed (%s); running its calls one by one", len(calls), exc)
            results: list[Completion | BaseException] = []
            for call in calls:
                try:
                    results.extend(self._generate([call]))
                except Exception as single:
                    results.append(single)
            return results

    def _generate(self, calls: list[ModelCall]) -> list[Completion]:
        from regen.describer.backends.row_control import RowControl

        torch = self._torch
        texts = [
            self.processor.apply_chat_template(
                chat_conversation(call.messages), add_generation_prompt=True, tokenize=False
            )
            for call in calls
        ]
        images = [image for call in calls for image in call.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        grammars = [
            self.grammar(call.schema) if (call.schema is not None and self._compiler is not None) else None
            for call in calls
        ]
        control = RowControl(
            grammars=grammars,
            temperatures=[call.temperature for call in calls],
            seeds=[call.seed for call in calls],
            max_tokens=[call.max_new_tokens for call in calls],
            min_tokens=[call.min_new_tokens for call in calls],
            stop_ids=self.stop_ids,
            vocab_size=self.vocab_size,
        )
        generation_config = self._generation_config(max(call.max_new_tokens for call in calls))
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=generation_config, logits_processor=[control])
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        # The rows are left-padded: a row's prompt is its unmasked tokens.
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            self._completion(row, cut, int(read))
            for row, cut, read in zip(new_tokens, control.cut, prompt_tokens, strict=True)
        ]

    def _generation_config(self, max_new_tokens: int):
        config = self.model.generation_config.__class__.from_dict(self.model.generation_config.to_dict())
        # Greedy for every row; RowControl samples the rows that ask for it.
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.num_beams = 1
        config.max_new_tokens = max_new_tokens
        config.min_new_tokens = None
        config.max_length = None
        config.eos_token_id = self.stop_ids
        config.pad_token_id = self.pad_id
        return config

    def _completion(self, tokens: list[int], cut: bool, input_tokens: int) -> Completion:
        stop = next((k for k, token in enumerate(tokens) if token in self.stop_ids), None)
        answer = tokens if stop is None else tokens[:stop]
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        return Completion(
            text=text, output_tokens=len(answer), truncated=cut or stop is None, input_tokens=input_tokens
        )
