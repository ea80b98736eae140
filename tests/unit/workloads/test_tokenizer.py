"""Tokenizers behind one protocol: the byte tokenizer keeps its ids, a tokenizer.json trained here round-trips
text and finds its end-of-text id, streamed text equals the whole decode, and a vocabulary the model cannot embed
is refused naming both sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as hf_decoders

from strata_workloads.presets import EOS_TOKEN
from strata_workloads.tokenizer import ByteTokenizer, check_fits, load_tokenizer, resolve_tokenizer_path

TEXTS = ["the quick brown fox jumps over the lazy dog", "héllo wörld, naïve café", "strata trains and serves"] * 4


def train_tokenizer_json(directory: Path, eos: str = "<|endoftext|>", vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer.json trained on a few strings, as a Hugging Face model directory holds."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.mark.timeout(30)
def test_byte_tokenizer_keeps_the_byte_ids_and_eos() -> None:
    tokenizer = load_tokenizer(None)
    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.encode("hé") == [104, 0xC3, 0xA9]
    assert tokenizer.eos_id == EOS_TOKEN
    assert tokenizer.vocab_size == EOS_TOKEN + 1
    assert tokenizer.decode([104, EOS_TOKEN, 0xC3, 0xA9]) == "hé"
    stream = tokenizer.stream_decoder()
    assert "".join(stream.step(t) for t in [0xC3, 0xA9, EOS_TOKEN]) + stream.flush() == "é"


@pytest.mark.timeout(30)
def test_hf_tokenizer_round_trips_text_and_finds_eos(tmp_path: Path) -> None:
    path = train_tokenizer_json(tmp_path / "model")
    for where in (str(path), str(path.parent)):  # the file or the directory holding it
        tokenizer = load_tokenizer(where)
        assert tokenizer.eos_id == Tokenizer.from_file(str(path)).token_to_id("<|endoftext|>")
        for text in TEXTS[:3]:
            ids = tokenizer.encode(text)
            assert len(ids) < len(text.encode()), "BPE merges: fewer ids than bytes"
            assert max(ids) < tokenizer.vocab_size
            assert tokenizer.decode([*ids, tokenizer.eos_id]) == text
            stream = tokenizer.stream_decoder()
            assert "".join(stream.step(t) for t in ids) + stream.flush() == text


@pytest.mark.timeout(30)
def test_eos_comes_from_tokenizer_config_when_present(tmp_path: Path) -> None:
    path = train_tokenizer_json(tmp_path, eos="<end>")
    with pytest.raises(ValueError, match="no end-of-text token"):
        load_tokenizer(str(path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<end>"}}))
    assert load_tokenizer(str(path)).eos_id == Tokenizer.from_file(str(path)).token_to_id("<end>")


@pytest.mark.timeout(30)
def test_bad_paths_and_oversized_vocabularies_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such tokenizer file"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a readable tokenizer\.json"):
        load_tokenizer(str(tmp_path))
    tokenizer = load_tokenizer(str(train_tokenizer_json(tmp_path / "ok", vocab_size=300)))
    check_fits(tokenizer, tokenizer.vocab_size)
    with pytest.raises(ValueError, match=rf"\({tokenizer.vocab_size} ids\).*vocab_size=256"):
        check_fits(tokenizer, 256)


@pytest.mark.timeout(30)
def test_tokenizer_setting_falls_back_to_the_model_directory_then_bytes(tmp_path: Path) -> None:
    assert resolve_tokenizer_path("", str(tmp_path)) is None
    path = train_tokenizer_json(tmp_path)
    assert resolve_tokenizer_path("", str(tmp_path)) == str(path)
    assert resolve_tokenizer_path("/elsewhere/tokenizer.json", str(tmp_path)) == "/elsewhere/tokenizer.json"
    assert resolve_tokenizer_path("", "") is None
