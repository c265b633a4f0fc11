"""brainmri: train, evaluate and ship a 4-class brain MRI tumor classifier.

The commands are listed by `brainmri --help`; the library entry points live in the subpackages
(data, model, infer, train, evaluate).
"""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
"""Fixed class order, written beside every model."""

__all__ = ["CLASS_NAMES", "Classifier", "__version__"]


def __getattr__(name: str):
    """`from brainmri import Classifier` without importing torch on `import brainmri`."""
    if name == "Classifier":
        from brainmri.infer.core import Classifier

        return Classifier
    raise AttributeError(f"module 'brainmri' has no attribute {name!r}")
