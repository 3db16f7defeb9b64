"""Entry point: ``python -m stepentropy_rl.main +experiment=prune_sweep``.

Builds the typed config (every key checked), then the driver resolves the model (bootstrapping the tiny reasoner if no
path is set), starts Ray and runs the registered pipeline. Works under Hydra multirun (one Ray session per job).
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from stepentropy_rl.config import ConfigError, build

log = logging.getLogger("stepentropy_rl")


@hydra.main(version_base=None, config_path="pkg://stepentropy_rl.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.log_level)
    from stepentropy_rl.driver.run import pipeline_for, run

    try:
        job = build(cfg)  # the typed config, every key checked, before anything starts
        pipeline_for(job)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    run(job)


if __name__ == "__main__":
    main()
