"""whatsthat: from a few words to a deployed image classifier (fastai lesson 2, as software)."""

__version__ = "0.1.0"
