"""Personal recommendations: items and prompts ranked per person from their ratings."""
