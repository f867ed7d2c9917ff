"""32 concurrent streams, 8 of them hung up after two chunks: the other 24 finish with exactly the
text of an undisturbed greedy run, and every aborted request gives its KV blocks back."""

from __future__ import annotations

import asyncio
import time

from tests.entrypoints.server_utils import SERVED_NAME, scrape
from vllm_mini import SamplingParams

NUM_STREAMS, NUM_CLOSED, MAX_TOKENS = 32, 8, 24


def prompt(i: int) -> list[int]:
    return [3 + i, 50 + 2 * i, 100 + 3 * i, 7]


def test_streams_survive_neighbours_hanging_up(server, reference_llm):
    closed = set(range(0, NUM_STREAMS, NUM_STREAMS // NUM_CLOSED))  # 0, 4, 8, ...
    before = scrape(server.url)

    async def one(client, i: int) -> str | None:
        stream = await client.completions.create(
            model=SERVED_NAME,
            prompt=prompt(i),
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            stream=True,
            extra_body={"ignore_eos": True},  # every stream runs its full length
        )
        text, chunks = "", 0
        async for chunk in stream:
            text += chunk.choices[0].text
            chunks += 1
            if i in closed and chunks == 2:
                await stream.close()  # hang up: the server must abort this request
                return None
        return text

    async def main() -> list[str | None]:
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client, i) for i in range(NUM_STREAMS)))

    texts = asyncio.run(main())
    refs = reference_llm.generate(
        [{"prompt_token_ids": prompt(i)} for i in range(NUM_STREAMS)],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
        use_tqdm=False,
    )
    for i, (text, ref) in enumerate(zip(texts, refs)):
        if i in closed:
            assert text is None
        else:
            assert text == ref.outputs[0].text, f"stream {i}"

    # Aborts take effect at the next step boundary: poll /metrics briefly.
    label = f"model_name={SERVED_NAME}"
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server.url)
        idle = after[f"vllm:num_requests_running{{{label}}}"] == 0.0
        if idle and after[f"vllm:kv_cache_usage_perc{{{label}}}"] == 0.0:
            break
        assert time.monotonic() < deadline, "aborted streams still hold the engine"
        time.sleep(0.02)
    assert after[f"vllm:num_requests_waiting{{{label}}}"] == 0.0
    abort = f"vllm:request_success_total{{finished_reason=abort,{label}}}"
    length = f"vllm:request_success_total{{finished_reason=length,{label}}}"
    assert after[abort] - before.get(abort, 0.0) == NUM_CLOSED
    assert after[length] - before.get(length, 0.0) == NUM_STREAMS - NUM_CLOSED
    # The hung-up streams stopped early: fewer tokens than 32 full runs.
    generated = f"vllm:generation_tokens_total{{{label}}}"
    assert after[generated] - before[generated] < NUM_STREAMS * MAX_TOKENS


def test_sse_response_closes_its_generator_when_the_client_leaves_mid_send():
    """The hang-up can land while a chunk is being sent, with the generator paused at `yield`:
    its cleanup (which aborts the engine requests) must still run, not wait for the GC."""
    from vllm_mini.entrypoints.openai.api_server import SSEResponse

    async def main() -> bool:
        cleaned_up = asyncio.Event()
        client_stuck = asyncio.Event()

        async def events():
            try:
                while True:
                    yield "data: {}\n\n"
            finally:
                cleaned_up.set()

        sent = 0

        async def send(message: dict) -> None:
            nonlocal sent
            sent += 1
            if sent == 3:  # the client stops reading: this send never completes
                client_stuck.set()
                await asyncio.Event().wait()

        async def receive() -> dict:
            await client_stuck.wait()
            return {"type": "http.disconnect"}

        response = SSEResponse(events())
        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
        return cleaned_up.is_set()

    assert asyncio.run(main())
