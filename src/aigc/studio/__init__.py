"""The studio: a web app and HTTP API over a persistent job queue (see :mod:`aigc.studio.app`).

Nothing heavy is imported here; ``create_app`` loads models in the app's lifespan.
"""
