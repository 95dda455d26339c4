"""Structure names: the TG-263 matcher, ROI types, colours and the DICOM name rules (no real data)."""

from __future__ import annotations

import pytest

from autoseg.dicom.names import (
    check_roi_name,
    distinct_colours,
    match_tg263,
    roi_interpreted_type,
    standard_names,
    structure_colour,
    structure_colours,
)
from autoseg.errors import StructureNameError, UsageError


@pytest.mark.parametrize(
    ("clinic", "standard"),
    [
        ("Lt Lung", "Lung_L"),
        ("LUNG_LT", "Lung_L"),
        ("left lung", "Lung_L"),
        ("Lung Left", "Lung_L"),
        ("L_Lung", "Lung_L"),
        ("Rt Lung", "Lung_R"),
        ("PAROTID_L", "Parotid_L"),
        ("parotid left", "Parotid_L"),
        ("Lt Parotid", "Parotid_L"),
        ("Parotid Gland Rt", "Parotid_R"),
        ("Brain Stem", "Brainstem"),
        ("spinal_cord", "SpinalCord"),
        ("Cord", "SpinalCord"),
        ("Oesophagus", "Esophagus"),
        ("BODY", "External"),
        ("Bowel_Bag", "Spc_Bowel"),
        ("Submand_Glnd_L", "Glnd_Submand_L"),
        ("Hypothalamus", "Hypothalmus"),  # TG-263's spelling
        ("Glottic Larynx", "Glottis"),
        ("Testes", "Testis"),
        ("Rt Femoral Head", "Femur_Head_R"),
        ("Optic Nerve Right", "OpticNrv_R"),
        ("Heart1", "Heart"),
        ("PTV 70", "PTV_70"),
        ("ptv", "PTV"),
    ],
)
def test_clinic_names_map_to_standard_names(clinic: str, standard: str) -> None:
    assert match_tg263(clinic).standard == standard


def test_how_a_name_matched_and_suggestions_for_an_unmatched_one() -> None:
    assert match_tg263("Lung_L").method == "standard"
    assert match_tg263("lung l").method == "normalised"
    assert match_tg263("Cord").method == "synonym"
    assert match_tg263("Heart2").method == "number removed"
    assert match_tg263("CTV_5400").method == "target"
    unmatched = match_tg263("Parotid")  # a paired organ named without its side
    assert unmatched.standard is None and unmatched.method == "none"
    assert unmatched.suggestions[:2] == ("Parotid_L", "Parotid_R")
    assert "SpinalCord" in match_tg263("SpinalCrd").suggestions
    assert all(s.startswith("LN_") for s in match_tg263("Nodes").suggestions)  # a shared word counts
    assert match_tg263("Areola").suggestions == ()  # nothing near: no noise


def test_the_table_is_consistent() -> None:
    names = standard_names()
    assert len(names) == len(set(names)) > 150
    assert all(match_tg263(name).method == "standard" for name in names)
    assert {"Lung_L", "Lung_R", "Parotid_L", "Brainstem", "SpinalCord", "Heart", "External"} <= set(names)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("BODY", "EXTERNAL"),
        ("External", "EXTERNAL"),
        ("Heart", "ORGAN"),
        ("Lt Lung", "ORGAN"),
        ("GTVp", "GTV"),
        ("GTV_primary", "GTV"),
        ("CTV 5400", "CTV"),
        ("PTV_High", "PTV"),
        ("ITV", "CTV"),
        ("zPTV_opt", "CONTROL"),
        ("PTV ring", "CONTROL"),
        ("SpinalCord_PRV05", "AVOIDANCE"),
        ("Tumor Bed Block", "AVOIDANCE"),
        ("Couch", "SUPPORT"),
        ("Bolus", "BOLUS"),
        ("Something else", "ORGAN"),
        ("Zygoma", "ORGAN"),
    ],
)
def test_roi_interpreted_type(name: str, kind: str) -> None:
    assert roi_interpreted_type(name) == kind


def test_name_checks_refuse_what_dicom_cannot_hold() -> None:
    assert check_roi_name("Lung_L") == []
    for bad in ("", "   ", "x" * 65, "Lung\\L", "Lung\tL", "Lung\nL", "Lung\x00"):
        with pytest.raises(StructureNameError) as raised:
            check_roi_name(bad)
        assert repr(bad) in raised.value.message
        assert isinstance(raised.value, UsageError)
    assert check_roi_name("x" * 64)  # allowed, with a warning above 16 characters
    assert "16" in check_roi_name("Musc_Constrict_Middle")[0]
    assert check_roi_name(" Heart")  # leading space: a warning


def test_colours_are_distinct_deterministic_and_stable() -> None:
    colours = distinct_colours(1000)
    assert len(set(colours)) == 1000
    assert all(0 <= c <= 255 for colour in colours for c in colour)
    assert distinct_colours(20) == colours[:20] == distinct_colours(20)
    assert distinct_colours(0) == []


def test_structure_colours() -> None:
    assert structure_colour("Spinal Cord", 7) == (255, 255, 0)  # customary: yellow
    assert structure_colour("Areola", 3) == distinct_colours(4)[3]
    names = ["Lung_L", "Lt Lung", "Heart", *(f"structure {i}" for i in range(300))]
    colours = structure_colours(names)
    assert len(colours) == len(names) == len(set(colours))
    assert colours[0] == structure_colour("Lung_L", 0) and colours[2] == structure_colour("Heart", 2)
