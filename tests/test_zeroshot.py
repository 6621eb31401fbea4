"""Zero-shot classification: exact against a direct computation, calibration, caching, evaluation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from multimodal_embed import Embedder, InvalidInputError
from multimodal_embed import zeroshot as zs
from multimodal_embed.zeroshot import ZeroShotClassifier, fit_temperature

from .conftest import gallery_photos, labelled_folder

LABELS = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a blurry {} picture", "{}"]


@pytest.fixture(scope="module")
def nomic(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from tests.backends.tiny import hf_folder

    return Embedder.from_pretrained(f"hf:{hf_folder(tmp_path_factory.mktemp('zs'), 'clip')}")


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    zs._MEMORY_CACHE.clear()


def _images(n=6):
    return gallery_photos()[:n]


def _direct(emb, images):
    prompts = [t.format(lab) for lab in LABELS for t in TEMPLATES]
    text = emb.embed_text(prompts, task=emb.query_task).reshape(len(LABELS), len(TEMPLATES), -1).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cos = emb.embed_images(images) @ text.T
    scale = emb.logit_scale or zs.DEFAULT_LOGIT_SCALE
    logits = scale * cos.astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return cos, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("which", ["nomic", "clip"])
def test_predictions_equal_direct_computation(which, request):
    emb = request.getfixturevalue(which)
    images = _images()
    clf = ZeroShotClassifier(emb, LABELS, templates=TEMPLATES)
    cos, probs = _direct(emb, images)
    preds = clf.predict(images, top_k=3)
    for row, pred in enumerate(preds):
        assert [p.label for p in pred] == [LABELS[j] for j in np.argsort(-cos[row], kind="stable")]
        np.testing.assert_allclose([p.cosine for p in pred], np.sort(cos[row])[::-1], atol=1e-6)
        np.testing.assert_allclose(sorted((p.probability for p in pred), reverse=True),
                                   np.sort(probs[row])[::-1], atol=1e-6)
    np.testing.assert_allclose(clf.probabilities(images).sum(1), 1.0, atol=1e-5)
    if which == "nomic":
        assert emb.query_task == "search_query" and clf.logit_scale == zs.DEFAULT_LOGIT_SCALE
    else:
        assert emb.query_task is None and clf.logit_scale == pytest.approx(emb.logit_scale)
    assert clf.predict(images[:1], top_k=1)[0][0].label == preds[0][0].label


def test_multi_label_scores_are_independent(nomic):
    clf = ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES, multi_label=True)
    probs = clf.probabilities(_images())
    cos = clf.cosine(nomic.embed_images(_images()))
    want = 1 / (1 + np.exp(-(clf.logit_scale * cos + clf.logit_bias)))
    np.testing.assert_allclose(probs, want, atol=1e-6)
    assert not np.allclose(probs.sum(1), 1.0)


def test_calibration_recovers_known_temperature():
    rng = np.random.default_rng(0)
    n, k, true_scale = 4000, 8, 37.0
    cos = rng.uniform(-0.2, 0.4, (n, k))
    logits = true_scale * cos
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    scale, _ = fit_temperature(cos, y, init_scale=100.0)
    assert scale == pytest.approx(true_scale, rel=0.1)


def test_calibrate_on_images(nomic):
    images = _images(9)
    truth = ["cat"] * 3 + ["dog"] * 3 + ["car"] * 3
    clf = ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES)
    before = clf.logit_scale
    cos = clf.cosine(nomic.embed_images(images))
    nll = lambda s: -np.log(zs._softmax(s * cos)[np.arange(9), [LABELS.index(t) for t in truth]]).mean()
    scale = clf.calibrate(images, truth)
    assert scale != before and nll(scale) <= nll(before) + 1e-9
    with pytest.raises(InvalidInputError, match="not among"):
        clf.calibrate(images[:1], ["zebra"])


class _Counting:
    """Counts the texts an Embedder embeds (instrumentation around the real call)."""

    def __init__(self, emb):
        self.emb, self.calls, self.texts = emb, 0, 0
        self._orig = emb.embed_text

    def __enter__(self):
        def wrapped(texts, *args, **kwargs):
            self.calls += 1
            self.texts += len(texts)
            return self._orig(texts, *args, **kwargs)

        self.emb.embed_text = wrapped
        return self

    def __exit__(self, *exc):
        del self.emb.embed_text


def test_cache_reuses_and_embeds_only_new_labels(nomic, tmp_path):
    with _Counting(nomic) as count:
        first = ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES, cache_dir=tmp_path)
        assert (count.calls, count.texts) == (1, len(LABELS) * len(TEMPLATES))
        second = ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES, cache_dir=tmp_path)
        assert count.calls == 1
        np.testing.assert_array_equal(first.class_embeddings, second.class_embeddings)
        second.add_labels(["bird", "ship"])
        assert (count.calls, count.texts) == (2, (len(LABELS) + 2) * len(TEMPLATES))
        zs._MEMORY_CACHE.clear()  # a new process: only the disk cache is left
        third = ZeroShotClassifier(nomic, ["ship", "cat", "bird", "dog", "car"], templates=TEMPLATES,
                                   cache_dir=tmp_path)
        assert count.calls == 2
        np.testing.assert_allclose(third.class_embeddings[1], first.class_embeddings[0], atol=0)
        ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES[:2], cache_dir=tmp_path)  # other templates
        assert count.calls == 3


def test_disk_cache_only_when_asked(nomic, tmp_path, monkeypatch):
    """Memory only by default (a server's request labels never reach the disk); ``cache_dir=True`` is ``labels/`` in
    the package's cache folder; a cache that cannot be written costs a warning, never the classification."""
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "pkg"))
    ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES)
    assert not (tmp_path / "pkg").exists()
    clf = ZeroShotClassifier(nomic, ["owl"], templates=TEMPLATES, cache_dir=True)
    assert clf.cache_dir == tmp_path / "pkg" / "labels" and len(list(clf.cache_dir.glob("labels-*.npz"))) == 1
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    ZeroShotClassifier(nomic, ["newt"], templates=TEMPLATES, cache_dir=blocked / "sub")  # warns, classifies


