"""The admission webhook's settings: its HTTPS listener, its TLS, and what it injects.

Part of the extender's ``Settings`` (``webhook``; None unless ``--webhook-port`` is given).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from locality.settings import ConfigError, Setting, Values, add_settings
from scheduler_extender.injection import MODES, Install

DEFAULT_WEBHOOK_PORT = 8473
_INSTALL = Install()

# Each setting once: flag, variable, default, help.
WEBHOOK_PORT: Setting[int | None] = Setting(
    "--webhook-port",
    f"HTTPS port of POST /mutate, e.g. {DEFAULT_WEBHOOK_PORT}",
    "MODEL_LOCALITY_WEBHOOK_PORT",
    None,
    int,
)
INJECTION_MODE: Setting[str] = Setting(
    "--injection-mode",
    "scheduler (set schedulerName) | affinity (node affinity on the model labels, for "
    "clusters without a second scheduler)",
    "MODEL_LOCALITY_INJECTION_MODE",
    _INSTALL.mode,
    lambda text: text.strip().lower(),
)
AGENT_IMAGE = Setting(
    "--agent-image",
    "image of the injected wait container",
    "MODEL_LOCALITY_AGENT_IMAGE",
    _INSTALL.agent_image,
)
AGENT_PORT = Setting("--agent-port", "the agents' hostPort", None, _INSTALL.agent_port, int)
CACHE_DIR = Setting("--cache-dir", "the agents' cache directory on the host", None, _INSTALL.cache_dir)
SCHEDULER_NAME = Setting(
    "--scheduler-name", "schedulerName set in scheduler mode", None, _INSTALL.scheduler_name
)
NAMESPACE = Setting("--namespace", "namespace of the TLS Secret", "POD_NAMESPACE", "model-locality")
CONFIGURATION = Setting(
    "--webhook-configuration", "MutatingWebhookConfiguration to keep the caBundle of", None, "model-locality"
)
SECRET = Setting(
    "--webhook-secret", "Secret holding the webhook CA and certificate", None, "model-locality-webhook-tls"
)
HOSTS: Setting[tuple[str, ...] | None] = Setting(
    "--webhook-hosts",
    "comma-separated DNS names/IPs of the serving certificate",
    None,
    None,
    lambda text: tuple(h.strip() for h in text.split(",")),
    shown="model-locality-extender.<namespace>.svc",
)
CERT_DIR: Setting[str | None] = Setting(
    "--webhook-cert-dir",
    "serve tls.crt/tls.key from this directory (cert-manager)",
    "MODEL_LOCALITY_WEBHOOK_CERT_DIR",
)
WEBHOOK_SETTINGS = (
    WEBHOOK_PORT,
    INJECTION_MODE,
    AGENT_IMAGE,
    AGENT_PORT,
    CACHE_DIR,
    SCHEDULER_NAME,
    NAMESPACE,
    CONFIGURATION,
    SECRET,
    HOSTS,
    CERT_DIR,
)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Listener, TLS Secret and webhook configuration names, and the injection's ``Install``."""

    port: int = DEFAULT_WEBHOOK_PORT
    install: Install = field(default_factory=Install)
    namespace: str = NAMESPACE.default  # of the TLS Secret: the extender's own namespace
    configuration: str = CONFIGURATION.default  # the MutatingWebhookConfiguration whose caBundle we keep
    secret: str = SECRET.default
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
    add_settings(hook, WEBHOOK_SETTINGS)


def webhook_settings(values: Values) -> WebhookSettings | None:
    """The webhook's settings, or None without ``--webhook-port``; ``ConfigError`` on junk."""
    port = values.get(WEBHOOK_PORT)
    if port is None:
        return None
    namespace, hosts = values.get(NAMESPACE), values.get(HOSTS)
    install = Install(
        mode=values.get(INJECTION_MODE),  # type: ignore[arg-type]  # checked by validate()
        agent_image=values.get(AGENT_IMAGE),
        agent_port=values.get(AGENT_PORT),
        cache_dir=values.get(CACHE_DIR),
        scheduler_name=values.get(SCHEDULER_NAME),
    )
    return WebhookSettings(
        port=port,
        install=install,
        namespace=namespace,
        configuration=values.get(CONFIGURATION),
        secret=values.get(SECRET),
        hosts=hosts or (f"model-locality-extender.{namespace}.svc",),
        cert_dir=values.get(CERT_DIR),
    ).validate()
