"""Entry point: ``python -m stepentropy_rl.main +experiment=prune_sweep``.

Validates the config, resolves the model (bootstrapping the tiny reasoner if no path is set), starts Ray and runs
the chosen pipeline. Works under Hydra multirun (one Ray session per job).
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from stepentropy_rl.config import ConfigError, validate

log = logging.getLogger("stepentropy_rl")


@hydra.main(version_base=None, config_path="pkg://stepentropy_rl.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.log_level)
    try:
        validate(cfg)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    from stepentropy_rl.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
