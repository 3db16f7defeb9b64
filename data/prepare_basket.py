"""The embedded basket task's splits frozen to files, with the gold solutions and their step labels.

    python data/prepare_basket.py                    # data/basket_verbose_{train,test}.{jsonl,parquet}, the default
    python data/prepare_basket.py --data basket      # data/basket_{train,test}.*, the terse variant

The problems are those the pipeline generates itself with the same seed (``data.seed``), so a run on
``data.path=data/basket_verbose_test.jsonl data.train_path=data/basket_verbose_train.jsonl`` sees the same problems as one on the
generated task; other tools can read them (verl's Parquet, with the step labels in ``extra_info.steps``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import HERE, run, write_splits

from stepentropy_rl.config import build
from stepentropy_rl.data import generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("basket", "basket_verbose"), default="basket_verbose",
                    help="the conf/data config whose task to freeze")
    ap.add_argument("--n-train", type=int, default=None, help="default: trainer.n_train, what a run trains on")
    ap.add_argument("--n-test", type=int, default=None, help="default: data.n_eval, what a run evaluates")
    ap.add_argument("--seed", type=int, default=0, help="data.seed")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    from hydra import compose, initialize_config_module

    with initialize_config_module("stepentropy_rl.conf", version_base=None):
        cfg = compose("config", overrides=[f"data={args.data}", "run_dir=unused"])
    job = build(cfg, check_paths=False)
    n_train = job.trainer.n_train if args.n_train is None else args.n_train
    n_test = job.data.n_eval if args.n_test is None else args.n_test
    write_splits(args.out, args.data, {"train": generated(job.data.task, n_train, args.seed, "train"),
                                       "test": generated(job.data.task, n_test, args.seed, "test")},
                 f"stepentropy_rl/{args.data}")


if __name__ == "__main__":
    run(main)
