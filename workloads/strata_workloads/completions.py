"""OpenAI's completions API (`POST /v1/completions`, `GET /v1/models`), what clients of model servers already
speak, without HTTP: a request body checked field by field into a `CompletionRequest` (or an `ApiError` that
names the field, in OpenAI's error shape), the text a row's tokens make as they come (`CompletionText`: cut at
a stop string), and the bodies of the response and of each stream chunk. serve.py is the HTTP shell.

What is not supported is refused with 400 naming the field rather than ignored: several prompts or choices
(`prompt` lists, `n`, `best_of`), `echo`, `logprobs`, `suffix`, penalties, `logit_bias`, and any field OpenAI
does not define. A prompt plus `max_tokens` past the model's window is refused, as OpenAI refuses it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from strata_api.serving import openai_error, openai_error_type
from strata_workloads.continuous import RunningBatch, TokenStream
from strata_workloads.inference import Sampling
from strata_workloads.model import Transformer
from strata_workloads.settings import ServeSettings
from strata_workloads.tokenizer import ByteTokenizer, Tokenizer

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the completions API
MAX_STOPS = 4  # OpenAI's limit on stop sequences
MAX_TEMPERATURE = 2.0  # OpenAI's range is [0, 2]
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
TOP_K_MAX = 2**31 - 1  # 0 is off; any k at or past the vocabulary keeps every token

# Fields accepted only at the value that asks for nothing beyond one plain completion.
_ONLY_DEFAULT: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (),
    "suffix": (),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}
_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",  # not OpenAI's: vLLM's and others' extra field (the openai client sends it with extra_body)
    "stop",
    "stream",
    "stream_options",
    "seed",
    "user",
}


class ApiError(Exception):
    """A refused request as OpenAI's clients read it: an HTTP status and `{"error": {...}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return openai_error(self.message, openai_error_type(self.status), self.param, self.code)


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param)


@dataclass(frozen=True)
class CompletionRequest:
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk carries the usage


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad(key, f"'{key}' must be a number in [{low:g}, {high:g}]")
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(key, f"'{key}' must be an integer in [{low}, {high}]")
    return value


def _prompt(body: dict[str, Any], settings: ServeSettings, tokenizer: Tokenizer) -> list[int]:
    value = body.get("prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a batch of one prompt is one prompt
    if isinstance(value, list):
        raise bad("prompt", "'prompt' must be one string: send one request per prompt")
    if not isinstance(value, str) or not value:
        raise bad("prompt", "'prompt' must be a non-empty string")
    tokens = tokenizer.encode(value)
    if len(tokens) > settings.max_prompt_bytes:
        raise bad("prompt", f"'prompt' is {len(tokens)} bytes; the limit is {settings.max_prompt_bytes}")
    return tokens


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them")
    return tuple(stops)


def parse_completion(
    body: dict[str, Any], model: Transformer, settings: ServeSettings, tokenizer: Tokenizer
) -> CompletionRequest:
    """The request a completions body asks for; raises ApiError naming the first field that is wrong."""
    for key, value in body.items():
        if key in _ONLY_DEFAULT:
            if value is not None and value not in _ONLY_DEFAULT[key]:
                only = json.dumps(_ONLY_DEFAULT[key][0]) if _ONLY_DEFAULT[key] else "null"
                raise bad(key, f"'{key}' is not supported other than {only}")
        elif key not in _FIELDS:
            raise bad(key, f"Unrecognized request argument supplied: {key}")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad("model", "'model' must be the served model's name (GET /v1/models)")
    if name != settings.served_model:
        message = f"The model '{name}' does not exist; this server has '{settings.served_model}'"
        raise ApiError(404, message, "model", code="model_not_found")
    prompt = _prompt(body, settings, tokenizer)
    max_tokens = _integer(body, "max_tokens", 1, settings.max_new_tokens)
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, settings.max_new_tokens)
    if not RunningBatch.fits(model, prompt, max_tokens):
        window = model.config.max_seq_len
        raise bad(
            "max_tokens",
            f"this model's window is {window} tokens; the prompt has {len(prompt)}, so 'max_tokens' "
            f"may be at most {window - len(prompt)} (asked: {max_tokens})",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "'stream' must be true or false")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user", "'user' must be a string")
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=_integer(body, "seed", *SEED_RANGE),
        top_k=_integer(body, "top_k", 0, TOP_K_MAX) or 0,
    )
    if sampling.top_p == 0:
        raise bad("top_p", "'top_p' must be above 0")
    return CompletionRequest(prompt, max_tokens, sampling, _stop(body), stream, _include_usage(body, stream))


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream or not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", "'stream_options' is {\"include_usage\": true|false}, with 'stream': true only")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad("stream_options", "'stream_options.include_usage' must be true or false")
    return include


