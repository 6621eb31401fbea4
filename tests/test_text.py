"""embed_text: the documented recipe, batching, long texts and bad input (tiny nomic fixtures, real MiniLM)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from multimodal_embed import Embedder, InputTypeError, InvalidInputError
from multimodal_embed.batching import plan_batches


@pytest.fixture(scope="module")
def v15(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), device="cpu")


@pytest.fixture(scope="module")
def v1(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1-tiny"), device="cpu")


def _words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "river", "stone", "cloud", "music", "paper", "green", "house", "light", "table"]
    return " ".join(rng.choice(vocab, size=n))


def test_shapes_dtype_unit_rows_and_order(v15):
    texts = ["What is TSNE?", "Who is Laurens van der Maaten?", _words(300), "short"]
    out = v15.embed_text(texts, task="search_query")
    assert out.dtype == np.float32 and out.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    for i, t in enumerate(texts):  # input order restored after length sorting
        np.testing.assert_allclose(v15.embed_text([t], task="search_query")[0], out[i], atol=1e-6)


def test_recipe_matches_manual_computation(v15, v1):
    """prefix + tokenizer + model + mean pool (+ LN without affine for v1.5) + L2, computed by hand."""
    text = "What is TSNE?"
    for emb, matryoshka in ((v15, True), (v1, False)):
        enc = emb.text_encoder
        ids = enc.tokenizer("search_query: " + text, return_tensors="pt")
        with torch.inference_mode():
            h = enc.model(ids["input_ids"], ids["attention_mask"])
        pooled = h.mean(1)
        if matryoshka:
            pooled = torch.nn.functional.layer_norm(pooled, (pooled.shape[-1],), eps=1e-5)
        want = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        np.testing.assert_allclose(emb.embed_text([text], task="search_query"), want, atol=1e-6)


def test_prefixes(v15):
    enc = v15.text_encoder
    assert enc.apply_prefix(["a", "search_query: b"], "search_query") == ["search_query: a", "search_query: b"]
    assert enc.apply_prefix(["a"], None) == ["a"]
    for task in ("search_query", "search_document", "clustering", "classification"):
        assert enc.apply_prefix(["x"], task) == [f"{task}: x"]
    np.testing.assert_allclose(v15.embed_text(["search_query: hi"], task="search_query"),
                               v15.embed_text(["hi"], task="search_query"), atol=0)
    np.testing.assert_allclose(v15.embed_text(["search_query: hi"], task=None),
                               v15.embed_text(["hi"], task="search_query"), atol=1e-7)
    assert not np.allclose(v15.embed_text(["hi"], task=None), v15.embed_text(["hi"], task="search_query"))


def test_matryoshka_dimensionality(fixtures_dir):
    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"))
    full = emb.embed_text(["one text"])
    assert full.shape == (1, 64)
    with pytest.raises(InvalidInputError, match="between"):
        emb.embed_text(["x"], dimensionality=32)
    with pytest.raises(InvalidInputError, match="between"):
        emb.embed_text(["x"], dimensionality=1000)
    with pytest.raises(InvalidInputError, match="int"):
        emb.embed_text(["x"], dimensionality="64")


def test_v1_rejects_matryoshka(v1):
    assert v1.embed_text(["x"], dimensionality=64).shape == (1, 64)  # its full size is allowed
    with pytest.raises(InvalidInputError, match="not trained for Matryoshka"):
        v1.embed_text(["x"], dimensionality=32)


def test_bad_input(v15):
    assert v15.embed_text([]).shape == (0, 64)
    with pytest.raises(InputTypeError, match=r"texts\[1\] is int"):
        v15.embed_text(["ok", 3])
    with pytest.raises(TypeError):  # the builtin still catches it
        v15.embed_text(["ok", None])
    np.testing.assert_array_equal(v15.embed_text("one text"), v15.embed_text(["one text"]))  # one item: one row
    with pytest.raises(InputTypeError, match="texts must be a str or a list of str"):
        v15.embed_text(b"bytes are not text")
    with pytest.raises(InvalidInputError, match="search_query") as err:
        v15.embed_text(["x"], task="query")
    assert isinstance(err.value, ValueError)
    with pytest.raises(InvalidInputError, match="long_text"):
        v15.embed_text(["x"], long_text="split")
    with pytest.raises(InvalidInputError, match="batch_size"):
        v15.embed_text(["x"], batch_size=0)
    out = v15.embed_text(["", ""], task=None)  # the empty string embeds ([CLS] [SEP])
    assert np.isfinite(out).all() and out.shape == (2, 64)


def test_batch_independence_with_long_text(v15):
    long_text = _words(2500, seed=1)  # > 2048 tokens: dynamic NTK depends on the padded length
    mid_text = _words(2200, seed=2)
    short = ["a cat", _words(40, seed=3), _words(900, seed=4)]
    alone = np.stack([v15.embed_text([t])[0] for t in short + [mid_text, long_text]])
    mixed = v15.embed_text([long_text, short[0], mid_text, short[1], short[2]], batch_size=8,
                           max_tokens=1 << 16)
    np.testing.assert_allclose(mixed[[1, 3, 4, 2, 0]], alone, atol=1e-6)
    # and nothing depends on what ran before
    np.testing.assert_allclose(v15.embed_text([short[0]]), alone[:1], atol=1e-6)


def test_long_text_truncate_warns_and_mean_chunks(fixtures_dir, caplog):
    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), max_length=64)
    enc = emb.text_encoder
    long_text = _words(150, seed=5)
    with caplog.at_level(logging.WARNING, logger="multimodal_embed"):
        cut = emb.embed_text([long_text, "short"], task=None)
    assert "1 of 2 texts" in caplog.text
    ids = enc.tokenize([long_text])[0]
    head = enc.tokenizer.decode(ids[1:63])
    np.testing.assert_allclose(cut[0], emb.embed_text([head], task=None)[0], atol=1e-5)

    # mean: token-weighted mean of the chunk's mean-pooled states, then LN + L2 (v1.5)
    whole = emb.embed_text([long_text], task=None, long_text="mean")
    chunks = [ids[:1] + ids[1:-1][i:i + 62] + ids[-1:] for i in range(0, len(ids) - 2, 62)]
    pooled = []
    with torch.inference_mode():
        for c in chunks:
            pooled.append(enc.model(torch.tensor([c])).mean(1)[0] * len(c))
    p = torch.stack(pooled).sum(0) / sum(len(c) for c in chunks)
    want = torch.nn.functional.normalize(torch.nn.functional.layer_norm(p, (64,), eps=1e-5), dim=-1)
    np.testing.assert_allclose(whole[0], want.numpy(), atol=1e-6)


def test_truncation_warns_once_per_model_with_later_ones_at_debug(fixtures_dir, caplog):
    """1,000 over-long texts embedded one call at a time (a server, an indexing loop): one warning; the rest are
    counted in the debug log. Another model (another Embedder) warns once on its own."""
    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), max_length=16)
    long_text = _words(40, seed=7)
    with caplog.at_level(logging.DEBUG, logger="multimodal_embed"):
        for _ in range(1000):
            emb.embed_text([long_text], task=None, show_progress=False)
        emb.embed_text(["short"], task=None, show_progress=False)  # nothing to say
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING and "truncated" in r.getMessage()]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "truncated" in r.getMessage()]
    assert len(warnings_) == 1 and "1 of 1 texts were longer than 16 tokens" in warnings_[0].getMessage()
    assert len(debug) == 999 and "(1000 so far by this model)" in debug[-1].getMessage()
    assert emb.text_encoder.truncations.count == 1000
    caplog.clear()
    other = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), max_length=16)
    with caplog.at_level(logging.WARNING, logger="multimodal_embed"):
        other.embed_text([long_text, long_text, "short"], task=None, show_progress=False)
        other.embed_text([long_text], task=None, show_progress=False)
    assert [r.getMessage()[:28] for r in caplog.records] == ["2 of 3 texts were longer tha"]


def test_plan_batches_token_budget_and_solo():
    lengths = [5, 100, 7, 100, 3000, 2500, 2500, 50]
    batches = plan_batches(lengths, max_batch_size=3, max_tokens=300, solo=lambda n: n > 2048)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3
        assert len(b) * width <= max(300, width)
        if width > 2048:
            assert len({lengths[i] for i in b}) == 1
    assert [4] in batches


def test_sentence_transformers_minilm_matches_encode(minilm_dir):
    from sentence_transformers import SentenceTransformer

    emb = Embedder.from_pretrained(text=str(minilm_dir), device="cpu")
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "x " * 400, ""]
    ours = emb.embed_text(texts)
    theirs = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert emb.info["text"]["dim"] == 384


def test_minilm_paraphrase_ranks_first(minilm_dir):
    emb = Embedder.from_pretrained(text=str(minilm_dir))
    query = emb.embed_text(["How do I bake bread at home?"])
    docs = emb.embed_text(["A recipe for making your own loaf of bread in the kitchen.",
                           "The stock market fell sharply on Tuesday.",
                           "Cats sleep for most of the day.",
                           "The train to Paris leaves at noon."])
    scores = Embedder.similarity(query, docs)[0]
    assert scores.argmax() == 0 and scores[0] - np.sort(scores)[-2] > 0.2


# -- texts bounded before the tokenizer (issue 36.2) ------------------------------------------------------------------
def test_long_text_is_cut_before_tokenizing_with_the_same_vector(fixtures_dir, minilm_dir, monkeypatch):
    """A text far over the character cap gives the vector it gave when tokenized whole (the cap off), on nomic (64-
    and 300-token contexts) and MiniLM (256), for plain words, URLs, accents and punctuation, leading spaces."""
    from multimodal_embed import text as text_mod

    models = [Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), max_length=n) for n in (64, 300)]
    models.append(Embedder.from_pretrained(text=str(minilm_dir), device="cpu"))
    for emb in models:
        cap = text_mod.text_char_cap(emb.max_text_length)
        texts = [_words(cap // 2, seed=1), "https://example.org/a/b?q=1&x=%20y " * (cap // 12),
                 _words(cap // 6 - 1, seed=2) + "\n" + "Ünïcödé, punctuation! " * (cap // 10), " " * 50 + _words(cap)]
        assert all(len(t) > 2 * cap for t in texts[:1]) and all(len(t) > cap for t in texts)
        bounded = text_mod.check_texts(texts, max_length=emb.max_text_length)
        assert all(len(b) <= cap for b in bounded)
        assert all(n > emb.max_text_length for n in emb.count_tokens(texts))
        got = emb.embed_text(texts, task="search_document")
        with monkeypatch.context() as m:
            m.setattr(text_mod, "MAX_CHARS_PER_TOKEN", 10**9)  # the whole text tokenized, as before the cap
            assert text_mod.check_texts(texts, max_length=emb.max_text_length) == texts
            want = emb.embed_text(texts, task="search_document")
        np.testing.assert_array_equal(got, want)


def test_tokenizer_never_sees_more_than_the_cap(minilm_dir, monkeypatch):
    emb = Embedder.from_pretrained(text=str(minilm_dir), device="cpu")
    enc = emb.text_encoder
    seen: list[int] = []
    real = enc.tokenizer

    class Counting:  # the real tokenizer, recording what it is given
        def __call__(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return real(texts, **kw)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(enc, "tokenizer", Counting())
    huge = "word " * 400_000  # 2 MB
    emb.embed_text([huge, "short", huge])
    emb.count_tokens([huge])
    from multimodal_embed.text import text_char_cap
    assert seen and max(seen) <= text_char_cap(enc.max_length)


def test_mean_mode_refuses_a_text_over_its_cap_naming_it(fixtures_dir):
    from multimodal_embed.text import MAX_TEXT_CHARS

    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), max_length=64)
    with pytest.raises(InvalidInputError, match=r"texts\[1\] has 1000001 characters.*long_text='mean'"):
        emb.embed_text(["fine", "a" * (MAX_TEXT_CHARS + 1)], long_text="mean")
    assert emb.embed_text(["a " * 5000], long_text="mean").shape == (1, 64)  # long, under the cap: chunked whole


def test_bound_text_ends_at_whitespace():
    from multimodal_embed.text import bound_text

    assert bound_text("abc", 3) == "abc"
    assert bound_text("aaaa bbbb cccc dddd", 16) == "aaaa bbbb cccc"  # not "aaaa bbbb cccc d"
    assert bound_text("x" * 20, 8) == "x" * 8  # no whitespace near the end: cut at the cap


PEAK = """
import resource, sys
from multimodal_embed import Embedder
emb = Embedder.from_pretrained(text=sys.argv[1], device="cpu")
emb.embed_text(["warm up"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
huge = "lorem ipsum dolor sit amet " * (10_000_000 // 27)  # 10 MB
emb.embed_text([huge])
emb.count_tokens([huge, huge])
print("DELTA_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_ten_megabyte_text_costs_little_memory(minilm_dir, tmp_path):
    """Peak RSS in a subprocess: embedding and counting a 10 MB text (truncated) adds well under 200 MB (the whole
    text tokenized cost ~2 GB)."""
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    proc = subprocess.run([sys.executable, str(script), str(minilm_dir)], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    delta = float(proc.stdout.split("DELTA_MB")[1])
    assert delta < 200, delta
