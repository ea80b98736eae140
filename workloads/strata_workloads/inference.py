"""Inference on one device: load a training checkpoint (any layout it was saved from), optional INT8 with
torchao, batched greedy generation (KV cache) / scoring with right padding (causal attention never looks
right, so a padded row computes exactly what it would alone; texts longer than the model's window in sliding
windows), and the one rule that picks a row's next token
(`next_tokens`: greedy, or sampled with temperature and top-p)."""

from __future__ import annotations

import logging
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from strata_workloads.checkpoint import MARKER, CorruptCheckpoint, integrity_problem, newest_loadable, step_dir
from strata_workloads.hf_checkpoint import check_hf_model_dir, initial_model
from strata_workloads.model import FeedForward, KVCache, Transformer
from strata_workloads.presets import EOS_TOKEN, get_preset
from strata_workloads.settings import TrainSettings
from strata_workloads.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)


class Quantization(StrEnum):
    NONE = "none"
    INT8_WEIGHT = "int8-weight"  # int8 weights, activations in float
    INT8_DYNAMIC = "int8-dynamic"  # int8 weights and per-token dynamically quantised int8 activations


class Precision(StrEnum):
    """The dtype weights and activations are computed in (a cast of the model, not autocast)."""

    FP32 = "fp32"
    BF16 = "bf16"


DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}


