"""Structure names: the TG-263 standard names, ROI types, display colours and the DICOM name rules.

The built-in table (``tg263.json`` beside this module) is a subset of AAPM TG-263 (2018): standard names of
organs at risk and targets, each with the ``RTROIInterpretedType`` autoseg writes for it, common clinic
spellings, and conventional colours. :func:`match_tg263` maps a clinic name ("Lt Lung", "PAROTID_L",
"parotid left") to its standard name; :func:`roi_interpreted_type` gives a name's ROI type;
:func:`structure_colours` gives distinct colours for a structure set; :func:`check_roi_name` enforces DICOM's
ROIName/SegmentLabel rules (LO: at most 64 characters, no backslash, no control characters).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from autoseg.errors import StructureNameError

RGB = tuple[int, int, int]
MatchMethod = Literal["standard", "normalised", "synonym", "word order", "number removed", "target", "none"]

MAX_NAME_LENGTH = 64  # DICOM LO
VENDOR_NAME_LENGTH = 16  # TG-263: the shortest limit among treatment planning systems
TARGET_PREFIXES = ("GTV", "CTV", "ITV", "PTV")
ROI_TYPES = (  # DICOM PS3.3 C.8.8.8: the defined terms of RTROIInterpretedType
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "BOLUS", "AVOIDANCE", "ORGAN",
    "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY",
    "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)  # fmt: skip
LEFT_WORDS = frozenset({"l", "lt", "left", "lft", "links", "gauche"})
"""Words (lower case) that name the patient's left side; shared with the planner's laterality rule."""
RIGHT_WORDS = frozenset({"r", "rt", "right", "rgt", "rechts", "droit"})
"""Words (lower case) that name the patient's right side."""
_BOTH = frozenset({"bilat", "bilateral", "both"})
_CONTROL_WORDS = frozenset(
    {"ring", "opt", "optim", "optimization", "optimisation", "help", "helper", "dummy"}
)
_AVOIDANCE_WORDS = frozenset({"avoid", "avoidance", "block", "blk", "prv"})


@dataclass(frozen=True)
class Match:
    """How a clinic name matched the TG-263 table.

    Attributes:
        name: the clinic name as given.
        standard: the TG-263 standard name, or ``None`` when nothing matched.
        method: ``"standard"`` (already the standard name), ``"normalised"`` (the same after normalising case,
            separators and laterality), ``"synonym"`` (a listed clinic spelling), ``"word order"``, ``"number
            removed"`` (e.g. "Heart1"), ``"target"`` (a target name in TG-263 form, GTV/CTV/ITV/PTV...), or
            ``"none"``.
        suggestions: for an unmatched name, the nearest standard names (best first, at most 3).
    """

    name: str
    standard: str | None
    method: MatchMethod
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Table:
    types: dict[str, str]  # standard name -> RTROIInterpretedType, in table order
    keys: dict[str, str]  # normalised key -> standard name (standard names' keys first, then synonyms')
    standard_keys: frozenset[str]
    sorted_keys: dict[str, str]  # word-order-free key -> standard name
    colours: dict[str, RGB]
    spellings: tuple[tuple[str, str], ...]  # (normalised words of a name or synonym, standard name)


# ------------------------------------------------------------------------------------------------ checks


def check_roi_name(name: str) -> list[str]:
    """Check a structure name against DICOM's ROIName / SegmentLabel rules (VR LO).

    Returns:
        Warnings (empty when the name is fine): longer than 16 characters (TG-263's vendor limit), or leading
        or trailing spaces (DICOM drops them).

    Raises:
        StructureNameError: empty, over 64 characters, a backslash (DICOM's value separator) or a control
            character (tab, newline, ...), naming the name.
    """
    shown = repr(name)
    if not name.strip():
        raise StructureNameError(f"structure name {shown} is empty; give every structure a name")
    if len(name) > MAX_NAME_LENGTH:
        raise StructureNameError(
            f"structure name {shown} has {len(name)} characters; DICOM allows at most {MAX_NAME_LENGTH}: "
            "shorten it (TG-263 names have at most 16)"
        )
    if "\\" in name:
        raise StructureNameError(
            f"structure name {shown} contains a backslash, which DICOM reads as two values; use '_' or '/'"
        )
    controls = sorted({repr(c) for c in name if unicodedata.category(c) == "Cc"})
    if controls:
        raise StructureNameError(
            f"structure name {shown} contains control characters {', '.join(controls)}; use spaces"
        )
    warnings = []
    if len(name) > VENDOR_NAME_LENGTH:
        warnings.append(
            f"structure name {shown} has {len(name)} characters; some planning systems keep only "
            f"{VENDOR_NAME_LENGTH} (TG-263)"
        )
    if name != name.strip():
        warnings.append(f"structure name {shown} has leading or trailing spaces, which DICOM drops")
    return warnings


# ------------------------------------------------------------------------------------------------ types


