import pytest

from storage import Config, ConfigError, load_config


def test_missing_file_gives_defaults(tmp_path):
    assert load_config(tmp_path / "none.toml") == Config()


def test_values_are_read(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('day_boundary = "05:30"\nn_ctx = 2048\nmemory_token_budget = 256\n')
    config = load_config(path)
    assert (config.boundary.hour, config.boundary.minute, config.n_ctx) == (5, 30, 2048)


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour = 1", "unknown key 'colour'"),
        ("n_ctx = -5", "n_ctx must be a positive integer"),
        ("temperature = 9.0", "temperature must be in [0, 2]"),
        ('day_boundary = "4pm"', "day_boundary must be HH:MM"),
        ("n_ctx = 600", "must leave room in n_ctx"),
        ("n_ctx = [", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
