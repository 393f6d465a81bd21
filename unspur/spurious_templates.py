"""StarFT's spurious caption templates: the built-in offline bank, and the choice of templates
for a fine-tuning run (a concept bank's ``spurious_templates`` or the built-in ones).

StarFT (METHODS.md 3) regularises with captions that describe a spurious attribute of the
image: its background, the object's texture, the photo's quality. The paper has an LLM list
them; :data:`SPURIOUS_TEMPLATES` is a hand-written stand-in (about 20-30 templates per kind),
pure data, so that the core (the datasets) and the offline concept backend
(``unspur.actors.spurious_bank``) share it. Every template holds ``{class}`` exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SPURIOUS_KINDS", "SPURIOUS_TEMPLATES", "pick_template", "run_templates"]

#: kind -> caption templates (``{class}`` = the class name)
SPURIOUS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "background": (
        "a photo of a {class} in the snow.",
        "a photo of a {class} on the beach.",
        "a photo of a {class} in the water.",
        "a photo of a {class} in a forest.",
        "a photo of a {class} in the desert.",
        "a photo of a {class} on a city street.",
        "a photo of a {class} in a grassy field.",
        "a photo of a {class} on a mountain.",
        "a photo of a {class} indoors, in a living room.",
        "a photo of a {class} in a kitchen.",
        "a photo of a {class} against a clear blue sky.",
        "a photo of a {class} under a cloudy sky.",
        "a photo of a {class} at sunset.",
        "a photo of a {class} in a parking lot.",
        "a photo of a {class} in a garden full of flowers.",
        "a photo of a {class} on a wooden table.",
        "a photo of a {class} in front of a brick wall.",
        "a photo of a {class} in a swamp.",
        "a photo of a {class} on a farm.",
        "a photo of a {class} in a crowded market.",
        "a photo of a {class} on a plain white background.",
        "a photo of a {class} in a cave.",
        "a photo of a {class} next to a lake.",
        "a photo of a {class} in a jungle.",
        "a photo of a {class} on a snowy road at night.",
    ),
    "texture": (
        "a striped {class}.",
        "a spotted {class}.",
        "a checkered {class}.",
        "a furry {class}.",
        "a metallic {class}.",
        "a wooden {class}.",
        "a plastic toy {class}.",
        "a {class} made of glass.",
        "a {class} made of stone.",
        "a knitted {class}.",
        "a paper origami {class}.",
        "a {class} covered in moss.",
        "a rusty {class}.",
        "a shiny golden {class}.",
        "a {class} with a polka dot pattern.",
        "a {class} with a camouflage pattern.",
        "a bright red {class}.",
        "a pink {class}.",
        "a {class} painted in rainbow colours.",
        "a muddy {class}.",
        "a {class} made of clay.",
        "a {class} with scales.",
        "a transparent {class}.",
        "a cracked {class}.",
        "a {class} with a zebra print.",
    ),
    "resolution": (
        "a blurry photo of a {class}.",
        "a low resolution photo of a {class}.",
        "a pixelated photo of a {class}.",
        "a noisy photo of a {class}.",
        "a grainy photo of a {class}.",
        "a jpeg-compressed photo of a {class}.",
        "an out-of-focus photo of a {class}.",
        "a motion-blurred photo of a {class}.",
        "a crisp 4k photo of a {class}.",
        "a sharp, detailed photo of a {class}.",
        "a dark, underexposed photo of a {class}.",
        "an overexposed photo of a {class}.",
        "a cropped photo of a {class}.",
        "a tiny thumbnail of a {class}.",
        "a photo of a {class} taken through a dirty window.",
        "a scanned print of a {class}.",
        "a photo of a {class} from a security camera.",
        "a photo of a {class} with lens flare.",
        "a photo of a {class} with chromatic aberration.",
        "a heavily sharpened photo of a {class}.",
        "a distorted fisheye photo of a {class}.",
    ),
}

#: the kinds of the built-in bank, in order
SPURIOUS_KINDS = tuple(SPURIOUS_TEMPLATES)


def run_templates(bank: str | Path | None, kinds: Sequence[str]) -> list[str]:
    """The spurious caption templates of ``kinds``: from the concept bank at ``bank`` (its kept
    ``spurious_templates``; a ``concept_bank.json`` or its folder), or the built-in
    :data:`SPURIOUS_TEMPLATES` when ``bank`` is None. Raises ValueError when none are left."""
    if bank is None:
        unknown = [k for k in kinds if k not in SPURIOUS_TEMPLATES]
        if unknown:
            raise ValueError(
                f"the built-in spurious bank has no kinds {unknown}; it has {list(SPURIOUS_KINDS)}"
            )
        templates = [t for k in kinds for t in SPURIOUS_TEMPLATES[k]]
    else:
        from unspur.concept_bank import load_bank

        templates = load_bank(bank).templates(kinds)
    if not templates:
        where = "the built-in bank" if bank is None else f"the concept bank {bank}"
        raise ValueError(f"{where} holds no spurious caption templates of kinds {list(kinds)}")
    return templates


def pick_template(templates: Sequence[str], key: str) -> str:
    """The template of sample ``key`` (an image id): chosen by a hash of the key (sha256), so a
    sample gets the same template every epoch, run and process (Python's ``hash`` is salted)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return templates[int.from_bytes(digest[:8], "big") % len(templates)]
