"""The native BERT encoder and tokenizer (multimodal_embed.models.bert) against transformers on all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import shutil

import torch

from multimodal_embed.models.bert import BertModel, FastBertTokenizer, load_fast_tokenizer, load_native_bert
from multimodal_embed.text import SentenceTransformerTextEncoder

TEXTS = ["a frog", "A Café in Zürich — naïve façade!", "word " * 300, "汉字 and an emoji 🐸", "  tabs\tand\nlines  ",
         "[CLS] looks special", "UPPER lower MiXeD 12,345.67"]


def test_native_bert_equals_transformers(minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    native = SentenceTransformerTextEncoder.from_folder(minilm_dir)
    assert isinstance(native.model, BertModel) and isinstance(native.tokenizer, FastBertTokenizer)
    reference = AutoTokenizer.from_pretrained(str(minilm_dir))
    want = reference(TEXTS, add_special_tokens=True, truncation=False, return_attention_mask=False,
                     return_token_type_ids=False, verbose=False)["input_ids"]
    assert native.tokenizer(TEXTS)["input_ids"] == [list(ids) for ids in want]
    ours = native.encode(TEXTS, batch_size=4)  # packed batches (transformers below runs them padded)
    native.model = AutoModel.from_pretrained(str(minilm_dir), attn_implementation="sdpa").eval()
    native.tokenizer = reference
    theirs = native.encode(TEXTS, batch_size=4)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)


def test_other_folders_are_left_to_transformers(minilm_dir, tmp_path):
    raw = json.loads((minilm_dir / "config.json").read_text())
    assert load_native_bert(minilm_dir, {**raw, "position_embedding_type": "relative_key"}) is None
    assert load_native_bert(minilm_dir, {**raw, "hidden_act": "relu"}) is None
    assert load_native_bert(minilm_dir, {**raw, "model_type": "roberta"}) is None
    folder = tmp_path / "tok"
    shutil.copytree(minilm_dir, folder)
    assert load_fast_tokenizer(folder) is not None
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    assert load_fast_tokenizer(folder) is None  # transformers would rebuild the normaliser: its reading wins
    (folder / "tokenizer.json").unlink()
    assert load_fast_tokenizer(folder) is None


def test_text_loading_does_not_import_transformers(minilm_dir):
    import subprocess
    import sys

    code = ("import sys; from multimodal_embed.text import SentenceTransformerTextEncoder as E; "
            f"e = E.from_folder({str(minilm_dir)!r}); e.encode(['a frog']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout
