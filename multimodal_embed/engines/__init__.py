"""Alternative inference engines for the towers (loaded lazily; see :mod:`multimodal_embed.precision`)."""
