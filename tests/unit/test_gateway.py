"""Gateway rendering: upstream with drain marks (and its parse), key includes, the server block
(keys never in it), plan-time key checks."""

from __future__ import annotations

import re

import jinja2
import pytest

from tasks import gateway as gw
from tasks.spec import SpecError

OPTS = gw.options({})
REPLICAS = [gw.Replica("h1", "10.0.0.1", 8000), gw.Replica("h2", "10.0.0.2", 8001)]


def test_upstream_marks_drained_replicas_and_parses_back():
    text = gw.upstream_conf("qwen-30b.x", REPLICAS, {"h2"}, OPTS)
    assert "upstream llmfleet_qwen_30b_x {" in text
    assert "server 10.0.0.1:8000 max_fails=3 fail_timeout=5s;  # h1" in text
    assert "server 10.0.0.2:8001 max_fails=3 fail_timeout=5s down;  # h2" in text
    assert "keepalive" not in text  # default: a connection per request
    assert gw.parse_upstream(text) == {"h1": False, "h2": True}
    with_keepalive = gw.upstream_conf("m", REPLICAS, set(), OPTS.model_copy(update={"gateway_keepalive": 8}))
    assert "keepalive 8;" in with_keepalive and "keepalive_timeout 4s;" in with_keepalive


def test_bad_upstream_address_is_refused():
    with pytest.raises(SpecError, match="gateway_upstream_address"):
        gw.upstream_conf("m", [gw.Replica("h1", "10.0.0.1; evil", 8000)], set(), OPTS)


def test_keys_from_secret_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# clients\nsk-alpha-123456\n\nsk-beta-654321\n")
    path.chmod(0o600)
    keys = gw.read_keys(path, "gateway_api_keys_secret")
    assert gw.keys_conf(keys) == '"Bearer sk-alpha-123456" 1;\n"Bearer sk-beta-654321" 1;\n'
    assert gw.backend_conf("sk-alpha-123456") == 'proxy_set_header Authorization "Bearer sk-alpha-123456";\n'
    path.write_text('sk-bad"key-123\n')
    with pytest.raises(SpecError) as err:
        gw.read_keys(path, "gateway_api_keys_secret")
    assert 'sk-bad"key' not in str(err.value)  # the message never shows a key


def _render(**kw) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = env.from_string(gw.TEMPLATE.read_text())
    p = gw.paths("qwen30b", OPTS)
    args = dict(name_="qwen30b", served_model_name="coder", var="qwen30b", listen_port=8000,
                upstream_file=p["upstream"], keys_file=p["keys"], backend_file=p["backend"], open_=False,
                backend=True, client_max_body_size="64m", next_upstream_tries=3, connect_timeout_s=5,
                read_timeout_s=900, keepalive=False, upstream_log=p["log"], session_var="")
    args.update(kw)
    return template.render(**args)


def test_server_block_checks_keys_from_includes_only():
    text = _render()
    assert "include /etc/nginx/llmfleet/qwen30b.keys;" in text
    assert "include /etc/nginx/llmfleet/qwen30b.backend;" in text
    assert "include /etc/nginx/llmfleet/qwen30b.upstream.conf;" in text
    assert re.search(r"map \$http_authorization \$llmfleet_qwen30b_key_ok \{\s+default 0;", text)
    assert "listen 8000;" in text and "return 401" in text and "proxy_buffering off;" in text
    assert "Bearer" not in text.replace("Authorization: Bearer <key>", "")
    assert 'proxy_set_header Connection "close";' in text
    opened = _render(open_=True, backend=False)
    assert "default 1;" in opened and ".keys" not in opened.split("include")[1] and ".backend;" not in opened


