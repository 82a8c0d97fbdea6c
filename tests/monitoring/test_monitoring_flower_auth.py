"""Flower is never open: how `conveyor flower` builds Flower's command and when it refuses."""

from __future__ import annotations

import pytest

from jobs.errors import InvalidInput
from tests.conftest import free_port
from tests.monitoring.support import Http, flush_redis, stack_settings, start_flower
from worker.flower import FlowerAuthRequired, describe, flower_command


def test_credentials_travel_in_the_environment_not_the_command_line(make_settings, tmp_path):
    s = make_settings(flower_user="admin", flower_password="pa:ss word", flower_port=6001,
                      flower_url_prefix="/ops/flower/", flower_db=tmp_path / "f.db",
                      flower_max_tasks=500, flower_purge_offline_workers=600,
                      flower_cookie_secret="cookie-secret")
    cmd = flower_command(s, base_env={"PATH": "/bin", "FLOWER_UNAUTHENTICATED_API": "true",
                                      "FLOWER_BASIC_AUTH": "other:creds", "FLOWER_GITHUB_OAUTH_DOMAIN": "gh"})
    joined = " ".join(cmd.argv)
    assert "pa:ss word" not in joined and "admin" not in joined and "cookie-secret" not in joined
    assert cmd.env["FLOWER_BASIC_AUTH"] == "admin:pa:ss word"
    assert cmd.env["FLOWER_COOKIE_SECRET"] == "cookie-secret"
    # inherited Flower options are dropped (settings decide); provider settings stay
    assert "FLOWER_UNAUTHENTICATED_API" not in cmd.env and cmd.env["FLOWER_GITHUB_OAUTH_DOMAIN"] == "gh"
    assert cmd.argv[1:6] == ["-m", "celery", "-A", "worker.app", "flower"]
    for arg in ("--port=6001", "--address=127.0.0.1", "--max_tasks=500", "--persistent=True",
                f"--db={tmp_path / 'f.db'}", "--purge_offline_workers=600", "--url_prefix=ops/flower"):
        assert arg in cmd.argv
    assert cmd.url == "http://127.0.0.1:6001/ops/flower/"
    assert cmd.health_url == "http://127.0.0.1:6001/ops/flower/healthcheck"
    assert cmd.auth == "basic" and "user admin" in describe(cmd) and "pa:ss" not in describe(cmd)


def test_no_credentials_refuses(make_settings):
    with pytest.raises(FlowerAuthRequired, match="CONVEYOR_FLOWER_USER"):
        flower_command(make_settings())
    with pytest.raises(FlowerAuthRequired, match="loopback"):
        flower_command(make_settings(flower_address="0.0.0.0"), insecure_local=True)
    open_local = flower_command(make_settings(), insecure_local=True)
    assert open_local.auth == "none" and "FLOWER_BASIC_AUTH" not in open_local.env
    assert "NO AUTHENTICATION" in describe(open_local)


@pytest.mark.parametrize("overrides, message", [
    ({"flower_user": "admin"}, "both"),
    ({"flower_password": "x"}, "both"),
    ({"flower_user": "ad:min", "flower_password": "x"}, "':'"),
    ({"flower_user": "admin", "flower_password": "a,b"}, "','"),
    ({"flower_auth": ".*@example.com"}, "OAUTH2_KEY"),
])
def test_bad_credentials_are_refused_with_a_reason(make_settings, overrides, message):
    with pytest.raises(InvalidInput, match=message):
        flower_command(make_settings(**overrides))


def test_oauth_options_pass_through(make_settings):
    s = make_settings(flower_auth=r".*@example\.com", flower_oauth2_key="client-id",
                      flower_oauth2_secret="client-secret",
                      flower_auth_provider="flower.views.auth.GithubLoginHandler",
                      flower_oauth2_redirect_uri="https://ops.example.com/login")
    cmd = flower_command(s, base_env={})
    assert r"--auth=.*@example\.com" in cmd.argv and "--oauth2_key=client-id" in cmd.argv
    assert "--auth_provider=flower.views.auth.GithubLoginHandler" in cmd.argv
    assert "--oauth2_redirect_uri=https://ops.example.com/login" in cmd.argv
    assert "client-secret" not in " ".join(cmd.argv) and cmd.env["FLOWER_OAUTH2_SECRET"] == "client-secret"
    assert cmd.auth == "oauth"
    # Flower's own auth options given on the command line count as credentials too
    assert flower_command(make_settings(), extra_args=["--auth=.*@x.org"]).auth == "passed through"


def test_up_generates_a_password_rather_than_run_open(make_settings):
    cmd = flower_command(make_settings(), generate_password=True, base_env={})
    assert cmd.user == "conveyor" and len(cmd.generated_password or "") >= 20
    assert cmd.env["FLOWER_BASIC_AUTH"] == f"conveyor:{cmd.generated_password}"
    assert cmd.generated_password not in " ".join(cmd.argv)
    configured = flower_command(make_settings(flower_user="a", flower_password="b"), generate_password=True)
    assert configured.generated_password is None and configured.user == "a"


def test_the_command_refuses_without_credentials(run_cli, make_settings):
    result = run_cli(make_settings(), "flower")
    assert result.returncode == 2
    assert "will not start without authentication" in result.stderr and "--insecure-local" in result.stderr
    result = run_cli(make_settings(), "flower", "--insecure-local", "--address", "0.0.0.0")
    assert result.returncode == 2 and "loopback" in result.stderr


def test_a_port_in_use_is_reported_before_anything_starts(run_cli, make_settings):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(flower_user="a", flower_password="b", flower_port=port)
        for args in (["flower"], ["up", "--no-migrate"]):
            result = run_cli(settings, *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert f"Flower cannot listen on 127.0.0.1:{port}" in result.stderr


def test_insecure_local_opens_the_dashboard_but_not_the_api(redis_url, tmp_path, sqlite_url):
    flush_redis()
    settings = stack_settings(tmp_path, sqlite_url, flower_user=None, flower_password=None,
                              flower_port=free_port())
    flower = start_flower(settings, tmp_path / "flower.log", insecure_local=True)
    try:
        http = Http(flower.http.base, user=None, password=None)
        assert http.request("")[0] == 200  # the dashboard, on 127.0.0.1 only
        assert http.request("api/workers")[0] == 401  # Flower keeps its API closed without auth
        assert "--address=127.0.0.1" in flower.cmdline
        assert "NO AUTHENTICATION" in flower.output()
    finally:
        flower.stop()
