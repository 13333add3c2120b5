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
        # types are checked, never coerced or crashed on
        ("model = 5", "model must be a string, got 5"),
        ("sleep_preset = 5", "sleep_preset must be a string, got 5"),
        ("train_model = 5", "train_model must be a string, got 5"),
        ("system_prompt = 5", "system_prompt must be a string, got 5"),
        ("temperature = true", "temperature must be a number, got True"),
        ("n_threads = true", "n_threads must be an integer, got True"),
        ('n_ctx = "4096"', "n_ctx must be an integer, got '4096'"),
        ('scheduler_in_chat = "yes"', "scheduler_in_chat must be true or false"),
        ("max_message_tokens = 1", "max_message_tokens must be at least 16"),
        ('system_prompt = "  "', "system_prompt must not be empty"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_whole_number_is_a_fine_temperature(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("temperature = 1\n")
    assert load_config(path).temperature == 1


def test_the_config_file_is_made_private(tmp_path):
    import os
    import stat

    path = tmp_path / "c.toml"
    path.write_text('day_boundary = "05:00"\n')
    os.chmod(path, 0o644)
    load_config(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