class CompletionText:
    """The text of a row's tokens as they come, one token at a time. Tokens are decoded incrementally by the
    tokenizer's stream decoder (a character split across tokens waits for its last piece; invalid bytes become
    U+FFFD, as /v1/generate decodes), EOS makes no text, the text ends before the first stop string, and
    text that could still become the start of a stop string is held back until it cannot."""

    def __init__(self, stop: tuple[str, ...], tokenizer: Tokenizer | None = None) -> None:
        tokenizer = tokenizer or ByteTokenizer()
        self.stop = stop
        self.text = ""  # decoded so far (without the stop string, once found)
        self.sent = 0  # characters of `text` already handed out
        self.tokens = 0  # tokens taken: the completion's usage
        self.stopped = False  # a stop string or EOS ended it
        self._eos_id = tokenizer.eos_id
        self._decoder = tokenizer.stream_decoder()

    def add(self, token: int) -> str:
        """The text that becomes safe to send with this token."""
        self.tokens += 1
        if token == self._eos_id:
            self.stopped = True
            return self._flush()
        self.text += self._decoder.step(token)
        # A stop string cannot begin in sent text (a suffix that could begin one is never sent).
        found = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if found:
            self.text, self.stopped = self.text[: min(found)], True
            return self._take(len(self.text))
        held = max((_overlap(self.text, s) for s in self.stop), default=0)
        return self._take(len(self.text) - held)

    def finish(self) -> str:
        """What is left once the row ended without a stop (its last bytes, held-back text)."""
        return self._flush()

    def _flush(self) -> str:
        self.text += self._decoder.flush()
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return piece

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"


async def texts(stream: TokenStream, text: CompletionText) -> AsyncGenerator[str, None]:
    """Per step of the batcher, the text that became safe to send (often a character, possibly nothing); it
    ends after a stop string or EOS, when the row is done, or with the error that failed the row's step."""
    async for tokens in stream:
        piece = ""
        for token in tokens:
            piece += text.add(token)
            if text.stopped:
                break
        yield piece
        if text.stopped:
            return
    yield text.finish()


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a start of `stop` (shorter than all of it)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def usage(request: CompletionRequest, text: CompletionText) -> dict[str, int]:
    return {
        "prompt_tokens": len(request.prompt),
        "completion_tokens": text.tokens,
        "total_tokens": len(request.prompt) + text.tokens,
    }


def completion_body(
    completion_id: str, created: int, model: str, choice_text: str, finish_reason: str | None
) -> dict[str, Any]:
    """A `text_completion` object: the whole response, or (with the text so far and no finish) a stream chunk."""
    choice = {"text": choice_text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def usage_chunk(completion_id: str, created: int, model: str, counts: dict[str, int]) -> dict[str, Any]:
    """A stream's last chunk when the request asked for `stream_options.include_usage`."""
    chunk = completion_body(completion_id, created, model, "", None)
    return chunk | {"choices": [], "usage": counts}


def models_body(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "strata"}]}


def now() -> int:
    """OpenAI's `created`: Unix seconds."""
    return int(time.time())