def roi_interpreted_type(name: str) -> str:
    """The DICOM ``RTROIInterpretedType`` of a structure name.

    The TG-263 table's type where the name matches it; else TG-263's naming conventions: planning helpers
    (a leading ``z``, or a word such as ring/opt) are ``CONTROL``; PRVs, avoidance and block structures
    ``AVOIDANCE``; names beginning GTV/CTV/PTV that type, ITV ``CTV`` (DICOM's defined terms have no ITV);
    couch/table ``SUPPORT``; body/external/outline ``EXTERNAL``; anything else ``ORGAN``.
    """
    match = match_tg263(name)
    if match.standard is not None and match.method != "target":
        return _table().types[match.standard]
    words = set(_words(name))
    if _is_helper(name) or words & _CONTROL_WORDS:
        return "CONTROL"
    if words & _AVOIDANCE_WORDS or any(w.startswith("prv") for w in words):
        return "AVOIDANCE"
    compact = re.sub(r"[^A-Z]", "", name.upper())
    for prefix in TARGET_PREFIXES:
        if compact.startswith(prefix):
            return "CTV" if prefix == "ITV" else prefix
    if words & {"couch", "table"}:
        return "SUPPORT"
    if words & {"body", "external", "outline"}:
        return "EXTERNAL"
    return "ORGAN"


def _is_helper(name: str) -> bool:
    """TG-263: structures not meant for evaluation begin with ``z`` (``zPTV_Opt``, ``z_Ring``, ``Z_help``)."""
    stripped = name.strip()
    return len(stripped) > 1 and stripped[0] in "zZ" and (stripped[1] in "_-. " or stripped[1].isupper())


# ------------------------------------------------------------------------------------------------ matching


def match_tg263(name: str) -> Match:
    """Map a clinic structure name to its TG-263 standard name.

    Normalisation ignores case, separators (space ``_ - . /``), camel case (``SpinalCord`` = ``spinal cord``)
    and the position and spelling of laterality (L/Lt/Left, R/Rt/Right: "Lt Lung", "LUNG_LT", "left lung",
    "L_Lung" are all ``Lung_L``). Tried in order: the standard name, its normalised form, a listed synonym,
    the words in any order, a target name (GTV/CTV/ITV/PTV...) kept in TG-263 form ("PTV 70" -> "PTV_70"),
    trailing numbers removed ("Heart1"). An unmatched name gets the nearest standard names as suggestions.
    """
    table = _table()
    if name in table.types:
        return Match(name, name, "standard")
    key = _key(_words(name))
    if key in table.keys:
        return Match(name, table.keys[key], "normalised" if key in table.standard_keys else "synonym")
    ordered = _key(_words(name), ordered=False)
    if ordered in table.sorted_keys:
        return Match(name, table.sorted_keys[ordered], "word order")
    target = _target_form(name)
    if target is not None:
        return Match(name, target, "target")
    numberless = [w for w in (re.sub(r"\d+$", "", w) for w in _words(name)) if w]
    if numberless != _words(name) and _key(numberless) in table.keys:
        return Match(name, table.keys[_key(numberless)], "number removed")
    return Match(name, None, "none", _suggestions(name))


def standard_names() -> list[str]:
    """Every standard name of the built-in table, in table order (region by region)."""
    return list(_table().types)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", unicodedata.normalize("NFKC", name))
    return [w for w in re.split(r"[^0-9a-z]+", spaced.lower()) if w]


def _key(words: Sequence[str], *, ordered: bool = True) -> str:
    """``lung|L`` for "Lt Lung": the words without laterality, then the side (L, R, or empty)."""
    left = any(w in LEFT_WORDS for w in words)
    right = any(w in RIGHT_WORDS for w in words)
    side = "" if left == right else ("L" if left else "R")
    rest = [w for w in words if w not in _BOTH and not (side and w in (LEFT_WORDS | RIGHT_WORDS))]
    body = "".join(rest) if ordered else " ".join(sorted(rest))
    return f"{body}|{side}"


def _target_form(name: str) -> str | None:
    """A target name in TG-263 form: the type prefix in capitals, the rest joined by ``_`` ("ptv 70" ->
    "PTV_70", "CTVp high" -> "CTVp_high"); ``None`` when the name does not begin with a target type."""
    parts = [p for p in re.split(r"[\s_\-./]+", name.strip()) if p]
    if not parts or not parts[0].upper().startswith(TARGET_PREFIXES):
        return None
    first = parts[0][:3].upper() + parts[0][3:]
    return "_".join([first, *parts[1:]])


def _suggestions(name: str) -> tuple[str, ...]:
    """The nearest standard names: both sides of a paired organ named without one, then by similarity of the
    normalised spellings (difflib), where sharing a word of 4 letters or more counts as similar."""
    table = _table()
    body, _, side = _key(_words(name)).partition("|")
    found: list[str] = []
    if not side:
        found += [table.keys[f"{body}|{s}"] for s in ("L", "R") if f"{body}|{s}" in table.keys]
    query = " ".join(_words(name))
    long_words = {w for w in _words(name) if len(w) >= 4}
    scored: list[tuple[float, str]] = []
    for spelling, standard in table.spellings:
        score = difflib.SequenceMatcher(None, query, spelling).ratio()
        if long_words & set(spelling.split()):
            score = max(score, 0.75)
        if score >= 0.7:
            scored.append((score, standard))
    found += [standard for _, standard in sorted(scored, key=lambda item: -item[0])]
    return tuple(dict.fromkeys(found))[:3]


