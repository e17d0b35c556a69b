"""The transcript's decoding spec and loop cut (emoclap.transcript), and the fusion fit."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap.transcript import DecodingSpec, encoder_frames, loop_start, parse_spec, spec_section

EOT, VOCAB = 10, 14  # ids above EOT are special, like Whisper's timestamps and task tokens
SPEC = DecodingSpec(prompt=(11, 12), eot=EOT, blank=(0,), max_tokens=8, tokens_per_second=2.0,
                    base_tokens=1, layers=1, heads=1, head_dim=1)


def test_loop_start_finds_repeats_and_leaves_speech_alone():
    assert loop_start([7, 7, 7]) == 1
    assert loop_start([5, 1, 2, 1, 2, 1, 2]) == 3
    assert loop_start([1, 2, 3, 4, 5, 1, 2, 3, 4, 5]) == 5  # a long span said twice
    assert loop_start([4, 1, 2, 1, 2]) is None  # "no, no" is speech
    assert loop_start(list(range(30))) is None


@given(st.lists(st.integers(0, 3), max_size=40))
def test_cutting_at_loop_start_keeps_a_prefix_with_the_repeat_gone(tokens):
    cut = loop_start(tokens)
    if cut is not None:
        assert 0 < cut < len(tokens)
        rest = tokens[cut:]
        # what is cut off is copies of the span just before it
        assert any(len(rest) % p == 0 and rest == tokens[cut - p:cut] * (len(rest) // p) for p in range(1, cut + 1))


def test_budgets_grow_with_duration_and_are_bounded():
    assert SPEC.budget(0.0) == 1 and SPEC.budget(1.0) == 3 and SPEC.budget(600.0) == 8
    assert encoder_frames(0) == 0 and encoder_frames(480) == 2 and encoder_frames(16000) == 50


def test_a_spec_survives_the_manifest():
    assert parse_spec(spec_section(SPEC), "m") == SPEC


VALUES = st.none() | st.booleans() | st.integers(-2, 2**33) | st.floats(allow_nan=True) | st.text(max_size=3) \
    | st.lists(st.integers(-2, 2**32) | st.text(max_size=1), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(spec_section(SPEC))), VALUES, max_size=9))
def test_hostile_spec_fields_are_refused_by_name(changes):
    section = {**spec_section(SPEC), **changes}
    try:
        spec = parse_spec(section, "bundle/manifest.json")
    except ValueError as exc:
        assert "bundle/manifest.json: field 'transcriber." in str(exc)
        return
    assert spec.prompt and 0 < spec.max_tokens and spec.budget(1e9) <= spec.max_tokens


def test_fusion_weights_recover_how_much_each_path_knows():
    from trainer.platt import fusion_fit

    rng = np.random.default_rng(0)
    n = 4000
    a, t = rng.normal(0, 2, n), rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 * a + 1.5 * t)))).astype(float)
    fit = fusion_fit(a, t, y)
    assert abs(fit.audio - 0.3) < 0.1 and abs(fit.text - 1.5) < 0.2


def test_fusion_weights_stay_within_the_files_limits():
    from trainer.platt import fusion_fit

    a = np.linspace(-1, 1, 200)
    fit = fusion_fit(a, -a, (a > 0).astype(float))  # the text path ranks backwards
    assert fit.text == 0.0 and 0 < fit.audio <= 10