def load_model(preset: str, checkpoint: Path | None, model_dir: str = "", step: int | None = None) -> Transformer:
    """The model with the weights of `checkpoint`; without one, a training run's step 0: `model_dir`'s weights (a
    Hugging Face directory, whose shape replaces the preset's), else the random weights of its default seed, so
    every replica serves the same model. A step folder is loaded as named, and refused
    (CorruptCheckpoint) when it fails its checksums: a flipped bit must never be served. A checkpoint root serves
    its checkpoint of `step` when that one is complete, verifies and loads (the step the replicas of one revision
    share, while the job writes newer ones), else its newest complete checkpoint that verifies and loads, falling
    back past damaged ones with a warning as training does (checkpoint.newest_loadable; nothing is moved: a server
    only reads); NoUsableCheckpoint when none does, FileNotFoundError when it has none. A `step` that is not there
    (the job's retention removed it) or does not load is a warning, not a failure: a newer step serves until the
    replicas roll to it. Logs the step folder it loaded ("weights loaded", ``checkpoint``): with a root, the one
    that loaded, so a replica's log says which training step it serves."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TrainSettings.seed)
        config = check_hf_model_dir(model_dir)[0] if model_dir else get_preset(preset)
        model = initial_model(config, model_dir if checkpoint is None else "")
    if checkpoint is None:
        return model.eval()
    if (checkpoint / MARKER).is_file():
        weights = _verified_weights(model, checkpoint)
        if isinstance(weights, str):
            raise CorruptCheckpoint(f"{checkpoint}: {weights}")
    else:
        found = _named_step(model, checkpoint, step) if step is not None else None
        found = found or newest_loadable(checkpoint, lambda path: _verified_weights(model, path))
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint under {checkpoint}")
        checkpoint, weights = found
    model.load_state_dict(weights)
    log.info("weights loaded", extra={"checkpoint": str(checkpoint)})
    return model.eval()


def _named_step(model: Transformer, root: Path, step: int) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """The weights of `root`'s checkpoint of `step` when it is complete, verifies and loads; else None, with a
    warning saying why (the caller then serves the newest that loads)."""
    path = step_dir(root, step)
    weights = _verified_weights(model, path) if (path / MARKER).is_file() else "not there, or not complete"
    if isinstance(weights, str):
        log.warning(
            "the step asked for is unusable, serving the newest checkpoint that loads",
            extra={"checkpoint": str(path), "reason": weights},
        )
        return None
    return path, weights


def _verified_weights(model: Transformer, path: Path) -> dict[str, torch.Tensor] | str:
    """The model weights of the checkpoint at `path` after its checksums pass, or why they cannot be served."""
    problem = integrity_problem(path)
    if problem is not None:
        return problem
    # Loaded in place into the model's own tensors (no second copy of the weights): a load that fails half-way
    # leaves no trace once an older checkpoint loads, since a load that succeeds writes every tensor.
    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():
            # DCP warns on every single-process load even when asked for one explicitly (no_dist=True).
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp_load(state, checkpoint_id=str(path), no_dist=True)
    # A damaged checkpoint fails in many ways (pickle, DCP, shapes), as in training; DCP's own CheckpointException
    # (a checkpoint of another model's shape, say) derives from BaseException, not Exception.
    except (Exception, CheckpointException) as err:
        return f"{type(err).__name__}: {err}"
    return state["model"]


def quantize(model: Transformer, mode: Quantization) -> Transformer:
    """INT8 for every nn.Linear (attention, dense MLPs, router, output head); embeddings and the stacked
    expert weights stay in float."""
    if mode is Quantization.NONE:
        return model
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = Int8WeightOnlyConfig() if mode is Quantization.INT8_WEIGHT else Int8DynamicActivationInt8WeightConfig()
    quantize_(model, config)
    return model


def prepare(model: Transformer, precision: Precision, mode: Quantization, compiled: bool) -> Transformer:
    """Cast, then quantise (torchao takes its scales' dtype from the weights), then compile.

    torchao's fast CPU int8 weight-only kernel (`aten._weight_int8pack_mm`) is reached only this way: inductor
    rewrites the dequantise-then-matmul pattern of an int8 weight-only linear into it only for bf16
    activations and scales, and only when compiled; fp32 or eager int8 weight-only dequantises on every call.
    """
    model = quantize(model.to(DTYPES[precision]), mode)
    if compiled:
        compile_for_serving(model)
    return model


def compile_for_serving(model: Transformer) -> None:
    """torch.compile every dense feed-forward and every other nn.Linear, with dynamic shapes.

    Why these pieces and not whole blocks: the linears are where the time goes and where torchao's int8 kernel
    is substituted, and they see only (batch, tokens, features) inputs. A whole block would also trace the KV
    cache, whose update reads the longest position as a Python int (a graph break) and whose length changes
    every decode step. Why dynamic shapes: the batcher's batch size (1..max_batch) and the prompt lengths
    vary per call; one symbolic graph per piece covers them, where static shapes would need a graph per
    (batch, length) pair or padding to buckets. Dynamo still specialises a size of 1, so every piece ends up
    with at most four graphs ((1 or n rows) x (1 or n tokens)); `warm_up` compiles all four before
    the server reports ready. The stacked expert weights of MoE layers stay eager (only their router is a
    linear).
    """
    inside_ffn = {id(m) for ffn in model.modules() if isinstance(ffn, FeedForward) for m in ffn.modules()}
    for module in model.modules():
        if isinstance(module, FeedForward) or (isinstance(module, nn.Linear) and id(module) not in inside_ffn):
            module.compile(dynamic=True)


def warm_up(model: Transformer) -> None:
    """One generation and one scoring call for each shape class a compiled model distinguishes: one row or
    several, one token (decode) or several (prefill, scoring). Afterwards no request compiles anything."""
    prompt, other = encode("def main():\n"), encode("import os\n")
    # Every compiled module runs nn.Module._call_impl, one code object, and each (weight shape, shape class)
    # pair is its own entry in that code object's cache: more than dynamo's default limit of 8, past which it
    # would silently run the rest eagerly. Raised only while warming up, the one time anything compiles.
    with torch._dynamo.config.patch(recompile_limit=4 * len(list(model.modules()))):
        generate(model, [prompt], [2])  # 1 x n prefill, 1 x 1 decode
        generate(model, [prompt, other], [2, 2])  # 2 x n prefill, 2 x 1 decode
        score(model, [prompt])
        score(model, [prompt, other])


@dataclass(frozen=True)
class Sampling:
    """How a row picks its next token. Temperature 0 is greedy (argmax, what `generate` does). Above 0 the token
    is drawn from softmax(logits / temperature), restricted first to the `top_k` most likely tokens (0: all), then
    to the smallest set of the most likely of those whose probabilities reach `top_p` (nucleus sampling), in that
    order as Hugging Face's and vLLM's samplers apply them, by a generator of the row's own seeded with `seed`
    (None: a random seed), so a seeded request repeats its text whatever else shares the batch."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0

    def generator(self) -> torch.Generator | None:
        """The row's generator (None when greedy: nothing is drawn)."""
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return generator


GREEDY = Sampling()


def next_tokens(
    logits: torch.Tensor, samplings: Sequence[Sampling], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """Each row's next token from its last logits (rows, vocab): argmax for a greedy row, a draw for the others.
    On the CPU: one row of a byte vocabulary is small, and a CPU generator gives the same draws on any device."""
    logits = logits.float().cpu()
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    for row, (sampling, generator) in enumerate(zip(samplings, generators, strict=True)):
        if generator is not None:
            tokens[row] = _draw(logits[row], sampling, generator)
    return tokens


def _draw(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if 0 < sampling.top_k < probs.numel():
        kept, order = probs.topk(sampling.top_k)  # exactly k tokens, whatever ties at the k-th
        probs = torch.zeros_like(probs).scatter(0, order, kept / kept.sum())
    if sampling.top_p < 1:
        ranked, order = probs.sort(descending=True)
        # A token stays while the tokens ranked above it hold less than top_p: the most likely always stays.
        keep = ranked.cumsum(0) - ranked < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ranked[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def encode(text: str) -> list[int]:
    """The byte tokenizer's ids of `text` (see strata_workloads.tokenizer for the others)."""
    return ByteTokenizer().encode(text)


def decode(tokens: list[int]) -> str:
    return ByteTokenizer().decode(tokens)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    batch = torch.full((len(rows), int(lengths.max())), EOS_TOKEN, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch, lengths


@torch.inference_mode()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: list[int]) -> list[list[int]]:
    """Greedy decoding for a batch of prompts; each row stops at its own max_new_tokens or at EOS.

    With a KV cache: one batched prefill of the right-padded prompts, then one batched decode step per new token
    (each row at its own position), so a step costs one token per row instead of re-running every prefix. A row
    whose prompt plus new tokens would pass `max_seq_len` needs the sliding window of `generate_recompute`,
    and then the whole batch takes that path.
    """
    limit = model.config.max_seq_len
    steps = max(max_new_tokens, default=0)
    if steps <= 0 or any(not p or len(p) + n > limit for p, n in zip(prompts, max_new_tokens, strict=True)):
        return generate_recompute(model, prompts, max_new_tokens)
    batch, lengths = _pad(prompts)
    capacity = int((lengths + torch.tensor(max_new_tokens)).max())
    cache = KVCache(capacity, positions=torch.arange(batch.shape[1]).expand(len(prompts), -1))
    logits = model(batch, cache)[torch.arange(len(prompts)), lengths - 1]
    done = [n <= 0 for n in max_new_tokens]
    produced: list[list[int]] = [[] for _ in prompts]
    for step in range(steps):
        next_tokens = logits.float().argmax(dim=-1)
        for i, token in enumerate(next_tokens.tolist()):
            if not done[i]:
                produced[i].append(token)
                done[i] = token == EOS_TOKEN or len(produced[i]) >= max_new_tokens[i]
        if all(done):
            break
        # Finished rows keep stepping (their output is dropped); clamping keeps them inside the cache.
        cache.positions = (lengths + step).clamp(max=capacity - 1)[:, None]
        logits = model(next_tokens[:, None], cache)[:, -1]
    return produced


@torch.inference_mode()
def generate_recompute(model: Transformer, prompts: list[list[int]], max_new_tokens: list[int]) -> list[list[int]]:
    """Greedy decoding without a cache: every step re-runs each row's (last `max_seq_len`) tokens. The
    reference the cached path is tested against, and the path for rows longer than the model's window."""
    rows = [list(p) for p in prompts]
    done = [n <= 0 for n in max_new_tokens]
    produced: list[list[int]] = [[] for _ in prompts]
    limit = model.config.max_seq_len
    for _ in range(max(max_new_tokens, default=0)):
        active = [i for i, d in enumerate(done) if not d]
        if not active:
            break
        batch, lengths = _pad([rows[i][-limit:] for i in active])
        logits = model(batch)
        last = logits[torch.arange(len(active)), lengths - 1]
        next_tokens = last.float().argmax(dim=-1).tolist()
        for i, token in zip(active, next_tokens, strict=True):
            rows[i].append(token)
            produced[i].append(token)
            if token == EOS_TOKEN or len(produced[i]) >= max_new_tokens[i]:
                done[i] = True
    return produced


def scoring_stride(requested: int | None, window: int) -> int:
    """The tokens each scoring window advances by: `requested` (ServeSettings.predict_stride), or half the
    model's window when None, the choice of Hugging Face's perplexity guide (stride 512 for GPT-2's 1024): every
    token after the first window is predicted from at least half a window of context, at twice the forwards of
    disjoint windows (stride = window; less context) and a fraction of stride 1's (most context, one window per
    token). Raises ValueError naming the setting when it lies outside [1, window]: a longer stride would skip
    tokens."""
    stride = window // 2 if requested is None else requested
    if not 1 <= stride <= window:
        raise ValueError(f"predict_stride={requested} must lie in [1, {window}] (the model's max_seq_len)")
    return stride


@dataclass(frozen=True)
class Window:
    """One forward of a long text: inputs text[begin:end] predict text[begin + 1 : end + 1]; only the
    predictions of inputs from `counted` on count (the earlier ones were counted by the previous window)."""

    begin: int
    end: int
    counted: int


def windows(predictions: int, size: int, stride: int) -> list[Window]:
    """The sliding windows that predict each of a text's `predictions` tokens (its length - 1) exactly once,
    as Hugging Face's perplexity guide does: windows of `size` inputs starting every `stride`, the first
    counting all its predictions, each later one only those past the previous window's end, so every token
    is predicted with as much left context as a window allows. A text of at most size + 1 tokens is one
    window."""
    out: list[Window] = []
    previous_end = 0
    for begin in range(0, predictions, stride):
        end = min(begin + size, predictions)
        out.append(Window(begin, end, previous_end))
        previous_end = end
        if end == predictions:
            break
    return out


@torch.inference_mode()
def score(model: Transformer, texts: list[list[int]], stride: int | None = None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, predicted tokens) per text, for perplexity: over every token but the
    first, a text longer than the model's window scored with sliding `windows` (stride: `scoring_stride`).

    Every window of every text is a row of one batched forward (right-padded, as `generate` pads prompts); a
    text within the window is one row built exactly as before windows existed, so its score is unchanged.
    """
    size = model.config.max_seq_len
    step = scoring_stride(stride, size)
    owners: list[int] = []
    spans: list[Window] = []
    for i, text in enumerate(texts):
        for window in windows(len(text) - 1, size, step):
            owners.append(i)
            spans.append(window)
    if not spans:  # only one-token texts: nothing to predict
        return [(0.0, len(text) - 1) for text in texts]
    # Each row carries its targets' last token too: the inputs are the row without its last column.
    batch, lengths = _pad([texts[i][w.begin : w.end + 1] for i, w in zip(owners, spans, strict=True)])
    logits = model(batch[:, :-1]).float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
    columns = torch.arange(batch.shape[1] - 1)[None, :]
    first = torch.tensor([w.counted - w.begin for w in spans])[:, None]
    mask = (columns >= first) & (columns < (lengths - 1)[:, None])
    sums = (nll * mask).sum(dim=1).tolist()
    totals = [0.0] * len(texts)
    for i, s in zip(owners, sums, strict=True):
        totals[i] += s
    return [(total, len(text) - 1) for total, text in zip(totals, texts, strict=True)]