@functools.cache
def _table() -> _Table:
    data = json.loads(resources.files("autoseg.dicom").joinpath("tg263.json").read_text(encoding="utf-8"))
    return _build_table(data)


def _build_table(data: dict[str, Any]) -> _Table:
    types: dict[str, str] = {}
    synonyms: list[tuple[str, str]] = []  # (spelling, standard)
    for group in data["groups"]:
        sides = ("L", "R") if group["paired"] else ("",)
        for base, spellings in group["names"].items():
            for side in sides:
                standard = f"{base}_{side}" if side else base
                types[standard] = group["type"]
                synonyms += [(f"{s} {side}".strip(), standard) for s in spellings]
    keys = {_key(_words(s)): s for s in types}
    standard_keys = frozenset(keys)
    for spelling, standard in synonyms:
        keys.setdefault(_key(_words(spelling)), standard)
    sorted_keys: dict[str, str] = {}
    for spelling in [*types, *(s for s, _ in synonyms)]:
        sorted_keys.setdefault(_key(_words(spelling), ordered=False), keys[_key(_words(spelling))])
    colours = {name: (int(c[0]), int(c[1]), int(c[2])) for name, c in data["colours"].items()}
    spellings = tuple((" ".join(_words(s)), std) for s, std in [*((s, s) for s in types), *synonyms])
    return _Table(types, keys, standard_keys, sorted_keys, colours, spellings)


# ------------------------------------------------------------------------------------------------ colours


def distinct_colours(count: int) -> list[RGB]:
    """``count`` distinct sRGB colours (0-255), the same for the same count, each a prefix of the next.

    Hues step by the golden angle in OKLCh (a perceptual space), so neighbours in the list differ most;
    lightness cycles through five levels and chroma is lowered until the colour fits sRGB. A colour that
    rounds to one already given is nudged lighter, so no colour repeats for any count.
    """
    colours: list[RGB] = []
    used: set[RGB] = set()
    for index in range(count):
        hue = (index * 137.50776405) % 360.0
        base = (0.72, 0.58, 0.84, 0.65, 0.78)[index % 5]
        nudges = (base + 0.002 * step for step in range(200))  # 0.58..1.24: lighter until it is new
        colour = next(c for c in (_oklch_to_rgb(min(n, 0.99), hue) for n in nudges) if c not in used)
        used.add(colour)
        colours.append(colour)
    return colours


def structure_colour(name: str, index: int) -> RGB:
    """The conventional colour of a standard structure name where one is customary (e.g. SpinalCord yellow),
    else the ``index``-th colour of :func:`distinct_colours`."""
    match = match_tg263(name)
    customary = _table().colours.get(match.standard or "")
    return customary if customary is not None else distinct_colours(index + 1)[index]


def structure_colours(names: Sequence[str]) -> list[RGB]:
    """Distinct colours for a structure set, in order: the conventional colour where there is one and no
    earlier structure has it, else the next palette colour that no structure in the set uses."""
    conventional = [_table().colours.get(match_tg263(n).standard or "") for n in names]
    taken: set[RGB] = set()
    chosen: list[RGB | None] = []
    for colour in conventional:
        chosen.append(colour if colour is not None and colour not in taken else None)
        taken.update({colour} if colour is not None else set())
    palette = iter(c for c in distinct_colours(2 * len(names) + len(taken)) if c not in taken)
    return [colour if colour is not None else next(palette) for colour in chosen]


def _oklch_to_rgb(lightness: float, hue_degrees: float) -> RGB:
    chroma = 0.16
    while True:
        a = chroma * math.cos(math.radians(hue_degrees))
        b = chroma * math.sin(math.radians(hue_degrees))
        linear = _oklab_to_linear_srgb(lightness, a, b)
        if all(-1e-9 <= c <= 1 + 1e-9 for c in linear) or chroma <= 0:
            return tuple(round(255 * _gamma(min(max(c, 0.0), 1.0))) for c in linear)  # type: ignore[return-value]
        chroma -= 0.005


def _oklab_to_linear_srgb(lightness: float, a: float, b: float) -> tuple[float, float, float]:
    l_ = (lightness + 0.3963377774 * a + 0.2158037573 * b) ** 3
    m_ = (lightness - 0.1055613458 * a - 0.0638541728 * b) ** 3
    s_ = (lightness - 0.0894841775 * a - 1.2914855480 * b) ** 3
    return (
        4.0767416621 * l_ - 3.3077115913 * m_ + 0.2309699292 * s_,
        -1.2684380046 * l_ + 2.6097574011 * m_ - 0.3413193965 * s_,
        -0.0041960863 * l_ - 0.7034186147 * m_ + 1.7076147010 * s_,
    )


def _gamma(linear: float) -> float:
    return 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
