"""Records and argument checks of the prediction API (infer/records.py), without a model."""

from __future__ import annotations

import numpy as np
import pytest

from brainmri import CLASS_NAMES
from brainmri.data.transforms import TTA_VIEWS
from brainmri.errors import BrainMRIError
from brainmri.infer.records import TTA_MAX, check_tta, scored_record, uncertain_reason

PROBS = [0.62, 0.2, 0.1, 0.08]


def test_tta_range_is_the_number_of_views():
    assert TTA_MAX == len(TTA_VIEWS)


@pytest.mark.parametrize("tta", [1, 2, 5, np.int64(3)])
def test_check_tta_takes_whole_numbers_in_range(tta):
    assert check_tta(tta) == int(tta) and type(check_tta(tta)) is int


@pytest.mark.parametrize("tta", [0, -1, 6, 7, "3", 2.0, True, False, None])
def test_check_tta_refuses_the_rest_naming_the_range(tta):
    with pytest.raises(BrainMRIError, match=r"tta must be .* from 1 to 5 .*got"):
        check_tta(tta)


def test_uncertain_record_keeps_what_the_model_said():
    rec = scored_record("a.png", PROBS, list(CLASS_NAMES), 0.5, 1.0, False, min_confidence=0.9)
    assert (rec["status"], rec["label"], rec["probability"]) == ("rejected", None, None)
    assert rec["probabilities"] == dict(zip(CLASS_NAMES, PROBS, strict=True))
    assert rec["reason"] == "uncertain (top probability 0.620 < 0.9, for glioma)"
    assert rec["ood_score"] == 0.5


def test_confident_and_ood_records_are_unchanged():
    ok = scored_record("a.png", PROBS, list(CLASS_NAMES), 0.5, 1.0, True, min_confidence=0.5)
    assert (ok["status"], ok["reason"], ok["label"], ok["probability"]) == (
        "ok", None, "glioma", 0.62,
    )  # fmt: skip
    assert ok["cropped"] and ok["probabilities"]["pituitary"] == 0.08
    ood = scored_record("a.png", PROBS, list(CLASS_NAMES), 2.0, 1.0, False, min_confidence=0.9)
    assert ood["status"] == "rejected" and not ood["reason"].startswith("uncertain")
    assert ood["label"] is None and ood["probabilities"] == {} and ood["ood_score"] == 2.0


def test_uncertain_reason_shows_a_probability_under_the_threshold():
    assert uncertain_reason(0.95, 0.9) is None and uncertain_reason(0.5, None) is None
    assert uncertain_reason(0.99876, 0.999) == "uncertain (top probability 0.9988 < 0.999)"
