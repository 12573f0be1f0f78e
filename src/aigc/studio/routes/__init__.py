"""One router per resource: models, jobs, items (+ ratings, search, files), OpenAI-compatible
``/v1``, and system (``/health``, ``/metrics``)."""
