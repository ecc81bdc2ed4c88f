"""mmclip-dist: distributed MM-CLIP pretraining for mammography."""

__version__ = "0.1.0"
