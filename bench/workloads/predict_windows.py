"""/v1/predict on texts longer than the model's window: perplexity and time per text, by stride, side by side
with one forward over the whole text (what scoring did before sliding windows).

Trains the `small` preset (256 positions) briefly on the stdlib corpus (serving_bench.train_small), then scores
held-out stdlib documents cut to `--text-bytes` (the server's longest accepted text by default): perplexity over
every token and milliseconds per text, for one forward over the whole text (positions past the 256 the model
was trained on) and for sliding windows at several strides (the server's default is half the window).

    python bench/workloads/predict_windows.py --train-steps 150
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from serving_bench import train_small

from strata_workloads.data import load_documents, stdlib_root
from strata_workloads.inference import score
from strata_workloads.model import Transformer
from strata_workloads.settings import ServeSettings


def held_out_texts(length: int, count: int) -> list[list[int]]:
    """The last stdlib documents at least `length` bytes long, cut to `length` (train_small trains on the
    others)."""
    docs = load_documents(stdlib_root(), max_docs=600)[-40:]
    return [list(d.data[:length]) for d in docs if len(d.data) >= length][:count]


@torch.inference_mode()
def whole_text(model: Transformer, text: list[int]) -> tuple[float, int]:
    """One forward over all the text's tokens: scoring before sliding windows."""
    ids = torch.tensor(text)
    logits = model(ids[None, :-1])[0].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum")), len(text) - 1


def measure(name: str, scorer: Callable[[list[int]], tuple[float, int]], texts: list[list[int]]) -> None:
    """One text at a time (as lone requests): perplexity over all of them, mean milliseconds per text."""
    began = time.perf_counter()
    scored = [scorer(t) for t in texts]
    ms = (time.perf_counter() - began) * 1000 / len(texts)
    ppl = math.exp(sum(s for s, _ in scored) / sum(n for _, n in scored))
    print(f"| {name} | {ppl:.3f} | {ms:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--text-bytes", type=int, default=ServeSettings.max_prompt_bytes)
    parser.add_argument("--texts", type=int, default=10)
    args = parser.parse_args()
    model, _ = train_small(args.train_steps, 256)
    texts = held_out_texts(args.text_bytes, args.texts)
    window = model.config.max_seq_len
    print(f"\n{len(texts)} held-out texts of {args.text_bytes} bytes; model window {window} positions\n")
    print("| scoring | perplexity | ms per text |\n| --- | --- | --- |")
    measure("one forward over the whole text", lambda text: whole_text(model, text), texts)
    for stride in (window, window // 2, window // 4):
        measure(f"sliding window, stride {stride}", lambda text, s=stride: score(model, [text], s)[0], texts)


if __name__ == "__main__":
    main()
