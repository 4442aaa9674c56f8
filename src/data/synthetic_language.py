"""The language of the synthetic refer dataset (src/data/synthetic.py): the vocabulary, the semantic description
of an expression (`Description`), its meaning on a scene (`evaluate`: the objects it is true of), its wording
(`realise`), every description that picks out one object alone (`candidate_descriptions`) and the choice of an
object's expressions. Pure Python and NumPy: the pictures are src/data/synthetic_scenes.py's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


NOUNS = {  # first word is the usual one; synonyms are drawn now and then
    "circle": ("circle", "circle", "circle", "disc"),
    "ring": ("ring", "ring", "ring", "donut"),
    "square": ("square", "square", "square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "cross", "cross", "plus sign"),
}
GENERIC_NOUNS = ("shape", "object", "one")
POSITION_ADJECTIVES = {
    "left": ("left", "leftmost"), "right": ("right", "rightmost"), "top": ("top", "upper", "topmost"),
    "bottom": ("bottom", "lower", "bottommost"), "middle": ("middle", "center"),
}
POSITION_PHRASES = {
    "left": ("on the left", "to the left", "at the left"), "right": ("on the right", "to the right", "at the right"),
    "top": ("at the top", "on top", "up top"), "bottom": ("at the bottom", "on the bottom", "down below"),
    "middle": ("in the middle", "in the center"),
}
SIZE_ADJECTIVES = {"big": ("big", "large", "bigger", "biggest", "larger"),
                   "small": ("small", "smaller", "smallest", "little", "tiny")}
RELATION_PHRASES = {
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "next_to": ("next to", "closest to", "nearest to", "near"),
}
POSITIONS = ("left", "right", "top", "bottom", "middle")
SIZES = ("big", "small")
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")

# Geometry of the language: thresholds that keep every emitted expression clearly true.
POSITION_MARGIN = 0.08  # superlative position: best beats the runner-up by this share of the image side
ABSOLUTE_BAND = 0.36  # a lone object is "on the left" if its centre lies in the left 36% of the image
SIZE_RATIO = 1.5  # "big": area at least 1.5x the runner-up's
RELATION_MARGIN = 0.06  # directional relation: centre offset of at least 6% of the side ...
RELATION_SLOPE = 0.8  # ... and mostly along that axis (|cross offset| < 0.8 * offset)
NEXT_TO_RATIO = 1.4  # "next to": closest candidate, the runner-up at least 1.4x farther ...
NEXT_TO_MAX_DISTANCE = 0.45  # ... and its centre within 45% of the long image side


@dataclass(frozen=True)
class Description:
    """The meaning of an expression: a filter (category, colour), then at most one of a superlative
    selection (("position", "left") / ("size", "big")) or a relation to a landmark object."""

    category: Optional[str] = None
    colour: Optional[str] = None
    select: Optional[Tuple[str, str]] = None
    relation: Optional[Tuple[str, "Description"]] = None


@dataclass(frozen=True)
class ObjectFacts:
    """What the language may talk about. `colour` is None in grayscale images."""

    category: str
    colour: Optional[str]
    cx: float  # centroid of the visible mask, pixels
    cy: float
    area: float  # visible pixels


def _superlative(candidates: List[int], values: Sequence[float], largest: bool, margin: float,
                 ratio: bool = False) -> List[int]:
    ordered = sorted(candidates, key=lambda i: values[i], reverse=largest)
    best, second = values[ordered[0]], values[ordered[1]]
    if ratio:
        clear = best >= SIZE_RATIO * second if largest else second >= SIZE_RATIO * best
    else:
        clear = abs(best - second) >= margin
    return [ordered[0]] if clear else []


def _position_select(candidates: List[int], objects: Sequence[ObjectFacts], where: str,
                     width: int, height: int) -> List[int]:
    xs = [o.cx for o in objects]
    ys = [o.cy for o in objects]
    if len(candidates) == 1:  # a lone candidate: the word must be true of the image itself
        o = objects[candidates[0]]
        fx, fy = o.cx / width, o.cy / height
        ok = {"left": fx < ABSOLUTE_BAND, "right": fx > 1 - ABSOLUTE_BAND, "top": fy < ABSOLUTE_BAND,
              "bottom": fy > 1 - ABSOLUTE_BAND,
              "middle": abs(fx - 0.5) < 0.12 and abs(fy - 0.5) < 0.12}[where]
        return list(candidates) if ok else []
    if where == "middle":  # the horizontal middle one of exactly three
        if len(candidates) != 3:
            return []
        ordered = sorted(candidates, key=lambda i: xs[i])
        gaps_ok = (xs[ordered[1]] - xs[ordered[0]] >= POSITION_MARGIN * width and
                   xs[ordered[2]] - xs[ordered[1]] >= POSITION_MARGIN * width)
        return [ordered[1]] if gaps_ok else []
    if where in ("left", "right"):
        return _superlative(candidates, xs, where == "right", POSITION_MARGIN * width)
    return _superlative(candidates, ys, where == "bottom", POSITION_MARGIN * height)


def _related(o: ObjectFacts, landmark: ObjectFacts, relation: str, width: int, height: int) -> bool:
    dx, dy = landmark.cx - o.cx, landmark.cy - o.cy  # > 0: o is left of / above the landmark
    if relation == "left_of":
        return dx >= RELATION_MARGIN * width and abs(dy) < RELATION_SLOPE * dx
    if relation == "right_of":
        return -dx >= RELATION_MARGIN * width and abs(dy) < RELATION_SLOPE * -dx
    if relation == "above":
        return dy >= RELATION_MARGIN * height and abs(dx) < RELATION_SLOPE * dy
    if relation == "below":
        return -dy >= RELATION_MARGIN * height and abs(dx) < RELATION_SLOPE * -dy
    raise ValueError(relation)


def evaluate(desc: Description, objects: Sequence[ObjectFacts], width: int, height: int) -> List[int]:
    """Indices of the objects the description is true of (an expression is emitted iff this is [target])."""
    candidates = [i for i, o in enumerate(objects)
                  if (desc.category is None or o.category == desc.category)
                  and (desc.colour is None or o.colour == desc.colour)]
    if not candidates:
        return []
    if desc.relation is not None:
        relation, landmark_desc = desc.relation
        landmarks = evaluate(landmark_desc, objects, width, height)
        if len(landmarks) != 1:
            return []
        lm = landmarks[0]
        candidates = [i for i in candidates if i != lm]
        if not candidates:
            return []
        if relation == "next_to":
            dist = [math.hypot(o.cx - objects[lm].cx, o.cy - objects[lm].cy) for o in objects]
            ordered = sorted(candidates, key=lambda i: dist[i])
            if dist[ordered[0]] > NEXT_TO_MAX_DISTANCE * max(width, height):
                return []
            if len(ordered) > 1 and dist[ordered[1]] < NEXT_TO_RATIO * dist[ordered[0]]:
                return []
            return [ordered[0]]
        return [i for i in candidates if _related(objects[i], objects[lm], relation, width, height)]
    if desc.select is not None:
        kind, value = desc.select
        if kind == "position":
            return _position_select(candidates, objects, value, width, height)
        if len(candidates) < 2:  # size words compare; a lone object is neither big nor small
            return []
        return _superlative(candidates, [o.area for o in objects], value == "big", 0.0, ratio=True)
    return candidates


def _noun_phrase(desc: Description, rng: np.random.Generator) -> str:
    noun = str(rng.choice(NOUNS[desc.category])) if desc.category else str(rng.choice(GENERIC_NOUNS))
    return f"{desc.colour} {noun}" if desc.colour else noun


def realise(desc: Description, rng: np.random.Generator) -> str:
    """Words for a description (lower case, no punctuation)."""
    det = "the " if rng.random() < 0.6 else ""
    noun_phrase = _noun_phrase(desc, rng)
    if desc.relation is not None:
        relation, landmark = desc.relation
        det2 = "the " if rng.random() < 0.75 else ""
        return f"{det}{noun_phrase} {rng.choice(RELATION_PHRASES[relation])} {det2}{_noun_phrase(landmark, rng)}"
    if desc.select is not None:
        kind, value = desc.select
        if kind == "size":
            return f"{det}{rng.choice(SIZE_ADJECTIVES[value])} {noun_phrase}"
        if rng.random() < 0.5:
            return f"{det}{rng.choice(POSITION_ADJECTIVES[value])} {noun_phrase}"
        return f"{det}{noun_phrase} {rng.choice(POSITION_PHRASES[value])}"
    if desc.category and desc.colour and rng.random() < 0.25:
        noun = rng.choice(NOUNS[desc.category])
        return f"{det}{noun} that is {desc.colour}" if rng.random() < 0.5 else f"{det}{desc.colour} colored {noun}"
    if desc.category is None and rng.random() < 0.5:
        return f"{det}{desc.colour} one"
    return f"{det}{noun_phrase}"


def candidate_descriptions(target: int, objects: Sequence[ObjectFacts], width: int,
                           height: int) -> Dict[str, List[Description]]:
    """Every description of our grammar that picks out `target` alone, grouped by kind."""
    t = objects[target]
    colours = [t.colour, None] if t.colour is not None else [None]
    found: Dict[str, List[Description]] = {"attribute": [], "position": [], "size": [], "relation": []}

    def keep(kind: str, desc: Description) -> None:
        if evaluate(desc, objects, width, height) == [target]:
            found[kind].append(desc)

    for category in (t.category, None):
        for colour in colours:
            if category is not None or colour is not None:
                keep("attribute", Description(category, colour))
            for where in POSITIONS:
                keep("position", Description(category, colour, select=("position", where)))
            for size in SIZES:
                keep("size", Description(category, colour, select=("size", size)))
            if category is None:
                continue  # relations name the target's category
            for lm, o in enumerate(objects):
                if lm == target:
                    continue
                landmark_descs = [Description(o.category, o.colour)] if o.colour is not None else []
                landmark_descs.append(Description(o.category, None))
                for landmark in landmark_descs:
                    if evaluate(landmark, objects, width, height) != [lm]:
                        continue
                    for relation in RELATIONS:
                        keep("relation", Description(category, colour, relation=(relation, landmark)))
    return found


def choose_expressions(found: Dict[str, List[Description]], rng: np.random.Generator,
                       count: int) -> List[Tuple[str, Description]]:
    """Up to `count` expressions of distinct wording, drawn round-robin over kinds so that one
    object's expressions use different cues; position and relation kinds come first more often."""
    kinds = [k for k in ("relation", "position", "size", "attribute") if found[k]]
    weights = np.array([{"relation": 3.0, "position": 3.0, "size": 2.0, "attribute": 1.5}[k] for k in kinds])
    if not kinds:
        return []
    order = list(rng.choice(len(kinds), size=len(kinds), replace=False, p=weights / weights.sum()))
    pools = {k: [found[k][j] for j in rng.permutation(len(found[k]))] for k in kinds}
    chosen: List[Tuple[str, Description]] = []
    texts: List[str] = []
    attempts = 0
    while len(chosen) < count and attempts < 4 * count + 8 and any(pools.values()):
        kind = kinds[order[attempts % len(order)]]
        attempts += 1
        if not pools[kind]:
            continue
        desc = pools[kind].pop()
        text = realise(desc, rng)
        if text not in texts:
            texts.append(text)
            chosen.append((text, desc))
    return chosen


def dress_sentence(text: str, rng: np.random.Generator) -> Tuple[str, str, List[str]]:
    """(raw, sent, tokens) like the refer files: `raw` as typed, `sent` lower-cased without punctuation."""
    raw = text
    if rng.random() < 0.3:
        raw = raw[0].upper() + raw[1:]
    if rng.random() < 0.2:
        raw += "."
    sent = text.lower()
    return raw, sent, sent.split()

