"""Entry point: ``python -m stepentropy_rl.main +experiment=prune_sweep``.

Builds the typed config (every key checked), then the driver resolves the model (bootstrapping the tiny reasoner if no
path is set), starts Ray and runs the registered pipeline. Works under Hydra multirun (one Ray session per job).
"""
from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

from stepentropy_rl.config import ConfigError, build
from stepentropy_rl.data import DataError

log = logging.getLogger("stepentropy_rl")


@hydra.main(version_base=None, config_path="pkg://stepentropy_rl.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.log_level)
    launch(cfg)


def launch(cfg: DictConfig) -> None:
    """Run the composed config; a user error (bad config value, bad data row) exits with one line naming it."""
    from stepentropy_rl.driver.remote import ActorLost
    from stepentropy_rl.driver.run import pipeline_for, run

    try:
        job = build(cfg)  # the typed config, every key checked, before anything starts
        pipeline_for(job)
        run(job)  # data files and context budgets are checked before any actor starts or any stage runs
    except (ConfigError, DataError, ActorLost) as e:
        if os.environ.get("STEPENTROPY_TRACEBACK"):
            raise
        kind = {ConfigError: "config error", DataError: "data error"}.get(type(e), "run stopped")
        raise SystemExit(f"{kind}: {e} (STEPENTROPY_TRACEBACK=1 shows where)") from None


if __name__ == "__main__":
    main()
