"""End to end on small local data: the runner against CLIP_benchmark's own pipelines and pytrec_eval on the same
model, Matryoshka sizes, the embedding cache (a second run calls no model), failures reported and the rest counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal_embed.encoders import truncate_unit
from multimodal_embed.evaluation import datasets as D
from multimodal_embed.evaluation import metrics as M
from multimodal_embed.evaluation.runner import EmbeddingCache, embed_images, embed_texts, evaluate

from .conftest import CLASSES

TEMPLATES = ["a photo of a {}.", "a {} picture", "{}"]


class Spy:
    """Counts calls of an Embedder's model-running methods (the real methods still run)."""

    def __init__(self, emb, monkeypatch):
        self.calls = 0
        for name in ("embed_text", "embed_images_with_errors"):
            real = getattr(emb, name)

            def wrapped(*args, _real=real, **kwargs):
                self.calls += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(emb, name, wrapped)


class _Towers(torch.nn.Module):
    """CLIP_benchmark's model interface over vectors our Embedder made: encode_* return what they are given."""

    def encode_image(self, x):
        return x

    def encode_text(self, x):
        return x


class _Data(list):
    """A list of batches with the ``dataset.classes`` CLIP_benchmark reads."""

    def __init__(self, batches, classes):
        super().__init__(batches)
        self.dataset = type("Dataset", (), {"classes": classes})()


