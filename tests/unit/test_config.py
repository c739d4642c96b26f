"""`llmserve serve` flags and their LLMSERVE_* environment variables."""

import argparse
import asyncio

import pytest

from llmserve import event_loop
from llmserve.cli import build_parser
from llmserve.config import ServerConfig, check_server_arguments, env_name, with_env_arguments


def serve_parser() -> argparse.ArgumentParser:
    _, parser = build_parser(with_engine_arguments=False)
    # Stand-ins for vLLM's flags of each kind (vLLM adds the real ones at run time).
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--disable-log-stats", action="store_true")
    return parser


def parse(argv, environ):
    parser = serve_parser()
    return parser.parse_args(with_env_arguments(parser, argv, environ))


def test_defaults_follow_tritons_port_layout():
    config = ServerConfig.from_args(parse([], {}))
    assert (config.port, config.metrics_port, config.host) == (8001, 8002, "0.0.0.0")
    assert config.log_level == "INFO"


def test_every_flag_has_an_environment_variable():
    parser = serve_parser()
    names = {env_name(a) for a in parser._actions} - {None}
    assert {"LLMSERVE_PORT", "LLMSERVE_METRICS_PORT", "LLMSERVE_MAX_CONCURRENT_RPCS",
            "LLMSERVE_SHUTDOWN_GRACE_SECONDS", "LLMSERVE_ENFORCE_EAGER",
            "LLMSERVE_SERVED_MODEL_NAME"} <= names


def test_environment_values_are_typed_like_flags():
    args = parse([], {"LLMSERVE_PORT": "9001", "LLMSERVE_SHUTDOWN_GRACE_SECONDS": "2.5",
                      "LLMSERVE_SERVED_MODEL_NAME": "a b", "LLMSERVE_ENFORCE_EAGER": "true",
                      "LLMSERVE_DISABLE_LOG_STATS": "1"})
    assert (args.port, args.shutdown_grace_seconds) == (9001, 2.5)
    assert args.served_model_name == ["a", "b"]
    assert args.enforce_eager and args.disable_log_stats


def test_false_environment_values_turn_boolean_flags_off():
    args = parse(["--enforce-eager"], {})
    assert args.enforce_eager
    parser = serve_parser()
    parser.set_defaults(enforce_eager=True)
    args = parser.parse_args(with_env_arguments(parser, [], {"LLMSERVE_ENFORCE_EAGER": "false"}))
    assert not args.enforce_eager


def test_the_access_log_is_on_unless_turned_off():
    assert ServerConfig.from_args(parse([], {})).access_log
    assert not ServerConfig.from_args(parse(["--no-access-log"], {})).access_log
    assert not ServerConfig.from_args(parse([], {"LLMSERVE_ACCESS_LOG": "false"})).access_log


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca (mutual TLS) needs --tls-cert"),
    (["--api-key-file", "missing-keys.txt"], "--api-key-file: no such file: missing-keys.txt"),
    (["--max-queued-requests", "0"], "--max-queued-requests must be >= 1"),
    (["--keepalive-seconds", "-1"], "--keepalive-seconds must be >= 0"),
    (["--keepalive-timeout-seconds", "0"], "--keepalive-timeout-seconds > 0"),
])
def test_inconsistent_flags_are_refused_with_the_rule(argv, message, capsys):
    parser = serve_parser()
    args = parser.parse_args(argv)
    with pytest.raises(SystemExit):
        check_server_arguments(parser, args)
    assert message in capsys.readouterr().err


def test_keepalive_is_on_by_default_and_can_be_turned_off():
    config = ServerConfig.from_args(parse([], {}))
    assert (config.keepalive_seconds, config.keepalive_timeout_seconds) == (60.0, 20.0)
    args = parse(["--keepalive-seconds", "0"], {})
    check_server_arguments(serve_parser(), args)
    assert ServerConfig.from_args(args).keepalive_seconds == 0


def test_command_line_wins_over_environment():
    assert parse(["--port", "7000"], {"LLMSERVE_PORT": "9001"}).port == 7000
    assert parse(["--port=7000"], {"LLMSERVE_PORT": "9001"}).port == 7000


def test_bad_environment_values_are_reported_with_the_variable_or_flag():
    with pytest.raises(SystemExit, match="LLMSERVE_ENFORCE_EAGER: expected true or false"):
        parse([], {"LLMSERVE_ENFORCE_EAGER": "maybe"})
    with pytest.raises(SystemExit):
        parse([], {"LLMSERVE_PORT": "not-a-port"})


def test_the_server_runs_on_uvloop_unless_asked_for_asyncio():
    assert ServerConfig.from_args(parse([], {})).event_loop == "uvloop"
    assert ServerConfig.from_args(parse([], {"LLMSERVE_EVENT_LOOP": "asyncio"})).event_loop \
        == "asyncio"
    with pytest.raises(SystemExit):
        parse(["--event-loop", "trio"], {})


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_event_loop_run_uses_the_named_loop(name):
    async def loop_kind() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(loop_kind(), name).split(".")[0] == name


def test_event_loop_run_refuses_an_unknown_loop():
    coroutine = asyncio.sleep(0)
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        event_loop.run(coroutine, "trio")
    coroutine.close()
