"""RunConfig: every option of a run declared once, reachable from the CLI and ``evaluate``, and
one ``validate()`` refusing each bad value in one line before anything loads.

The reachability tests loop over the dataclass fields, so a new field that the parser or
``evaluate`` could not reach fails here without this file naming it.
"""
from __future__ import annotations

from dataclasses import fields

import pytest

from evalsuite.cli import build_parser
from evalsuite.config import DEFAULT_MODEL, RunConfig
from evalsuite.errors import EvalsuiteError

FIELDS = [f for f in fields(RunConfig)]


def _subcommand(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def _cli_value(spec) -> tuple[list[str], object]:
    """Arguments setting ``spec`` to something other than its default, and the value expected."""
    action = next(a for a in _subcommand("run")._actions if a.dest == spec.name)
    if isinstance(spec.default, bool):
        return [action.option_strings[0]], not spec.default
    if action.choices:
        value = next(c for c in reversed(list(action.choices)) if c != spec.default)
        return [action.option_strings[0], value], value
    text = {"shard": "1/4", "audit_share": "7%"}.get(spec.name, "7")
    return [action.option_strings[0], text], action.type(text) if action.type else text


@pytest.mark.parametrize("spec", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_is_a_run_option_with_its_default(spec):
    run = _subcommand("run")
    (action,) = [a for a in run._actions if a.dest == spec.name]
    assert action.help == spec.metadata["help"] and action.default == spec.default
    defaults = RunConfig.from_args(run.parse_args([]))
    assert getattr(defaults, spec.name) == spec.default


@pytest.mark.parametrize("spec", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_reaches_the_config_from_the_command_line(spec):
    argv, expected = _cli_value(spec)
    config = RunConfig.from_args(_subcommand("run").parse_args(argv))
    assert getattr(config, spec.name) == expected != spec.default


@pytest.mark.parametrize("spec", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_reaches_the_config_through_evaluate(spec, monkeypatch):
    """``evaluate(**{field: value})`` and ``plan_cost(**{field: value})`` hand the value on (seen
    where both receive it: the one preparation, :func:`evalsuite.run.preparation.prepare`)."""
    import evalsuite.run.preparation
    from evalsuite.run.dry_run import plan_cost
    from evalsuite.run.evaluation import evaluate

    class Seen(Exception):
        pass

    seen = []

    def prepare(config, **kwargs):
        seen.append(config)
        raise Seen

    monkeypatch.setattr(evalsuite.run.preparation, "prepare", prepare)
    _, value = _cli_value(spec)
    for entry in (evaluate, plan_cost):
        seen.clear()
        with pytest.raises(Seen):
            entry(**{spec.name: value})
        assert getattr(seen[0], spec.name) == value
        # and as a config, keywords replacing its values
        seen.clear()
        with pytest.raises(Seen):
            entry(config=RunConfig(**{spec.name: value}), tag="t")
        assert getattr(seen[0], spec.name) == (value if spec.name != "tag" else "t")


def test_other_commands_take_their_run_options_from_the_fields():
    for command, names in (("nightly", {"tasks", "limit", "task_dir", "data_dir", "backend", "device", "results_dir",
                                        "use_cache", "tag"}),
                           ("contamination", {"models", "tasks", "limit", "task_dir", "data_dir", "device", "dtype",
                                              "results_dir", "trust_remote_code", "progress"})):
        parser = _subcommand(command)
        offered = {a.dest for a in parser._actions} & {f.name for f in FIELDS}
        assert offered == names


def test_validate_normalizes():
    config = RunConfig(models=" a, b ", tasks="leaderboard", batch_size="8", shard="1/4", run_id="r").validate()
    assert config.models == ("a", "b")
    with pytest.raises(EvalsuiteError, match="empty model name"):  # a trailing comma is an empty name (issue 24.3)
        RunConfig(models=" a, b ,").validate()
    assert config.tasks == ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")
    assert (config.batch_size, config.shard) == (8, (1, 4))
    assert RunConfig().validate().models == (DEFAULT_MODEL,)
    assert config.validate() == config  # validating twice changes nothing
    # vLLM runs on GPUs; whether one is present is left to evaluate (after the model checks)
    assert RunConfig(backend="vllm").validate(gpu=False).device == "cuda"
    assert RunConfig(device="cuda:3").validate(gpu=False).device == "cuda:3"


@pytest.mark.parametrize("options,message", [
    ({"limit": 0}, "--limit must be a positive number"),
    ({"limit": True}, "--limit must be a positive number"),
    ({"limit": "5"}, "--limit must be a positive number"),
    ({"backend": "hf"}, "unknown backend 'hf'"),
    ({"tasks": " "}, "no task given"),
    ({"tasks": [" ", ""]}, "no task given"),
    ({"tasks": "arc,nope"}, "unknown task 'nope'"),
    ({"batch_size": 0}, "--batch-size must be a positive whole number or auto"),
    ({"batch_size": "big"}, "--batch-size must be a positive whole number or auto"),
    ({"shard": "4/4", "run_id": "r"}, "--shard 4/4 is out of range"),
    ({"shard": "half", "run_id": "r"}, "--shard must look like I/N"),
    ({"shard": (0, 2)}, "--shard needs --run-id"),
    ({"dtype": "fp8"}, "unknown --dtype 'fp8'"),
    ({"generation": "sampled"}, "unknown --generation 'sampled'"),
    ({"tensor_parallel": 0}, "--tensor-parallel must be a positive whole number"),
    ({"data_parallel": 0}, "--data-parallel must be a positive whole number"),
    ({"device": "tpu"}, "unknown --device 'tpu'"),
    ({"device": "cpu:1"}, "unknown --device 'cpu:1'"),
    ({"audit_share": 0}, "--audit-share must be a fraction above 0 and at most 1"),
    ({"audit_share": 3}, "--audit-share must be a fraction above 0 and at most 1"),
    ({"audit_share": "3%"}, "--audit-share must be a fraction above 0 and at most 1"),
])
def test_each_bad_value_is_one_line(options, message):
    with pytest.raises(EvalsuiteError) as info:
        RunConfig(**options).validate()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_audit_share_on_the_command_line():
    from evalsuite.config import share_arg

    assert share_arg("0.05") == share_arg("5%") == pytest.approx(0.05) and share_arg("1") == 1.0
    for bad in ("0", "150%", "-1", "lots"):
        with pytest.raises(Exception, match="--no-audit|fraction"):
            share_arg(bad)


def test_an_unknown_option_is_refused_by_name():
    from evalsuite.run.evaluation import evaluate

    with pytest.raises(TypeError, match="limt"):
        evaluate(limt=5)


def test_the_audit_share_help_names_the_plain_tokens_price():
    """config.py sits below run/ and cannot import the price; its help text says it in words."""
    import dataclasses

    from evalsuite.config import RunConfig
    from evalsuite.run.audit_sample import PLAIN_TOKEN_COST, SHARE

    field = next(f for f in dataclasses.fields(RunConfig) if f.name == "audit_share")
    assert field.default == SHARE
    assert f"priced at {PLAIN_TOKEN_COST:g} engine tokens" in field.metadata["help"]