def test_evaluate_matches_hand_computation(nomic, tmp_path):
    classes = {"cat": "cat", "dog": "dog", "automobile": "car"}
    root = labelled_folder(tmp_path / "folder", tuple(classes))
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    clf = ZeroShotClassifier(nomic, LABELS, templates=TEMPLATES)
    result = clf.evaluate(root, label_map={"automobile": "car"}, batch_size=5, show_progress=False)
    assert result.n_images == 12 and [f.item for f in result.failures] == [str(root / "cat" / "broken.jpg")]
    # by hand
    files = [f for c in sorted(classes) for f in sorted((root / c).glob("0*.jpg"))]
    truth = np.array([LABELS.index(classes[c]) for c in sorted(classes) for _ in range(4)])
    pred = np.argmax(nomic.embed_images(files) @ clf.class_embeddings.T, axis=1)
    assert result.top1 == pytest.approx((pred == truth).mean())
    assert np.isnan(result.top5)  # three labels: top-5 is not applicable, as in mmembed eval
    assert result.confusion.sum() == 12 and np.trace(result.confusion) == (pred == truth).sum()
    assert result.per_class["automobile"] == pytest.approx((pred[truth == 2] == 2).mean())


def test_evaluate_runs_on_an_image_folder(nomic, tmp_path):
    root = labelled_folder(tmp_path / "cifar-layout", per_class=3)
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    clf = ZeroShotClassifier(nomic, labels, templates="simple")
    result = clf.evaluate(root, limit_per_class=2, show_progress=False)
    assert result.n_images == 20 and result.confusion.shape == (10, 10) and 0 <= result.top1 <= result.top5 <= 1
    assert result.per_class.keys() == set(labels)


def test_validation_errors(nomic):
    for templates, match in [([], "empty"), (["no slot"], "exactly one"), (["{} {}"], "exactly one"),
                             (["a {}", "a {}"], "duplicate"), ("unknown-set", "unknown template set")]:
        with pytest.raises(InvalidInputError, match=match):
            ZeroShotClassifier(nomic, LABELS, templates=templates)
    for labels, match in [([], "empty"), (["cat", "cat"], "duplicate"), (["cat", " "], "non-empty"),
                          ("cat", "list")]:
        with pytest.raises(InvalidInputError, match=match):
            ZeroShotClassifier(nomic, labels, templates="simple")
    assert len(zs.NAMED_TEMPLATES["openai-imagenet"]) == 80


EVALUATE_PROGRESS = """
import sys
from multimodal_embed import Embedder
from multimodal_embed.zeroshot import ZeroShotClassifier
emb = Embedder.from_pretrained(text=sys.argv[1], vision=sys.argv[2])
clf = ZeroShotClassifier(emb, ["cat", "dog", "car"], templates="simple", show_progress=False)
print(clf.evaluate(sys.argv[3], label_map={"automobile": "car"}, batch_size=3).n_images)
"""


def test_evaluate_progress_moves_per_batch(fixtures_dir, tmp_path):
    """12 images in batches of 3: the bar shows 1/4, 2/4, 3/4 and 4/4 (not one step per 8 batches)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    labelled_folder(tmp_path, ("cat", "dog", "automobile"))
    env = {**os.environ, "PYTHONPATH": str(root), "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    proc = subprocess.run([sys.executable, "-c", EVALUATE_PROGRESS, str(fixtures_dir / "text-v1.5-tiny"),
                           str(fixtures_dir / "vision-v1.5-tiny"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    assert proc.stdout.strip() == "12"
    states = [s for s in proc.stderr.replace("\r", "\n").splitlines() if "/4 " in s]
    assert {f"{n}/4" for n in range(5)} <= {s.split("|")[-1].split()[0] for s in states}, proc.stderr[-2000:]
