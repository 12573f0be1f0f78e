"""Sentiment: classifiers (English, Chinese) with their baselines, and a monitor that follows a
stream of texts and raises alerts when an entity's mood or volume turns."""