def test_plan_time_key_check_names_the_missing_file(tmp_path):
    model = gw.GatewayModel("m", "m", 8000, tuple(REPLICAS), "missing_key")
    with pytest.raises(SpecError, match="api_key_secret.*missing_key does not exist"):
        gw.check_keys(model, {"secrets_dir": str(tmp_path)})
    (tmp_path / "k").write_text("sk-0123456789\n")
    (tmp_path / "k").chmod(0o600)
    gw.check_keys(gw.GatewayModel("m", "m", 8000, (), "k"), {"secrets_dir": str(tmp_path)})
    with pytest.raises(SpecError, match="gateway_api_keys_secret.*clients does not exist"):
        gw.check_keys(gw.GatewayModel("m", "m", 8000, (), "k"),
                      {"secrets_dir": str(tmp_path), "gateway_api_keys_secret": "clients"})


def test_reload_script_restores_the_file_when_nginx_refuses_it():
    script = gw._reload_script("/etc/nginx/llmfleet/m.upstream.conf", "/tmp/new", 10)
    assert "nginx -t -q" in script and "mv -f /etc/nginx/llmfleet/m.upstream.conf.llmfleet-prev" in script
    assert "pgrep -f '^nginx: worker'" in script and "-gt 50" in script


def test_session_routing_hashes_the_header_and_balances_the_rest_by_requests_in_flight():
    text = gw.upstream_conf("qwen-30b.x", REPLICAS, {"h2"}, OPTS)
    blocks = re.findall(r"upstream (\S+) \{\n(.*?)\n\}", text, re.S)
    assert [name for name, _ in blocks] == ["llmfleet_qwen_30b_x", "llmfleet_qwen_30b_x_session"]
    least, ring = blocks[0][1].splitlines(), blocks[1][1].splitlines()
    assert least[:2] == ["    least_conn;", "    zone llmfleet_qwen_30b_x 256k;"]
    assert ring[:2] == ["    hash $http_x_session_id consistent;", "    zone llmfleet_qwen_30b_x_session 256k;"]
    assert least[2:] == ring[2:] and len(least[2:]) == 2  # the same servers, the drain marks on both
    server = _render(session_var="$http_x_session_id")
    assert re.search(r'map \$http_x_session_id \$llmfleet_qwen30b_pool \{\s+"" llmfleet_qwen30b;\s+'
                     r'default llmfleet_qwen30b_session;', server)
    assert "proxy_pass http://$llmfleet_qwen30b_pool;" in server
    assert "location = /health {\n        proxy_pass http://llmfleet_qwen30b;" in server


@pytest.mark.parametrize("routing,method", [("least_conn", "least_conn;"), ("round_robin", None)])
def test_other_routings_have_one_group(routing, method):
    opts = OPTS.model_copy(update={"gateway_routing": routing, "gateway_session_header": "X-Conversation"})
    text = gw.upstream_conf("m", REPLICAS, set(), opts)
    assert text.count("upstream ") == 1 and "hash " not in text
    assert ("least_conn;" in text) == (method is not None)
    server = _render()
    assert "map $http_" not in server.replace("map $http_authorization", "")
    assert "proxy_pass http://llmfleet_qwen30b;" in server
    assert gw.session_var("X-Conversation") == "$http_x_conversation"


def test_a_changed_routing_rewrites_the_upstream_even_with_the_same_drain_marks():
    session = gw.upstream_conf("m", REPLICAS, {"h1"}, OPTS)
    rr = gw.upstream_conf("m", REPLICAS, {"h1"}, OPTS.model_copy(update={"gateway_routing": "round_robin"}))
    assert session != rr and gw.parse_upstream(session) == gw.parse_upstream(rr) == {"h1": True, "h2": False}
    assert gw.UpstreamFile().process(["present", *session.splitlines()]) == session


def test_upstream_log_names_every_replica_tried():
    server = _render(session_var="")
    fmt = re.search(r"log_format llmfleet_qwen30b_upstreams escape=none '(.*)';", server).group(1)
    assert fmt == 'model=qwen30b replicas="$upstream_addr" statuses="$upstream_status" status=$status'
    assert "access_log /var/log/nginx/llmfleet-qwen30b.upstreams.log llmfleet_qwen30b_upstreams;" in server
