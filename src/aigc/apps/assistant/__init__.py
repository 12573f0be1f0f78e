"""Customer-service assistant: answers from a folder of documents, with sources, voice, and a
human handoff when it does not know."""
