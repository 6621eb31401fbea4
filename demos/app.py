"""The multimodal_embed demo as a Hugging Face Space / plain script: ``python demos/app.py``.

Environment: MMEMBED_MODEL (default: nomic-embed-v1.5, falling back to the offline model), MMEMBED_INDEX or
MMEMBED_IMAGES (default: the sample gallery shipped with the package), MMEMBED_HOST (default 127.0.0.1),
MMEMBED_PORT (default 7860).
"""

import os

from multimodal_embed.demo import launch

if __name__ == "__main__":
    launch(model=os.environ.get("MMEMBED_MODEL"), index=os.environ.get("MMEMBED_INDEX"),
           images=os.environ.get("MMEMBED_IMAGES"), host=os.environ.get("MMEMBED_HOST", "127.0.0.1"),
           port=int(os.environ.get("MMEMBED_PORT", "7860")))
