"""Entry point: `fm-operator` / `python -m fmop`."""

from __future__ import annotations

import sys

import kopf

from fmop import handlers
from fmop.config import Config, from_args


def run(cfg: Config) -> None:
    kopf.configure(
        verbose=cfg.verbose,
        log_format={"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}[cfg.log_format],
    )
    handlers.register(cfg)
    memo = kopf.Memo()
    memo["config"] = cfg
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate); no peering CRDs needed
        clusterwide=cfg.clusterwide,
        namespaces=list(cfg.namespaces),
        memo=memo,
        liveness_endpoint=f"http://{cfg.bind_address}:{cfg.health_port}/healthz" if cfg.health_port else None,
    )


def main(argv: list[str] | None = None) -> int:
    run(from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
