"""QuantSpec / ClipSearch / QuantPolicy validation: every error names its field."""

from __future__ import annotations

import dataclasses

import pytest

from lowbit_asr.quant import ClipSearch, PolicyRule, QuantPolicy, QuantSpec


@pytest.mark.parametrize("kwargs,field", [
    ({"bits": 0}, "QuantSpec.bits"),
    ({"bits": 9}, "QuantSpec.bits"),
    ({"bits": 2.0}, "QuantSpec.bits"),
    ({"bits": True}, "QuantSpec.bits"),
    ({"bits": 1, "symmetric": True}, "QuantSpec.symmetric"),
    ({"bits": 4, "symmetric": "yes"}, "QuantSpec.symmetric"),
    ({"bits": 4, "clip": 0.0}, "QuantSpec.clip"),
    ({"bits": 4, "clip": 1.5}, "QuantSpec.clip"),
    ({"bits": 4, "clip": "0.9"}, "QuantSpec.clip"),
    ({"bits": 4, "group_size": 0}, "QuantSpec.group_size"),
    ({"bits": 4, "group_size": 16.0}, "QuantSpec.group_size"),
    ({"bits": 4, "sub_channels": -2}, "QuantSpec.sub_channels"),
    ({"bits": 4, "group_size": 16, "sub_channels": 2}, "QuantSpec.sub_channels"),
    ({"bits": 4, "scale_dtype": "float64"}, "QuantSpec.scale_dtype"),
    ({"bits": 4, "clip": 0.9, "clip_search": ClipSearch()}, "QuantSpec.clip_search"),
    ({"bits": 4, "clip_search": {"min": 0.0}}, "ClipSearch.min"),
    ({"bits": 4, "clip_search": {"steps": 0}}, "ClipSearch.steps"),
    ({"bits": 4, "clip_search": {"per_channel": 1}}, "ClipSearch.per_channel"),
    ({"bits": 4, "clip_search": {"mn": 0.5}}, "ClipSearch"),
    ({"bits": 4, "clip_search": 0.5}, "QuantSpec.clip_search"),
])
def test_invalid_spec_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        QuantSpec.from_config(kwargs)


def test_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bitz'\]"):
        QuantSpec.from_config({"bitz": 4})
    with pytest.raises(ValueError, match="QuantSpec.bits is required"):
        QuantSpec.from_config({"symmetric": False})


def test_spec_is_frozen_and_round_trips():
    spec = QuantSpec.from_config({"bits": 2, "symmetric": False, "group_size": 16,
                                  "clip_search": {"min": 0.4, "steps": 12, "per_channel": True}})
    assert isinstance(spec.clip_search, ClipSearch)
    assert QuantSpec.from_config(spec.to_config()) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.bits = 4  # type: ignore[misc]
    assert spec.short() == "int2-asym-g16-clipsearch0.4x12-pc-f16"
    assert (spec.qmin, spec.qmax) == (-2, 1)
    assert QuantSpec(8).qmin == -128 and QuantSpec(8).qmax == 127
    assert ClipSearch(min=0.5, steps=3).candidates() == [1.0, 0.75, 0.5]


@pytest.mark.parametrize("config,message", [
    ({"float_bits": 8}, r"QuantPolicy\.float_bits"),
    ({"indivisible": "pad"}, r"QuantPolicy\.indivisible"),
    ({"rules": "x"}, r"quantizer\.rules must be a list"),
    ({"rules": [{"pattern": "*"}]}, r"quantizer\.rules\[0\] must be a mapping"),
    ({"rules": [{"pattern": "", "spec": None}]}, r"PolicyRule\.pattern"),
    ({"rules": [{"pattern": "re:(", "spec": None}]}, "bad regex"),
    ({"rules": [{"pattern": "a", "spec": None}, {"pattern": "b", "spec": {"bits": 12}}]},
     r"quantizer\.rules\[1\]: QuantSpec\.bits"),
    ({"default": {"bits": 2, "clip": 2}}, r"quantizer\.default: QuantSpec\.clip"),
    ({"defaults": None}, r"unknown key"),
])
def test_invalid_policy_names_key(config, message):
    with pytest.raises(ValueError, match=message):
        QuantPolicy.from_config(config)


def test_policy_round_trips_and_matches_first_rule():
    policy = QuantPolicy.from_config({
        "name": "mixed",
        "default": {"bits": 4},
        "rules": [
            {"pattern": "enc.*.ff.*", "spec": {"bits": 2, "symmetric": False, "group_size": 8}},
            {"pattern": "enc.*", "spec": None},
            {"pattern": r"re:dec\.(emb|lstm)\..*", "spec": {"bits": 8}},
        ],
    })
    assert QuantPolicy.from_config(policy.to_config()) == policy
    assert policy.match("enc.0.ff.weight")[0].bits == 2
    assert policy.match("enc.0.attn.weight") == (None, "rules[1] 'enc.*'")
    assert policy.match("dec.emb.weight")[0].bits == 8
    assert policy.match("joiner.weight") == (QuantSpec(4), "default")
    assert isinstance(policy.rules[0], PolicyRule)
    assert QuantPolicy.from_config(None).is_float
    assert not policy.is_float
