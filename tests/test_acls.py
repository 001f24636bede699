"""The ACLs altlas asks for follow its settings, and docs/operations.md lists exactly them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from altlas.orchestration.app.acls import Acl, kafka_acls_commands, reply_prefixes, required_acls
from altlas.orchestration.app.settings import load_settings

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def _rules(acls: list[Acl]) -> set[tuple[str, str, str, str]]:
    return {(a.resource, a.name, a.pattern, a.operation) for a in acls}


def test_default_settings_need_read_on_inputs_write_on_outputs_and_nothing_else() -> None:
    rules = _rules(required_acls(load_settings(instance_id="altlas-0")))
    reads = {(r, n) for r, n, _, op in rules if op == "read"}
    writes = {(r, n, p) for r, n, p, op in rules if op == "write"}
    assert reads == {
        ("topic", "ai.requests.text"),
        ("topic", "ai.requests.vision"),
        ("topic", "ai.requests.audio"),
        ("topic", "ai.models.commands"),
        ("group", "altlas.text"),
        ("group", "altlas.vision"),
        ("group", "altlas.audio"),
    }
    assert writes == {
        ("topic", "ai.results.text", "literal"),
        ("topic", "ai.results.vision", "literal"),
        ("topic", "ai.results.audio", "literal"),
        ("topic", "ai.models.status", "literal"),
        ("topic", "ai.deadletter", "literal"),
        ("topic", "ai.results.", "prefixed"),  # the reply-topic family
    }
    assert ("topic", "ai.models.commands", "literal", "write") not in rules  # altlas never commands


def test_exactly_once_adds_its_transactional_id_prefix_and_names_follow_the_settings() -> None:
    settings = load_settings(
        delivery="exactly_once",
        instance_id="altlas-0",
        modalities=["vision"],
        kafka={"group_id": "team-a", "transactional_id": "team-a-7"},
        topics={"vision_requests": "in.v", "reply_topics": [r"team\.a\.replies\..*", "x|y"]},
    )
    rules = _rules(required_acls(settings))
    assert ("transactional-id", "team-a-7.", "prefixed", "write") in rules
    assert ("group", "team-a.vision", "literal", "read") in rules
    assert ("topic", "in.v", "literal", "read") in rules
    assert not any(name.startswith(("ai.requests.text", "altlas.")) for _, name, _, _ in rules)
    assert reply_prefixes(settings) == (["team.a.replies."], ["x|y"])  # no prefix: granted per topic


def test_kafka_acls_commands_are_runnable_lines() -> None:
    settings = load_settings(instance_id="altlas-0", modalities=["text"])
    lines = kafka_acls_commands(settings, "User:altlas", bootstrap="kafka:9092")
    assert len(lines) == len(required_acls(settings))
    prefixed = [shlex.split(line) for line in lines if "prefixed" in line]
    assert prefixed == [
        [
            "kafka-acls.sh",
            "--bootstrap-server",
            "kafka:9092",
            "--command-config",
            "admin.properties",
            "--add",
            "--allow-principal",
            "User:altlas",
            "--operation",
            "Write",
            "--topic",
            "ai.results.",
            "--resource-pattern-type",
            "prefixed",
        ]
    ]


def test_operations_lists_exactly_the_acls_altlas_needs() -> None:
    section = OPERATIONS.read_text().split("### Kafka ACLs", 1)[1].split("\n#", 1)[0]
    rows = re.findall(
        r"^\| (topic|group|transactional-id) \| `([^`]+)` \| (literal|prefixed) \| (\w+) \|", section, re.M
    )
    documented = {(r, n, p, op.lower()) for r, n, p, op in rows}
    settings = load_settings(delivery="exactly_once", kafka={"transactional_id": "<prefix>"})
    assert documented == _rules(required_acls(settings))


def test_altlas_acls_prints_the_commands_for_the_settings_it_is_given() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env |= {"ALTLAS_MODALITIES": '["audio"]', "ALTLAS_KAFKA__GROUP_ID": "ops-a"}
    done = subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", "acls", "--principal", "User:svc-altlas"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines == kafka_acls_commands(
        load_settings(modalities=["audio"], kafka={"group_id": "ops-a"}),
        "User:svc-altlas",
        bootstrap="127.0.0.1:9092",  # the default kafka.bootstrap_servers
    )
    assert any("--group ops-a.audio" in line for line in lines)
