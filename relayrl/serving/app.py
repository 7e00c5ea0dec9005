"""The OpenAI-compatible HTTP app over a chat model and a generation backend: /v1/chat/completions,
/v1/completions (both streamed as server-sent events on request), /v1/models, and /health for probes."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from relayrl.generation.chat import ChatModel
from relayrl.generation.sampler import encode_prompt
from relayrl.serving import errors, tts
from relayrl.serving.backend import Backend, TokenLogprob, Update
from relayrl.serving.errors import APIError
from relayrl.serving.generation import Generation, collect
from relayrl.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    Request,
    TopLogprob,
)


@dataclass
class ServeConfig:
    max_new_tokens: int = 256  # a request's max_tokens when it sets none (capped by the context)
    timeout: float = 600.0  # seconds a request may take, its wait for a place in the batch included
    max_body_bytes: int = 1 << 20
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer KEY`
    tts_n: int = 8  # the N of the test-time scaling names that /v1/models lists (any N is served)
    reward_model: str | None = None  # a reward model folder: serves best_of_n@N


class BodyLimit:
    """413 for a body over `limit` bytes, whether its Content-Length says so or it only turns out so. The rest of
    the body, up to `drain` bytes, is read and dropped first (never kept), so that a client still sending reads
    the 413 instead of a connection reset."""

    def __init__(self, app, limit: int, drain: int = 64 << 20):
        self.app, self.limit, self.drain = app, limit, drain

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the body is over {self.limit} bytes (relayrl serve --max-body-bytes)"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._drop_rest(receive)
            return await APIError(413, message).response()(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > self.limit:
                if event.get("more_body"):
                    await self._drop_rest(receive)
                raise HTTPException(413, message)  # FastAPI passes it on from reading the body
            return event

        await self.app(scope, limited_receive, send)

    async def _drop_rest(self, receive) -> None:
        dropped = 0
        while dropped < self.drain:
            event = await receive()
            dropped += len(event.get("body", b""))
            if not event.get("more_body"):
                return


def sse(chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
    """Server-sent events as the `openai` client reads them: one `data:` line per chunk, then `[DONE]`; an error
    after the response has begun is one last `data:` line holding the error JSON."""

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {chunk.model_dump_json()}\n\n"
        except APIError as e:
            yield f"data: {e.body().model_dump_json()}\n\n"
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def make_app(chat: ChatModel, backend: Backend, cfg: ServeConfig) -> FastAPI:
    app = FastAPI(title="relayrl serve", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    tokenizer, started = chat.tokenizer, int(time.time())

    async def authorize(authorization: str = Header("")) -> None:
        if cfg.api_key and not secrets.compare_digest(authorization.encode(), f"Bearer {cfg.api_key}".encode()):
            raise APIError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def token_text(token: int) -> str:
        return tokenizer.decode([token])

    def start(
        body: Request, prompts: list[list[int]], requested: int | None, field: str, logprobs: int | None, where: str
    ) -> tuple[Generation, AsyncIterator[Update], str]:
        """Check the request against the model's context and hand it to the backend: its generation, the updates
        to send (the picks, for a test-time scaling name) and the name of the model that answers."""
        scaling = tts.parse(body.model, backend.max_batch, cfg.reward_model)
        if scaling and body.n != 1:
            raise APIError(400, "n: a test-time scaling model gives one answer per prompt", "n")
        longest, context = max(map(len, prompts)), backend.context_length
        if longest >= context:
            raise APIError(400, f"{where}: its {longest} tokens fill the model's context of {context}", where)
        if requested and requested > context - longest:
            message = (
                f"{field}: {requested} tokens after a {longest}-token prompt exceed the model's context of {context}"
            )
            raise APIError(400, message, field)
        generation = Generation(
            backend,
            cfg.timeout,
            prompts=prompts,
            n=scaling.n if scaling else body.n,
            max_tokens=requested or min(cfg.max_new_tokens, context - longest),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stops,
            seed=body.seed,
            logprobs=logprobs,
            stream=body.stream and not scaling,
        )
        if not scaling:
            return generation, generation.updates(), chat.name
        questions = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        return generation, tts.scaled(generation, scaling, questions), body.model

    def chat_logprobs(logprobs: list[TokenLogprob]) -> ChatLogprobs:
        def top(token: int, logprob: float) -> TopLogprob:
            text = token_text(token)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

        return ChatLogprobs(
            content=[
                ChatTokenLogprob(**top(t.token, t.logprob).model_dump(), top_logprobs=[top(*a) for a in t.top])
                for t in logprobs
            ]
        )

    def completion_logprobs(logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
        tokens = [token_text(t.token) for t in logprobs]
        offsets = [offset + sum(map(len, tokens[:i])) for i in range(len(tokens))]
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[t.logprob for t in logprobs],
            top_logprobs=[{token_text(a): lp for a, lp in t.top} for t in logprobs],
            text_offset=offsets,
        )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **backend.stats()}

    @v1.get("/models")
    async def models() -> ModelList:
        names = [chat.name, *tts.served_names(cfg.tts_n, cfg.reward_model)]
        return ModelList(data=[ModelCard(id=name, created=started) for name in names])

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        try:
            prompt = chat.prompt_ids([{"role": m.role, "content": m.text} for m in body.messages])
        except Exception as e:  # the model's chat template refuses these messages
            raise APIError(400, f"messages: the chat template refused them: {e}", "messages") from None
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        top = (body.top_logprobs or 0) if body.logprobs else None
        generation, updates, name = start(
            body, [prompt], body.max_completion_tokens or body.max_tokens, field, top, "messages"
        )
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if body.stream:

            async def chunks() -> AsyncIterator[ChatCompletionChunk]:
                for i in range(body.n):
                    yield ChatCompletionChunk(**head, choices=[ChatChunkChoice(index=i, delta=Delta(role="assistant"))])
                async for u in updates:
                    choice = ChatChunkChoice(
                        index=u.index,
                        delta=Delta(content=u.text),
                        logprobs=chat_logprobs(u.logprobs) if body.logprobs else None,
                        finish_reason=u.finish_reason,
                    )
                    yield ChatCompletionChunk(**head, choices=[choice])
                if body.stream_options and body.stream_options.include_usage:
                    yield ChatCompletionChunk(**head, choices=[], usage=generation.usage)

            return sse(chunks())
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=c.text),
                logprobs=chat_logprobs(c.logprobs) if body.logprobs else None,
                finish_reason=c.finish_reason,
            )
            for i, c in (await collect(updates)).items()
        ]
        return ChatCompletion(**head, choices=choices, usage=generation.usage)

    @v1.post("/completions")
    async def completions(body: CompletionRequest):
        texts_or_ids = [body.prompt] if isinstance(body.prompt, str) or isinstance(body.prompt[0], int) else body.prompt
        prompts = [p if isinstance(p, list) else encode_prompt(tokenizer, p) for p in texts_or_ids]
        if not all(prompts):
            raise APIError(400, "prompt: it encodes to no tokens", "prompt")
        if any(t >= len(tokenizer) for p in prompts for t in p):
            raise APIError(400, f"prompt: token ids must be below the vocabulary size {len(tokenizer)}", "prompt")
        generation, updates, name = start(body, prompts, body.max_tokens, "max_tokens", body.logprobs, "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

        def choice(index: int, text: str, logprobs: list[TokenLogprob], reason: str | None, offset: int = 0):
            lp = completion_logprobs(logprobs, offset) if body.logprobs is not None else None
            return CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=reason)

        if body.stream:

            async def chunks() -> AsyncIterator[Completion]:
                sent: dict[int, int] = {}  # each choice's characters so far: where its next tokens' text begins
                async for u in updates:
                    offset = sent.get(u.index, 0)
                    yield Completion(**head, choices=[choice(u.index, u.text, u.logprobs, u.finish_reason, offset)])
                    sent[u.index] = offset + len(u.text)
                if body.stream_options and body.stream_options.include_usage:
                    yield Completion(**head, choices=[], usage=generation.usage)

            return sse(chunks())
        choices = [choice(i, c.text, c.logprobs, c.finish_reason) for i, c in (await collect(updates)).items()]
        return Completion(**head, choices=choices, usage=generation.usage)

    app.include_router(v1)
    return app
