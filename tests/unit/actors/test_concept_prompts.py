"""Prompts (snapshot), answer parsing and candidate merging of actors/concepts.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unspur.actors.concepts import (
    ANSWER_SCHEMA,
    CONCEPT_PROMPTS,
    PLACEHOLDER,
    PROMPT_VERSION,
    SPURIOUS_PROMPT_VERSION,
    build_messages,
    clean_concept,
    collect_candidates,
    normalize_class_name,
    parse_answer,
    prompt_version,
)

SNAPSHOT = Path(__file__).parent / "snapshots" / "concept_prompts.json"


def _current() -> dict:
    messages = {f"concept/{kind}/bird": build_messages("concept", kind, "bird") for kind in CONCEPT_PROMPTS}
    for kind in ("background", "texture", "resolution", "camera_angle"):
        messages[f"spurious/{kind}"] = build_messages("spurious", kind)
    return {"concept": PROMPT_VERSION, "spurious": SPURIOUS_PROMPT_VERSION, "messages": messages}


def test_prompts_match_snapshot_of_their_version():
    current = _current()
    if os.environ.get("UNSPUR_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    snap = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert (snap["concept"], snap["spurious"]) == (PROMPT_VERSION, SPURIOUS_PROMPT_VERSION), (
        "prompt versions changed: regenerate the snapshot with UNSPUR_UPDATE_SNAPSHOTS=1"
    )
    for key, msgs in current["messages"].items():
        assert msgs == snap["messages"][key], (
            f"prompt {key} changed without a version bump: bump PROMPT_VERSION / SPURIOUS_PROMPT_VERSION "
            "and regenerate the snapshot (UNSPUR_UPDATE_SNAPSHOTS=1)"
        )


def test_messages_are_two_shot_chat_ending_with_the_question():
    msgs = build_messages("concept", "important", "bicycle")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == 'List the most important features for recognizing something as a "bicycle":'
    assert json.loads(msgs[2]["content"])[0] == "bright orange color"  # the goldfish shot, as JSON
    spur = build_messages("spurious", "background")
    assert '"background"' in spur[-1]["content"] and PLACEHOLDER in spur[-1]["content"]
    assert all(PLACEHOLDER in t for m in spur if m["role"] == "assistant" for t in json.loads(m["content"]))
    assert ANSWER_SCHEMA["type"] == "array" and ANSWER_SCHEMA["items"]["type"] == "string"


@pytest.mark.parametrize(
    ("family", "kind", "name", "match"),
    [
        ("concept", "colour", "bird", "unknown concept kind"),
        ("concept", "important", "", "needs a class name"),
        ("nonsense", "important", "bird", "unknown prompt family"),
    ],
)
def test_bad_prompt_requests_raise_clear_errors(family, kind, name, match):
    with pytest.raises(ValueError, match=match):
        build_messages(family, kind, name)
    assert prompt_version("concept") == PROMPT_VERSION


@pytest.mark.parametrize(
    ("text", "items", "fmt"),
    [
        ('["beak", "wing", "feather"]', ["beak", "wing", "feather"], "json"),
        ('```json\n["beak", "long tail"]\n```', ["beak", "long tail"], "json"),
        ('Sure! Here it is: ["beak", "wing"] Hope that helps.', ["beak", "wing"], "json"),
        ('{"concepts": ["beak"]}', ["beak"], "json"),
        ('[{"concept": "beak", "score": 0.5}, "wing", "  "]', ["beak", "wing"], "json"),
        (
            "- beak\n* wing\n1. feather\n2) long tail\n\u2022 crest\nnot a bullet",
            ["beak", "wing", "feather", "long tail", "crest"],
            "bullets",
        ),
    ],
)
def test_parse_good_and_bulleted_answers(text, items, fmt):
    parsed = parse_answer(text)
    assert parsed.status == "ok" and parsed.fmt == fmt
    assert [t for t, _ in parsed.items] == items
    if "score" in text:
        assert parsed.items[0] == ("beak", 0.5)


@pytest.mark.parametrize(
    ("text", "status", "error"),
    [
        ("", "error", "returned no text"),
        (None, "error", "returned no text"),
        ("   \n ", "error", "returned no text"),
        ("[]", "empty", ""),
        ("I think birds have beaks and wings.", "error", "no bullet lines"),
        ('["beak", "wi', "error", "invalid JSON"),
        ("[1, 2]", "error", "item 0 is int"),
        ('{"a": 1}', "error", "not a list"),
        ('[{"concept": "beak", "score": "high"}]', "error", "non-numeric score"),
    ],
)
def test_parse_malformed_answers_become_errors(text, status, error):
    parsed = parse_answer(text)
    assert parsed.status == status and parsed.items == []
    assert error in parsed.error


def test_normalisation_of_names_and_concepts():
    assert normalize_class_name("  bicycle_wheel ") == "bicycle wheel"
    assert normalize_class_name("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert clean_concept(' "Bright  Orange color." ') == "bright orange color"
    assert clean_concept("- bicycle_wheel;") == "bicycle wheel"


def _gen(cls, kind, status, items, source="s"):
    return {
        "family": "concept",
        "class_name": cls,
        "kind": kind,
        "status": status,
        "items": [(t, 1.0) for t in items],
        "source": source,
    }


def test_collect_candidates_merges_samples_and_scores_by_agreement():
    rows = [
        _gen("bird", "important", "ok", ["Beak", "wing"]),
        _gen("bird", "important", "ok", ["beak", "feather", ""]),
        _gen("bird", "superclass", "ok", ["animal"]),
        _gen("bird", "superclass", "error", []),
        _gen("tree", "important", "ok", ["beak"]),
    ]
    cands = {(c["class_name"], c["kind"], c["text"]): c for c in collect_candidates(rows)}
    assert set(cands) == {
        ("bird", "important", "beak"),
        ("bird", "important", "wing"),
        ("bird", "important", "feather"),
        ("bird", "superclass", "animal"),
        ("tree", "important", "beak"),
    }
    assert cands[("bird", "important", "beak")]["score"] == 1.0  # 2 of 2 samples
    assert cands[("bird", "important", "beak")]["count"] == 2
    assert cands[("bird", "important", "wing")]["score"] == 0.5
    assert cands[("bird", "superclass", "animal")]["score"] == 1.0  # the error sample does not count
