"""Adapters for the frameworks and vector stores search is built with, one module each, imported on demand:

- :mod:`.langchain` -- ``MultimodalEmbeddings`` (``pip install 'multimodal-embed[langchain]'``)
- :mod:`.llama_index` -- ``MultimodalEmbedding`` (``[llama-index]``)
- :mod:`.chroma` -- ``MultimodalEmbeddingFunction`` (``[chroma]``)
- :mod:`.lancedb` -- the embedding-registry function ``"multimodal-embed"`` (``[lancedb]``)

Each is built as ``X(model="NAME_OR_FOLDER", **embedder_options)``, ``X(embedder=emb)`` or
``X(base_url="http://host:port/v1")`` (an ``mmembed serve`` service); :mod:`.common` is what they share.
"""
