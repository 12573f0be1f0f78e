"""aigc: train, generate, evaluate and publish text, images and music on your own machine."""

__version__ = "0.1.0"