def test_zero_shot_equals_clip_benchmark_pipeline(clip, photos, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification as cb

    monkeypatch.setattr(cb, "float", lambda x: np.asarray(x).reshape(()).item(), raising=False)  # numpy >= 2.4
    (result,) = evaluate([photos], [clip], templates=TEMPLATES, cache_dir=None, show_progress=False).results
    data = D.load_dataset(photos)
    images = torch.from_numpy(clip.embed_images(data.images.files))
    labels = torch.tensor(data.labels)
    batches = _Data([(images[i:i + 5], labels[i:i + 5]) for i in range(0, len(labels), 5)], list(CLASSES))

    def tokenizer(texts):
        return torch.from_numpy(clip.embed_text(texts, task=clip.query_task))

    theirs = cb.evaluate(_Towers(), batches, tokenizer, data.classes, [t.replace("{}", "{c}") for t in TEMPLATES],
                         "cpu", amp=False)
    assert data.classes == sorted(CLASSES) and result.counted == 18
    assert result.metrics["acc@1"] == pytest.approx(theirs["acc1"], abs=1e-9)
    assert result.metrics["acc@5"] == pytest.approx(theirs["acc5"], abs=1e-9)
    assert result.metrics["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-9)


def test_image_text_equals_clip_benchmark_pipeline(clip, captions):
    from clip_benchmark.metrics import zeroshot_retrieval as cb

    (result,) = evaluate([captions], [clip], cache_dir=None, show_progress=False).results
    data = D.load_dataset(captions)
    assert data.task == "image-text" and len(data.images.files) == 24 and len(data.captions) == 32
    images = torch.from_numpy(clip.embed_images(data.images.files))
    per_image = [[c for c, o in zip(data.captions, data.caption_image) if o == i] for i in range(24)]
    batches = [(images[i:i + 8], per_image[i:i + 8]) for i in range(0, 24, 8)]

    def tokenizer(texts):
        return torch.from_numpy(clip.embed_text(texts, task=clip.query_task))

    theirs = cb.evaluate(_Towers(), batches, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    for k in (1, 5, 10):  # CLIP_benchmark averages in float32: equal to its precision
        assert result.metrics[f"text_to_image_R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"],
                                                                        abs=1e-6)
        assert result.metrics[f"image_to_text_R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"],
                                                                        abs=1e-6)


def test_text_retrieval_equals_pytrec_eval_with_the_models_prefixes(nomic, beir):
    import pytrec_eval

    (result,) = evaluate([beir], [nomic], cache_dir=None, show_progress=False).results
    data = D.load_dataset(beir)
    # the vectors the runner scores (its chunks batch the texts differently: equal to embed_text within float32
    # rounding, which is enough to reorder the near-ties of a random tiny model, so pytrec_eval gets these)
    q = embed_texts(nomic, data.queries, "search_query", EmbeddingCache(None), show_progress=False)
    d = embed_texts(nomic, data.docs, "search_document", EmbeddingCache(None), show_progress=False)
    np.testing.assert_allclose(q, nomic.embed_text(data.queries, task="search_query"), atol=1e-6)
    np.testing.assert_allclose(d, nomic.embed_text(data.docs, task="search_document"), atol=1e-6)
    assert np.abs(q - nomic.embed_text(data.queries, task=None)).max() > 1e-3  # the query prefix is applied
    scores = q @ d.T
    run = {qid: dict(zip(data.doc_ids, map(float, row))) for qid, row in zip(data.query_ids, scores)}
    ev = pytrec_eval.RelevanceEvaluator(dict(zip(data.query_ids, data.qrels)), {"ndcg_cut.10", "recip_rank",
                                                                                "recall.100"})
    per_query = ev.evaluate(run).values()
    ref = {"nDCG@10": np.mean([r["ndcg_cut_10"] for r in per_query]),
           "MRR@10": np.mean([r["recip_rank"] if r["recip_rank"] >= 0.1 else 0 for r in per_query]),
           "R@100": np.mean([r["recall_100"] for r in per_query])}
    # the runner's ranking and metrics on these scores: exactly pytrec_eval's (ties by descending document id)
    ranked = [[data.doc_ids[j] for j in row] for row in M.rank_documents(scores, data.doc_ids)]
    ours = {k: np.mean(v) for k, v in M.retrieval_metrics(ranked, data.qrels).items()}
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    # end to end: the runner scores queries in chunks, and BLAS rounds a chunk's dot products differently in the
    # last bits, enough to reorder the exact ties of this set's 147 duplicate documents (a random tiny model):
    # equal within that tie noise
    assert result.counted == len(data.queries) == 864
    for key, value in ref.items():
        assert result.metrics[key] == pytest.approx(value, abs=5e-3), key


def test_matryoshka_sizes_and_a_second_run_from_the_cache(nomic, clip, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(nomic.text_encoder, "matryoshka_dims", (32, 64))  # the tiny model stands in for v1.5
    spy, cache = Spy(nomic, monkeypatch), tmp_path / "cache"
    first = evaluate([photos], [nomic, clip], dims=[64, 32], templates=TEMPLATES, cache_dir=cache,
                     show_progress=False)
    assert spy.calls == 2  # the images and the prompts, once each, at full size
    assert [(r.model, r.dim) for r in first.results][1:] == [(first.results[0].model, 32), (
        first.results[2].model, 24)]
    assert "sizes [64, 32] skipped" in first.results[2].note  # tiny CLIP is not Matryoshka: its full size only
    # 32: the prompts embedded with dimensionality=32, template-averaged; images cut and renormalised
    data = D.load_dataset(photos)
    prompts = nomic.embed_text([t.format(c) for c in data.classes for t in TEMPLATES], task="search_query",
                               dimensionality=32)
    classes = prompts.reshape(len(data.classes), len(TEMPLATES), -1).mean(1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    pred = np.argmax(truncate_unit(nomic.embed_images(data.images.files), 32) @ classes.T, axis=1)
    assert first.results[1].metrics["acc@1"] == pytest.approx(np.mean(pred == np.array(data.labels)), abs=1e-9)
    calls = spy.calls
    again = evaluate([photos], [nomic], dims=[32], templates=TEMPLATES, cache_dir=cache, show_progress=False)
    assert spy.calls == calls and again.settings["cache_misses"] == 0  # another size: nothing embedded again
    assert again.results[0].metrics == first.results[1].metrics
    # keyed on contents: a renamed copy is a hit, a changed file is a miss
    (photos / "cat" / "0000.jpg").rename(photos / "cat" / "zz-renamed.jpg")
    evaluate([photos], [nomic], dims=[32], templates=TEMPLATES, cache_dir=cache, show_progress=False)
    assert spy.calls == calls
    (photos / "dog" / "0002.jpg").write_bytes((photos / "dog" / "0000.jpg").read_bytes())  # a known content
    evaluate([photos], [nomic], dims=[32], templates=TEMPLATES, cache_dir=cache, show_progress=False)
    assert spy.calls == calls
    with Image.open(photos / "dog" / "0001.jpg") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "dog" / "0001.jpg")
    changed = evaluate([photos], [nomic], dims=[32], templates=TEMPLATES, cache_dir=cache, show_progress=False)
    assert spy.calls == calls + 1 and changed.settings["cache_misses"] == 1  # the changed file alone


def test_a_corrupt_image_is_reported_and_the_rest_counted(clip, photos, tmp_path):
    clean = evaluate([photos], [clip], templates=TEMPLATES, cache_dir=None, show_progress=False).results[0]
    (photos / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (photos / "dog" / "empty.png").write_bytes(b"")
    report = evaluate([photos], [clip], templates=TEMPLATES, cache_dir=tmp_path / "c", show_progress=False)
    (result,) = report.results
    assert [f for f, _ in result.failures] == [str(photos / "cat" / "broken.jpg"), str(photos / "dog" / "empty.png")]
    assert result.counted == 18 and result.metrics == clean.metrics  # the 18 good images, scored as before
    assert report.failures == result.failures and all(reason for _, reason in result.failures)


def test_an_unreadable_file_is_a_failure_without_a_model_call(clip, captions, tmp_path, monkeypatch):
    rows = captions.read_text().splitlines()
    captions.write_text("\n".join(rows + ['{"image": "missing.png", "caption": "a missing stamp"}']) + "\n")
    data = D.load_dataset(captions)
    assert data.images.errors and data.images.hashes[-1] is None
    _vectors, ok, reasons = embed_images(clip, data.images, EmbeddingCache(None), show_progress=False)
    assert ok.sum() == 24 and not ok[-1] and reasons[24].startswith("cannot read")
    (result,) = evaluate([data], [clip], cache_dir=None, show_progress=False).results
    assert result.counted == 24 and result.failures == [(str(captions.parent / "missing.png"), reasons[24])]


def test_an_interrupted_run_keeps_whole_chunks_and_the_next_run_goes_on(clip, photos, tmp_path, monkeypatch):
    from multimodal_embed.evaluation import runner

    monkeypatch.setattr(runner, "CHUNK", 4)  # 18 images: chunks of 4, 4, 4, 4, 2
    real = clip.embed_images_with_errors
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(clip, "embed_images_with_errors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate([photos], [clip], templates=TEMPLATES, cache_dir=tmp_path / "cache", show_progress=False)
    calls.clear()
    monkeypatch.setattr(clip, "embed_images_with_errors", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    resumed = evaluate([photos], [clip], templates=TEMPLATES, cache_dir=tmp_path / "cache", show_progress=False)
    assert calls == [4, 4, 2]  # the two finished chunks came from the cache
    fresh = evaluate([photos], [clip], templates=TEMPLATES, cache_dir=None, show_progress=False)
    assert resumed.results[0].metrics == fresh.results[0].metrics
