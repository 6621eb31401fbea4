"""Dual-tower backends beside the native nomic models: open_clip and Hugging Face CLIP / SigLIP / SigLIP2.

Each backend is imported only when a model of its family is loaded.
"""
