"""Client settings shared by every consumer, producer and admin client altlas makes."""

from __future__ import annotations

import ssl
from typing import Any

from altlas.orchestration.app.settings import KafkaSettings


def client_kwargs(kafka: KafkaSettings, *, client_suffix: str = "") -> dict[str, Any]:
    """aiokafka keyword arguments for bootstrap, identity and security (SASL/SSL)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}{'-' + client_suffix if client_suffix else ''}",
        "security_protocol": kafka.security_protocol,
        # On a cluster, leaders move: a leader error refreshes metadata at once, and the periodic
        # refresh finds brokers and leaders that came back without an error to announce them.
        "metadata_max_age_ms": kafka.metadata_max_age_ms,
        "retry_backoff_ms": kafka.retry_backoff_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile:
            context.load_cert_chain(
                str(kafka.ssl_certfile),
                str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                kafka.ssl_password.get_secret_value() if kafka.ssl_password else None,
            )
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return kwargs
