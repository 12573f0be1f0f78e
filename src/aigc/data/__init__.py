"""Named datasets and their cleaning. Image data: :mod:`aigc.data.images`."""
