"""The repository's copy of the spec facts still agrees with the reference material.

The one place where the repository looks outside itself, and only when the reference
material sits beside the checkout (the project's own CI); a fresh clone has nothing to
compare with and skips, saying so.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.spec import NEWEST, SPEC_COPY, extract

REFERENCE = ROOT.parent / "shared"


@pytest.mark.skipif(
    not (REFERENCE / NEWEST).is_file(),
    reason="the reference spec is not beside this checkout (only the project's own CI has it)",
)
def test_the_spec_copy_agrees_with_the_official_spec() -> None:
    stored = json.loads(SPEC_COPY.read_text())
    fresh = json.loads(json.dumps(extract(REFERENCE)))
    assert stored == fresh, "refresh with: python -m tests.spec PATH/TO/shared"
