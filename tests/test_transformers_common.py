"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`), run on PART.

The mixins come from the source distribution of the installed transformers, fetched with pip at test time
(`tests/transformers_sdist.py`, cached under `~/.cache/part-speech/transformers-tests`); they are not copied into
this repository. The tester is `tests/transformers_common_tester.py`. Without the package registry (and no cached
copy) `test_common_tests_are_available` fails with the reason: the common tests never skip silently. Skipped common
tests state their reason (most are the mixin's own: GPU, flash attention, kernels, MoE, ...).

The 5.24 sdist ships `tests/*.py` but not `tests/generation/`, `tests/exporters/` or `tests/utils/`: their
`GenerationTesterMixin` and `ExportTesterMixin` are empty stubs here, so transformers' generate() and torch.export
tests do not run (PART's generation is tested in `test_modeling.py`); see `transformers_sdist.MISSING_MODULES`.
"""

import pytest

from transformers_sdist import common_tests_package

try:
    common_tests_package()
except RuntimeError as error:
    UNAVAILABLE: str | None = str(error)
else:
    UNAVAILABLE = None
    from transformers_common_tester import (  # noqa: F401  (collected from here)
        PartForSpeechToTextModelTest,
        PartWithWhisperEncoderModelTest,
    )


def test_common_tests_are_available():
    """Fails, never skips, when transformers' common tests cannot be fetched: they would silently not run."""
    if UNAVAILABLE is not None:
        pytest.fail(f"transformers' common tests are unavailable: {UNAVAILABLE}", pytrace=False)
