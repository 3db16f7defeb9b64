"""The names verl 0.9.1's registries accept, known without importing verl (8 s on 2 cores, most of the driver's
time before Ray starts). Config validation reads these; ``tests/unit/test_algorithms.py`` checks them against the
live registries, so a verl upgrade that changes one fails there, not in a run."""
from __future__ import annotations

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# verl's kl_penalty estimators; a trailing "+" takes the k2 gradient with the estimator's value (straight-through)
KL_TYPES = tuple(k + plus for k in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3") for plus in ("", "+"))
ABSOLUTE = "absolute"  # ours (algorithms.compute_absolute_advantage), registered in verl's registry on import
ADV_ESTIMATORS = (ABSOLUTE, "gae", "gdpo", "gpg", "grpo", "grpo_passk", "grpo_vectorized", "opo",
                  "optimal_token_baseline", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "rloo",
                  "rloo_vectorized", "tir_optimal_token_baseline")

# Registered in verl but needing what this trainer does not compute: refused at config time rather than failing at the
# first GRPO step (a missing argument). gdpo gets the reward's terms (algorithms.gdpo_advantages).
NEEDS_MORE = {
    "gae": "critic values (there is no critic)",
    "remax": "the rewards of a greedy rollout per prompt",
    "optimal_token_baseline": "the policy's sum of squared token probabilities",
    "tir_optimal_token_baseline": "the policy's sum of squared token probabilities",
}


def is_estimator(name) -> bool:
    """Whether ``compute_advantages`` accepts ``name``: the names above without importing verl; any other name is
    looked up in verl's live registry (an estimator registered by the user's own code)."""
    if name in ADV_ESTIMATORS:
        return True
    from stepentropy_rl.algorithms import known_estimators

    return name in known_estimators()
