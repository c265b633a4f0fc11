"""The one exception type for errors a user can cause (bad path, bad image, bad recipe key).

The CLI catches it, prints one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class BrainMRIError(Exception):
    """An error the user can fix: the message says what is wrong and what to do."""


class RejectedInput(BrainMRIError):
    """An input the input guard refuses (not a brain MRI slice the model can judge).

    The message is the reason, e.g. "tiny: 1x1 px" or
    "unlike the brain MRI the model learned from (OOD score 1.31 > 1.08)";
    `code` is its short machine-readable kind ("tiny", "ood", "dicom-modality", ...).
    """

    def __init__(self, message: str, code: str = "rejected"):
        super().__init__(message)
        self.code = code
