"""CHAIR on the shapes world: its object classes are the colour-shape pairs ("red circle").

`chair(captions, [scene_objects(s) for s in scenes], world_vocabulary())` then measures
hallucination with the same word matching as on COCO, next to the world's exact parser
(`language.absent_objects`). On captions of the world's grammar the two agree: a caption has a
CHAIR hallucination exactly when its parse finds an absent object of a kind other than "repeated",
and the CHAIR hallucinated mentions are those absent objects. They differ where CHAIR, a set-level
word match, cannot see what the parse sees:
- "repeated" objects (a pair the scene holds, named more often than it holds it) are not
  hallucinations for CHAIR, which checks only whether the class is present;
- absent colours and wrong backgrounds ("colour green", "black background" in `check().absent`)
  name no object; sizes and positions are not objects either;
- outside the grammar the parse gives up (None) while CHAIR still matches every colour-shape
  pair; a shape without its colour ("a circle") names no class, and a colour shared by two shapes
  ("a red and blue star") names only the pair it stands next to.
"""
from __future__ import annotations

from vlrm_jax.eval.chair import ObjectVocabulary
from vlrm_jax.world import shapes

# Spellings the world's word-level reader (shapes.caption_quality) accepts for its colours.
COLOUR_SPELLINGS = {"grey": "gray"}


def object_class(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def world_vocabulary() -> ObjectVocabulary:
    """Every colour x shape as a class; plurals ("red crosses") come from the matcher's singulariser."""
    synonyms = {object_class(c, s): object_class(c, s) for c in shapes.COLOURS for s in shapes.SHAPES}
    synonyms.update({object_class(spelling, s): object_class(colour, s)
                     for spelling, colour in COLOUR_SPELLINGS.items() for s in shapes.SHAPES})
    return ObjectVocabulary(synonyms)


def scene_objects(scene: shapes.Scene) -> set[str]:
    """The classes an image holds."""
    return {object_class(o.colour, o.shape) for o in scene.objects}
