import dataclasses

import pytest

from attnlab.config import ConfigError, DecodeConfig, ModelConfig


def test_defaults_are_the_paper_base_model():
    c = ModelConfig()
    assert (c.n_layers, c.d_model, c.d_ff, c.n_heads, c.key_dim, c.value_dim) == (6, 512, 2048, 8, 64, 64)
    assert (c.dropout, c.positional, c.norm_placement, c.tie_embeddings, c.scale_embeddings) == (
        0.1, "sinusoidal", "post", "all", True)
    d = DecodeConfig()
    assert (d.beam_size, d.length_penalty, d.max_len_a, d.max_len_b) == (4, 0.6, 1.0, 50)


def test_d_k_and_d_v_independent_of_heads():
    c = ModelConfig(n_heads=16, d_k=16, d_v=128)
    assert (c.key_dim, c.value_dim) == (16, 128)
    # Replacing n_heads re-derives d_k when it was not set explicitly.
    assert dataclasses.replace(ModelConfig(), n_heads=4).key_dim == 128


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(n_heads=6), ["n_heads=6", "d_model=512"]),
        (dict(positional="sine"), ["positional", "'sine'", "'sinusoidal'"]),
        (dict(norm_placement="middle"), ["norm_placement", "'post'", "'pre'"]),
        (dict(norm="groupnorm"), ["norm", "'rmsnorm'", "'batchnorm'"]),
        (dict(attention_scale="sqrt"), ["attention_scale", "'sqrt_dk'"]),
        (dict(n_kv_heads=0), ["n_kv_heads=0"]),
        (dict(tie_embeddings="yes"), ["tie_embeddings", "'decoder'"]),
        (dict(activation="swish"), ["activation", "'gelu'"]),
        (dict(dropout=1.5), ["dropout=1.5", "[0, 1)"]),
        (dict(d_model=0), ["d_model=0"]),
        (dict(positional="rope", d_k=33, d_v=64), ["rope", "even d_k", "33"]),
        (dict(d_model=511, n_heads=1), ["sinusoidal", "even d_model", "511"]),
    ],
)
def test_invalid_values_name_field_value_and_choices(overrides, words):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**overrides)
    for word in words:
        assert word in str(error.value)


def test_n_heads_need_not_divide_d_model_when_d_k_d_v_are_given():
    assert ModelConfig(n_heads=6, d_k=64, d_v=64).key_dim == 64


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="'n_head'.*did you mean 'n_heads'"):
        ModelConfig.from_dict({"n_head": 4})
    assert ModelConfig.from_dict({"n_heads": 4, "d_model": 256}).n_heads == 4


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().d_model = 3


@pytest.mark.parametrize("values, words", [
    ({"d_model": "512"}, ["model.d_model='512' must be an integer"]),
    ({"dropout": "high"}, ["model.dropout='high' must be a number"]),
    ({"n_layers": 2.0}, ["model.n_layers=2.0 must be an integer"]),
    ({"n_layers": True}, ["model.n_layers=True must be an integer"]),  # YAML's yes is not a count
    ({"d_k": "64"}, ["model.d_k='64' must be an integer, or null"]),
    ({"positional": "sine", "d_ff": "x"}, ["positional='sine' must be one of", "model.d_ff='x'"]),  # both at once
])
def test_values_of_the_wrong_type_name_the_path_and_the_type(values, words):
    from attnlab.config import ExperimentConfig

    with pytest.raises(ConfigError) as error:
        ExperimentConfig.from_dict({"model": values}, where="row wide")
    for word in words:
        assert word in str(error.value)
    assert all(line.startswith("row wide: ") for line in str(error.value).splitlines())


def test_types_are_checked_however_a_config_is_built():
    from attnlab.config import TrainConfig

    with pytest.raises(ConfigError, match="TrainConfig.max_steps='10' must be an integer, or null"):
        TrainConfig(max_steps="10")
    with pytest.raises(ConfigError, match="DecodeConfig.beam_size=4.5 must be an integer"):
        dataclasses.replace(DecodeConfig(), beam_size=4.5)


def test_yaml_reads_exponents_as_numbers():
    """YAML 1.1 reads `1e-3` as a string; configs read it as the learning rate it is."""
    from attnlab.fields import parse_yaml

    assert parse_yaml("lr: 1e-3\nwd: 5E+2\nname: 1e3x\n") == {"lr": 0.001, "wd": 500.0, "name": "1e3x"}


def test_flatten_and_unflatten_are_inverse():
    from attnlab.fields import flatten, unflatten

    nested = {"model": {"n_heads": 4, "d_k": None}, "data": {"custom_files": {"train": "a,b"}}, "name": "x"}
    assert flatten(nested) == {"model.n_heads": 4, "model.d_k": None, "data.custom_files.train": "a,b", "name": "x"}
    assert unflatten(flatten(nested)) == nested
