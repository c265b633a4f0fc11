"""brainmri: train, evaluate, explain and ship a 4-class brain MRI tumor classifier."""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
"""Fixed class order, written beside every model."""
