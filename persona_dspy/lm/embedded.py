"""The embedded GGUF model as a DSPy 3.4 engine: llama.cpp's server loop, in-process, no HTTP.

``dspy.LM("local/<name>", engine=LlamaCppEngine(path), cache=False)`` sends every call here as a
``dspy.lm15.Request``; the engine answers with a ``dspy.lm15.Response`` whose ``usage`` DSPy feeds to
``dspy.track_usage()`` and the LM history, exactly as for a hosted provider.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from dspy.lm15 import (
    ConfigurationError,
    ContextLengthError,
    InvalidRequestError,
    Request,
    Response,
    ServerError,
    response_from_openai_chat,
    response_to_events,
)

from persona_dspy.compat.dspy import request_kwargs, validate_request

DEFAULT_SEED = 0
_shared: dict[Path, LlamaCppEngine] = {}
_shared_lock = threading.Lock()


class LlamaCppEngine:
    """One llama.cpp model per engine, loaded on the first call; calls are serialized by a lock.

    A single slot (``n_parallel=1``) with ``cache_prompt`` keeps the KV cache of the previous call,
    so DSPy prompts sharing a long instruction prefix only pay for the new suffix; llama.cpp's RAM
    prompt cache (``cache_ram_mib``) keeps earlier prefixes too. ``seed`` makes sampling repeatable.

    ``cache_prompt=False`` processes every prompt from scratch: slower when prompts share a prefix, but
    the same prompt then gets the same answer whatever came before it. With the cache, a prefix computed
    in another batch split can change the logits slightly, and at temperature 0 that can flip a token
    (llama.cpp's server documents ``cache_prompt`` as able to cause nondeterministic results).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_threads: int = 2,
        n_ctx: int = 8192,
        seed: int = DEFAULT_SEED,
        cache_prompt: bool = True,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_threads, self.n_ctx, self.seed, self.cache_prompt = n_threads, n_ctx, seed, cache_prompt
        self._server: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        import xllamacpp as xlc

        if not self.model_path.is_file():
            raise ConfigurationError(f"embedded model file missing: {self.model_path}")
        params = xlc.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = self.n_ctx
        params.n_parallel = 1
        params.cache_prompt = self.cache_prompt
        params.cpuparams.n_threads = self.n_threads
        params.cpuparams_batch.n_threads = self.n_threads
        params.sampling.seed = self.seed
        params.verbosity = -1  # llama.cpp logs every request to stderr otherwise
        try:
            return xlc.Server(params)
        except RuntimeError as exc:
            raise ConfigurationError(f"llama.cpp could not load {self.model_path}: {exc}") from exc

    @classmethod
    def shared(cls, model_path: str | Path, **options: Any) -> LlamaCppEngine:
        """The process-wide engine for ``model_path``: one model in memory however many LMs use it.

        The first caller's ``options`` (threads, context size, seed, prompt cache) stay in effect.
        """
        path = Path(model_path)
        with _shared_lock:
            if path not in _shared:
                _shared[path] = cls(path, **options)
            return _shared[path]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One OpenAI-style chat completion (the llama.cpp server's JSON, ``timings`` included)."""
        body = {"seed": self.seed, **body, "cache_prompt": self.cache_prompt, "stream": False}
        with self._lock:
            if self._server is None:
                self._server = self._load()
            result = self._server.handle_chat_completions(body)
        if "choices" not in result:
            error = result.get("error", result)
            message = f"llama.cpp: {error.get('message', error)}"
            kind, status = error.get("type"), error.get("code")
            if kind == "exceed_context_size_error":
                raise ContextLengthError(message, provider="local", status=status, provider_code=kind)
            if kind == "invalid_request_error" or status == 400:
                raise InvalidRequestError(message, provider="local", status=status, provider_code=kind)
            raise ServerError(message, provider="local", status=status, provider_code=kind)
        return result

    def complete(self, request: Request) -> Response:
        """DSPy engine entry point: canonical request in, canonical response (with usage) out."""
        validate_request(request)
        body = request_kwargs(request, "chat")
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        return response_from_openai_chat(self.chat(body), model=request.model)

    def stream(self, request: Request) -> Iterator[Any]:
        """Whole-response events, so ``dspy.streamify`` works (no token-by-token streaming)."""
        return iter(response_to_events(self.complete(request)))

    def close(self) -> None:
        """Free the model; the next call loads it again."""
        with self._lock:
            self._server = None

    def dump_state(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "n_threads": self.n_threads,
            "n_ctx": self.n_ctx,
            "seed": self.seed,
            "cache_prompt": self.cache_prompt,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        """Rebuild from ``dump_state`` (used when DSPy saves a program together with its LM)."""
        state = dict(state)
        return cls.shared(state.pop("model_path"), **state)


class AsyncLlamaCppEngine:
    """Async face of a ``LlamaCppEngine`` (``dspy.LM(async_engine=...)``): the sync call in a worker thread."""

    def __init__(self, sync: LlamaCppEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """The sync engine owns the model; closing the async face frees nothing."""

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLlamaCppEngine:
        return cls(LlamaCppEngine.load_state(state))
