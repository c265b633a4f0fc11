"""The one exception type for errors a user can cause (bad path, bad image, bad recipe key).

The CLI catches it, prints one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class BrainMRIError(Exception):
    """An error the user can fix: the message says what is wrong and what to do."""
