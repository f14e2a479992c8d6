"""Configuration precedence (flags > env > file > defaults), discovery, and one-line errors."""

from __future__ import annotations

import pytest

from normscope.config import CheckConfig, find_config_file, load_config
from normscope.errors import ConfigError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_file(tmp_path):
    resolved = load_config(tmp_path, environ={}, cwd=tmp_path)
    assert resolved.file is None
    assert resolved.config.check == CheckConfig()
    assert resolved.origin("check.max_growth").kind == "default"


def test_pyproject_found_upward_from_the_run_path_with_line_numbers(tmp_path):
    pyproject = write(tmp_path / "pyproject.toml",
                      '[project]\nname = "x"\n\n[tool.normscope]\nevery = 2\n\n'
                      '[tool.normscope.check]\nmax_growth = 3\nwarn = ["collapse"]\n')
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    resolved = load_config(run, environ={}, cwd=tmp_path / "runs")
    assert resolved.file == pyproject
    assert resolved.config.every == 2
    assert resolved.config.check.max_growth == 3.0 and isinstance(resolved.config.check.max_growth, float)
    assert resolved.config.check.warn == ("collapse",)
    origin = resolved.origin("check.max_growth")
    assert (origin.kind, origin.file, origin.line) == ("file", str(pyproject), 8)
    assert resolved.origin("every").line == 5


def test_pyproject_without_tool_table_is_skipped_and_normscope_toml_wins(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.normscope.check]\nmax_growth = 9\n")
    inner = tmp_path / "proj"
    write(inner / "pyproject.toml", '[project]\nname = "inner"\n')
    assert find_config_file(inner) == tmp_path / "pyproject.toml"
    own = write(inner / "normscope.toml", "[check]\nmax_growth = 4.5\n")
    assert find_config_file(inner) == own
    assert load_config(inner, environ={}, cwd=inner).config.check.max_growth == 4.5


def test_environment_beats_file_and_flags_beat_environment(tmp_path):
    write(tmp_path / "normscope.toml", "[check]\nmax_growth = 4.5\nmin_growth = 0.1\n")
    env = {"NORMSCOPE_CHECK_MAX_GROWTH": "6", "NORMSCOPE_CHECK_MIN_GROWTH": "0.2",
           "NORMSCOPE_DEBUG": "1", "NORMSCOPE_CHECK_WARN": "growth, baseline"}
    resolved = load_config(tmp_path, environ=env, cwd=tmp_path, flags={"check.max_growth": 7.0,
                                                                     "check.min_growth": None})
    check = resolved.config.check
    assert check.max_growth == 7.0 and resolved.origin("check.max_growth").describe() == "flag --max-growth"
    assert check.min_growth == 0.2 and resolved.origin("check.min_growth").kind == "env"
    assert check.warn == ("growth", "baseline")


def test_bounce_by_epoch_takes_a_number_or_none(tmp_path):
    write(tmp_path / "normscope.toml", '[check]\nbounce_by_epoch = "none"\n')
    assert load_config(tmp_path, environ={}, cwd=tmp_path).config.check.bounce_by_epoch == "none"
    resolved = load_config(tmp_path, environ={"NORMSCOPE_CHECK_BOUNCE_BY_EPOCH": "12"}, cwd=tmp_path)
    assert resolved.config.check.bounce_by_epoch == 12.0


def test_relative_baseline_is_taken_from_the_config_files_directory(tmp_path):
    write(tmp_path / "normscope.toml", '[check]\nbaseline = "runs/base"\n')
    resolved = load_config(tmp_path / "x", environ={}, cwd=tmp_path)
    assert resolved.config.check.baseline == str(tmp_path / "runs" / "base")


