"""genray: train, search and serve classic generative and scientific models on Ray."""

__version__ = "0.1.0"
