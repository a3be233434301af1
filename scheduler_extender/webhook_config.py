"""The admission webhook's settings: its HTTPS listener, its TLS, and what it injects.

Part of the extender's ``Settings`` (``webhook``; None unless ``--webhook-port`` is given).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from locality.settings import ConfigError, FlagOrEnv
from scheduler_extender.injection import MODES, Install

DEFAULT_WEBHOOK_PORT = 8473


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Listener, TLS Secret and webhook configuration names, and the injection's ``Install``."""

    port: int = DEFAULT_WEBHOOK_PORT
    install: Install = field(default_factory=Install)
    namespace: str = "model-locality"  # of the TLS Secret: the extender's own namespace
    configuration: str = "model-locality"  # the MutatingWebhookConfiguration whose caBundle we keep
    secret: str = "model-locality-webhook-tls"
    hosts: tuple[str, ...] = ("model-locality-extender.model-locality.svc",)
    cert_dir: str | None = None  # tls.crt/tls.key from elsewhere (cert-manager): no Secret, no caBundle

    def validate(self) -> WebhookSettings:
        if not 0 < self.port < 65536 or not 0 < self.install.agent_port < 65536:
            raise ConfigError("webhook and agent ports must be between 1 and 65535")
        if self.install.mode not in MODES:
            raise ConfigError(
                f"--injection-mode must be one of {', '.join(MODES)}, not {self.install.mode!r}"
            )
        if not self.install.cache_dir.startswith("/"):
            raise ConfigError(f"--cache-dir must be an absolute path, not {self.install.cache_dir!r}")
        if not self.hosts or not all(self.hosts):
            raise ConfigError("--webhook-hosts needs at least one host name")
        return self


def add_webhook_args(parser: argparse.ArgumentParser) -> None:
    hook = parser.add_argument_group("admission webhook (off unless --webhook-port is given)")
    hook.add_argument(
        "--webhook-port",
        type=int,
        help=f"HTTPS port of POST /mutate, e.g. {DEFAULT_WEBHOOK_PORT} (env MODEL_LOCALITY_WEBHOOK_PORT)",
    )
    hook.add_argument(
        "--injection-mode",
        help="scheduler (set schedulerName) | affinity (node affinity on the model labels, for "
        "clusters without a second scheduler) (env MODEL_LOCALITY_INJECTION_MODE, default scheduler)",
    )
    hook.add_argument(
        "--agent-image", help="image of the injected wait container (env MODEL_LOCALITY_AGENT_IMAGE)"
    )
    hook.add_argument("--agent-port", type=int, help="the agents' hostPort (default 8470)")
    hook.add_argument(
        "--cache-dir", help="the agents' cache directory on the host (default /var/lib/model-locality)"
    )
    hook.add_argument(
        "--scheduler-name", help="schedulerName set in scheduler mode (default model-locality-scheduler)"
    )
    hook.add_argument(
        "--namespace", help="namespace of the TLS Secret (env POD_NAMESPACE, default model-locality)"
    )
    hook.add_argument("--webhook-configuration", help="MutatingWebhookConfiguration to keep the caBundle of")
    hook.add_argument("--webhook-secret", help="Secret holding the webhook CA and certificate")
    hook.add_argument("--webhook-hosts", help="comma-separated DNS names/IPs of the serving certificate")
    hook.add_argument("--webhook-cert-dir", help="serve tls.crt/tls.key from this directory (cert-manager)")


def webhook_settings(pick: FlagOrEnv) -> WebhookSettings | None:
    """The webhook's settings, or None without ``--webhook-port``; ``ConfigError`` on junk."""
    if not pick("webhook_port", "MODEL_LOCALITY_WEBHOOK_PORT"):
        return None
    d, i = WebhookSettings(), Install()
    namespace = pick("namespace", "POD_NAMESPACE") or d.namespace
    mode = (pick("injection_mode", "MODEL_LOCALITY_INJECTION_MODE") or i.mode).strip().lower()
    install = Install(
        mode=mode,  # type: ignore[arg-type]  # checked by validate()
        agent_image=pick("agent_image", "MODEL_LOCALITY_AGENT_IMAGE") or i.agent_image,
        agent_port=pick.as_int("agent_port", None, default=i.agent_port),
        cache_dir=pick("cache_dir", None) or i.cache_dir,
        scheduler_name=pick("scheduler_name", None) or i.scheduler_name,
    )
    hosts = pick("webhook_hosts", None)
    return WebhookSettings(
        port=pick.as_int("webhook_port", "MODEL_LOCALITY_WEBHOOK_PORT", default=d.port),
        install=install,
        namespace=namespace,
        configuration=pick("webhook_configuration", None) or d.configuration,
        secret=pick("webhook_secret", None) or d.secret,
        hosts=tuple(h.strip() for h in hosts.split(","))
        if hosts
        else (f"model-locality-extender.{namespace}.svc",),
        cert_dir=pick("webhook_cert_dir", "MODEL_LOCALITY_WEBHOOK_CERT_DIR"),
    ).validate()
