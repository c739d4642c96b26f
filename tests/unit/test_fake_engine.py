"""The fake engine's vLLM-like streams: outputs a slow reader has not read are merged, not lost."""

import asyncio

import pytest

from llmserve.engine.fake import FakeEngine
from llmserve.engine.protocol import FinishReason, GenerationRequest
from llmserve.errors import EngineDeadError

MAX_TOKENS = 40


def request(**overrides) -> GenerationRequest:
    fields = dict(request_id="r", prompt_token_ids=[1, 75], max_tokens=MAX_TOKENS,
                  min_tokens=MAX_TOKENS, ignore_eos=True, stream=True)
    return GenerationRequest(**(fields | overrides))


async def read_all(engine: FakeEngine, req: GenerationRequest, pause: float = 0.0) -> list:
    outputs = []
    async for output in engine.generate(req):
        outputs.append(output)
        await asyncio.sleep(pause)
    return outputs


def joined(outputs, index: int = 0) -> tuple[str, list[int]]:
    deltas = [d for o in outputs for d in o.completions if d.index == index]
    return "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids]


@pytest.mark.parametrize("n", [1, 3])
def test_a_slow_reader_gets_several_tokens_per_output_and_the_same_text(n):
    plain = asyncio.run(read_all(FakeEngine(), request(n=n)))
    merged = asyncio.run(read_all(FakeEngine(token_delay=0.001, merge_unread_outputs=True),
                                  request(n=n), pause=0.01))

    assert len(plain) == MAX_TOKENS
    assert len(merged) < MAX_TOKENS / 2
    for index in range(n):
        assert joined(merged, index) == joined(plain, index)
        assert len(joined(merged, index)[1]) == MAX_TOKENS
    assert merged[-1].finished and not any(o.finished for o in merged[:-1])
    assert {d.finish_reason for d in merged[-1].completions} == {FinishReason.LENGTH}


def test_a_reader_that_keeps_up_gets_one_token_per_output():
    engine = FakeEngine(token_delay=0.005, merge_unread_outputs=True)

    outputs = asyncio.run(read_all(engine, request(max_tokens=10, min_tokens=10)))

    assert [len(o.completions[0].token_ids) for o in outputs] == [1] * 10


def test_merged_streams_end_with_the_engine_error():
    async def main():
        engine = FakeEngine(token_delay=0.001, merge_unread_outputs=True)
        outputs = []

        async def read() -> None:
            async for output in engine.generate(request()):
                outputs.append(output)
                engine.kill()

        with pytest.raises(EngineDeadError):
            await read()
        return outputs

    assert len(asyncio.run(main())) == 1


def test_closing_a_merged_stream_stops_its_steps():
    async def main():
        engine = FakeEngine(token_delay=0.001, merge_unread_outputs=True)
        stream = engine.generate(request(max_tokens=1000, min_tokens=1000))
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0.02)
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        return engine.running, tasks

    running, tasks = asyncio.run(main())
    assert running == set()
    assert tasks == set()


@pytest.mark.parametrize("merge_unread_outputs", [False, True])
def test_streams_hold_back_the_start_of_a_stop_string_like_vllm(merge_unread_outputs):
    engine = FakeEngine(merge_unread_outputs=merge_unread_outputs)
    stop = dict(stop=["fox"], min_tokens=0)

    streamed = asyncio.run(read_all(engine, request(**stop)))
    unary = asyncio.run(read_all(engine, request(**stop, stream=False)))

    assert unary[-1].completions[0].text == "The quick brown "
    assert joined(streamed)[0] == unary[-1].completions[0].text
    assert not any("f" in d.text for o in streamed for d in o.completions)
    assert streamed[-1].completions[0].finish_reason == FinishReason.STOP_SEQUENCE


def test_one_engine_loop_steps_every_merged_stream():
    async def main():
        engine = FakeEngine(token_delay=0.001, merge_unread_outputs=True)
        streams = [engine.generate(request(request_id=f"r{i}")) for i in range(3)]
        outputs = [[await anext(stream)] for stream in streams]
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for stream, read in zip(streams, outputs, strict=True):
            read += [output async for output in stream]
        return tasks, [joined(read) for read in outputs]

    tasks, texts = asyncio.run(main())
    assert len(tasks) == 1  # like vLLM's output handler, not a producer per stream
    plain = joined(asyncio.run(read_all(FakeEngine(), request())))
    assert texts == [plain] * 3


def test_streams_alike_share_their_outputs_and_each_still_counts_as_a_request():
    engine = FakeEngine(eos_after=5)
    alike = dict(ignore_eos=False, min_tokens=0)

    first = asyncio.run(read_all(engine, request(request_id="a", **alike)))
    other_prompt = asyncio.run(read_all(
        engine, request(request_id="b", prompt_token_ids=[1, 80, 81], **alike)))
    engine.eos_after = 3  # the engine's state is part of what outputs are kept by
    sooner = asyncio.run(read_all(engine, request(request_id="c", **alike)))

    assert other_prompt == first
    assert len(joined(first)[1]) == 6
    assert first[-1].completions[0].finish_reason == FinishReason.EOS
    assert len(joined(sooner)[1]) == 4
    assert [r.request_id for r in engine.requests] == ["a", "b", "c"]
    assert not engine.running
