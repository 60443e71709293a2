"""The recipe hash, pinned to literals.

Every model's Job name and artifact path carry its recipe hash, and the operator
recompresses a model whose hash changed. So a change to how the hash is computed (the
fields in it, their serialisation, the digest or its length) recompresses every model
in every cluster on upgrade. If one of these literals has to change, that is a release
note, not a test update.
"""

from __future__ import annotations

import copy

from helpers import MINIMAL_SPEC

from modelpress.api import CompressedModelSpec, recipe_hash

SPEC = MINIMAL_SPEC


def hash_of(**sections) -> str:
    return recipe_hash(CompressedModelSpec.model_validate({**copy.deepcopy(SPEC), **sections}))


def test_recipe_hash_is_pinned() -> None:
    assert hash_of() == "aa898550b096948a"


def test_limits_count_only_where_they_differ_from_the_defaults() -> None:
    assert hash_of(limits={"maxSamples": 5000}) == "8c176e89a8c67832"
    assert hash_of(limits={"maxSamples": 100_000}) == hash_of(limits={}) == "aa898550b096948a"