@pytest.mark.parametrize("text, needle", [
    ("[check]\nmax_grwth = 3\n", "unknown key 'check.max_grwth'"),
    ("[check]\nmax_growth = \"big\"\n", "key 'check.max_growth': must be number, got str"),
    ("[check]\nnonfinite = 1\n", "key 'check.nonfinite': must be true/false"),
    ("[check]\nbounce_by_epoch = \"soon\"\n", "key 'check.bounce_by_epoch'"),
    ("[check]\ngrowth_measure = \"median\"\n", "last_first or max_min"),
    ("[check]\nwarn = \"growth\"\n", "key 'check.warn': must be list of strings"),
    ("colour = \"red\"\n", "unknown key 'colour'"),
    ("check = 3\n", "'check' must be a table"),
    ("[check\n", "not valid TOML"),
    ("[check]\nmax_growth = nan\n", "key 'check.max_growth': must be a finite number, got nan"),
    ("[check]\nmax_total_norm = inf\n", "key 'check.max_total_norm': must be a finite number, got inf"),
    ("[check]\nmax_growth = -1.0\n", "key 'check.max_growth': must be above 0, got -1.0"),
    ("[check]\nmax_growth = 0\n", "key 'check.max_growth': must be above 0, got 0.0"),
    ("[check]\nbaseline_rtol = -0.1\n", "key 'check.baseline_rtol': must be at least 0, got -0.1"),
    ("[check]\nbounce_by_epoch = -3\n", "key 'check.bounce_by_epoch': must be at least 0, got -3.0"),
    ("every = 0\n", "key 'every': must be at least 1, got 0"),
])
def test_bad_files_name_the_key_and_the_file(tmp_path, text, needle):
    path = write(tmp_path / "normscope.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={}, cwd=tmp_path)
    message = info.value.message
    assert needle in message
    assert str(path) in message
    assert "\n" not in message


def test_limits_at_their_edges_are_kept(tmp_path):
    """A collapse bound of 0 and a zero tolerance are the rule switched off or made exact, not errors."""
    write(tmp_path / "normscope.toml", "[check]\nmin_growth = 0\nbaseline_atol = 0\nbaseline_rtol = 0\n"
                                       "bounce_by_epoch = 0\nequilibrium_min_ratio = 0\n")
    check = load_config(tmp_path, environ={}, cwd=tmp_path).config.check
    assert (check.min_growth, check.baseline_rtol, check.bounce_by_epoch) == (0.0, 0.0, 0.0)


def test_a_limit_that_decides_every_run_alike_is_refused_from_any_source(tmp_path):
    """NaN compares false with everything and a negative ratio bound holds for every run: from the
    environment and from flags as from the file, each is a one-line configuration error."""
    with pytest.raises(ConfigError, match="NORMSCOPE_CHECK_MAX_GROWTH: must be a finite number, got nan"):
        load_config(tmp_path, environ={"NORMSCOPE_CHECK_MAX_GROWTH": "nan"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="flag --max-growth: must be above 0, got -1.0"):
        load_config(tmp_path, environ={}, cwd=tmp_path, flags={"check.max_growth": -1.0})
    with pytest.raises(ConfigError, match="flag --every: must be at least 1, got 0"):
        load_config(tmp_path, environ={}, cwd=tmp_path, flags={"every": "0"})


def test_a_check_config_built_in_python_is_held_to_the_same_bounds():
    with pytest.raises(ConfigError, match="CheckConfig.max_growth: must be a finite number, got nan"):
        CheckConfig(max_growth=float("nan"))
    with pytest.raises(ConfigError, match="CheckConfig.baseline_rtol: must be at least 0, got -1"):
        CheckConfig(baseline_rtol=-1)
    assert CheckConfig(max_growth=3, min_growth=0).max_growth == 3


def test_bad_environment_and_flags_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="NORMSCOPE_CHECK_MAX_GROWTH: must be number"):
        load_config(tmp_path, environ={"NORMSCOPE_CHECK_MAX_GROWTH": "lots"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="NORMSCOPE_CHECK_MAXGROWTH: unknown key 'check.maxgrowth'"):
        load_config(tmp_path, environ={"NORMSCOPE_CHECK_MAXGROWTH": "2"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="flag --every: must be integer"):
        load_config(tmp_path, environ={}, cwd=tmp_path, flags={"every": "two"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path, config_file=tmp_path / "missing.toml", environ={})


def test_explicit_config_file_may_use_the_pyproject_layout(tmp_path):
    ci = write(tmp_path / "ci.toml", "[tool.normscope.check]\nmax_growth = 2.5\n")
    resolved = load_config(tmp_path, config_file=ci, environ={})
    assert resolved.config.check.max_growth == 2.5
    assert resolved.origin("check.max_growth").line == 2


def test_explicit_config_file_skips_discovery(tmp_path):
    write(tmp_path / "normscope.toml", "[check]\nmax_growth = 2\n")
    other = write(tmp_path / "ci" / "strict.toml", "[check]\nmax_growth = 1.5\n")
    resolved = load_config(tmp_path, config_file=other, environ={})
    assert resolved.file == other and resolved.config.check.max_growth == 1.5
