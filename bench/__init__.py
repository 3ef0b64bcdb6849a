"""The single-node fan-out benchmark (``make bench``); see ``bench/__main__.py``."""
