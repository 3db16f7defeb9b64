import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import ConfigError, build

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x", *overrides])


def test_default_sweep_builds_the_typed_config():
    from stepentropy_rl.config import JobConfig, LearnerCluster

    job = build(cfg())
    assert isinstance(job, JobConfig) and isinstance(job.cluster.learner, LearnerCluster)
    assert job.pruning.strategy == ["low", "high", "random"] and job.pipeline == "prune_study"
    assert job.algorithm.ppo_mini_batch_size == job.algorithm.prompts_per_step  # null: one step per batch
    assert job.data.task.ops == ("add",) and isinstance(job.trainer.optim.betas, tuple)


@pytest.mark.parametrize("override,key", [
    ("pruning.ratio=1.5", "pruning.ratio"),
    ("pruning.ratio=-0.1", "pruning.ratio"),
    ("pruning.strategy=medium", "pruning.strategy"),
    ("model.path=/no/such/model", "model.path"),
    ("data.path=/no/such.jsonl", "data.path"),
    ("pruning.aggregate=max", "pruning.aggregate"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("algorithm.top_p=0.95", "algorithm.top_p must be 1, got 0.95: the learners and the reference score"),
    ("data.task.redundancy=2", "data.task.redundancy must be in [0, 1), got 2.0"),
    ("model.tiny.lr=-1", "model.tiny.lr must be a finite number > 0, got -1.0"),
    ("data.grader=fuzzy", "data.grader"),
    ("data.grade_timeout_s=0", "data.grade_timeout_s"),
    ("data.grade_workers=0", "data.grade_workers"),
    ("trainer.prune.merge_runs=maybe", "merge_runs"),
    ("+trainer.grpo.kill_at_step.driver=1", "trainer.grpo.kill_at_step roles must be among"),
    ("cluster.reward.max_restarts=-1", "cluster.reward.max_restarts"),
    ("+data.chat_template_kwargs.enable_thinking=false", "data.chat_template_kwargs.enable_thinking is false"),
    # a learner's device follows its backend: gloo on GPUs trained on the CPU holding them, nccl without a GPU failed
    ("cluster.learner.backend=nccl", "cluster.learner.backend must be nccl with GPUs (num_gpus > 0) and gloo without"),
    ("cluster.learner.num_gpus=1", "cluster.learner.backend must be nccl with GPUs (num_gpus > 0) and gloo without"),
    ("cluster.num_cpus=0", "cluster.num_cpus must be null (every core) or an integer >= 1, got 0"),
    ("pruning.ratio=[]", "pruning.ratio must be a value or a non-empty list"),  # a study of nothing, reported empty
    # a value listed twice ran each cell twice: n doubled, its standard error too small by sqrt(2)
    ("pruning.ratio=[0.8,0.8]", "pruning.ratio lists a value twice"), ("pruning.ratio=[0,0.0]", "pruning.ratio lists"),
    ("pruning.strategy=[low,low]", "pruning.strategy lists a value twice"),
    ("log_level=debug", "log_level must be one of"),  # was a traceback from logging before the config was checked
    # an unset shell variable (data.path=$F): '' passed as the current folder, then read as unset, a traceback later
    ("data.path=", "data.path is empty"), ("data.train_path=", "data.train_path is empty"),
    ("model.path=", "model.path is empty"),
    ("algorithm.clip_ratio_low=1.5", "algorithm.clip_ratio_low must be < 1"),  # PPO's lower clip silently off
])
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build(cfg(override))


@pytest.mark.parametrize("overrides,message", [
    (["model.tiny.pruned_reading=2"], "model.tiny.pruned_reading must be in [0, 1), got 2.0"),
    (["model.tiny.hidden_size=128", "model.tiny.num_heads=6"],
     "model.tiny.hidden_size (128) must be a multiple of num_heads (6)"),
    (["model.tiny.hidden_size=100"],  # num_heads null: the verbose recipe's 6, known only once the recipe is applied
     "model.tiny.hidden_size (100) must be a multiple of num_heads (6); num_heads is null: the verbose recipe's 6"),
    (["model.tiny.warmup_steps=2000"],  # past the recipe's 500 steps; and no word of num_heads, which is not the cause
     "model.tiny.warmup_steps (2000) must be <= steps (500): the learning rate would never reach lr nor decay"),
    (["model.tiny.init_std=0"], "model.tiny.init_std must be a finite number > 0, got 0.0"),
    (["model.tiny.stable_steps=450"],  # with the recipe's warmup of 100, past its 500 steps
     "model.tiny.stable_steps (450) + warmup_steps (100; null: the verbose recipe's) must be <= steps (500): the "
     "hold would outlast the run"),
    (["model.tiny.hidden_size=120", "model.tiny.num_heads=8"],  # heads of 15: the first training step would fail
     "model.tiny.hidden_size / num_heads must be even (rotary position embeddings turn pairs of dimensions), got "
     "120 / 8 = 15"),
    (["model.tiny.num_heads=12"],  # heads of 16: trained for 9 minutes, then vLLM's CPU attention refused them
     "model.tiny.num_heads (12) gives heads of 16 dimensions (hidden_size 192), which vLLM's CPU attention does not "
     "run (it runs 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512): the engine would fail at its start, after the "
     "bootstrap"),
    (["model.tiny.max_position_embeddings=256"],  # vLLM's refusal came at engine start, after the whole bootstrap
     "model.tiny.max_position_embeddings (256) must be >= rollout.engine.max_model_len (512): vLLM refuses a context "
     "longer than the model's positions, and would refuse it only after the bootstrap"),
    (["model.tiny.max_position_embeddings=256", "rollout.engine.max_model_len=null"],  # the model's positions rule
     "rollout.max_tokens + rollout.answer_max_tokens = 416 plus a prompt of 1 tokens exceeds the engine's context "
     "max_model_len (null: the model's max_position_embeddings) = 256: raise max_model_len or lower the budget"),
    (["model.tiny.train_examples=100", "model.tiny.batch_size=200"],
     "model.tiny.train_examples (100) must be >= batch_size (200): a batch draws its rows without repeats"),
])
def test_tiny_model_shapes_are_checked_with_the_recipe_applied_and_named_once(overrides, message):
    with pytest.raises(ConfigError) as err:
        build(cfg(*overrides))
    assert str(err.value) == message


def test_the_tiny_models_checks_leave_a_run_of_another_model_alone():
    # model.path wins over model.tiny (resolve_model): its context is the engine's, not the unused tiny model's
    job = build(cfg("model.path=/elsewhere", "rollout.engine.max_model_len=1024",
                    "model.tiny.max_position_embeddings=256"), check_paths=False)
    assert job.model.path == "/elsewhere"


def test_heads_that_vllms_cpu_attention_refuses_are_left_to_a_gpu_engine():
    """The CPU backend's head sizes bind CPU engines only: heads of 16 are the GPU kernels' to take or refuse."""
    job = build(cfg("model.tiny.num_heads=12", "cluster.rollout.num_gpus=1"), check_paths=False)
    assert job.model.tiny.num_heads == 12
    build(cfg("model.tiny.num_heads=3"), check_paths=False)  # heads of 64, the terse recipe's


def test_an_odd_head_size_is_what_the_llama_forward_cannot_take():
    from types import SimpleNamespace

    import torch

    from stepentropy_rl.bootstrap import build_model

    shape = dict(num_heads=2, num_layers=1, intermediate_size=32, max_position_embeddings=16, seed=0)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="size of tensor"):  # heads of 15, past the check (a plain namespace)
        build_model(SimpleNamespace(hidden_size=30, **shape), 64)(input_ids=ids)
    assert build_model(SimpleNamespace(hidden_size=32, **shape), 64)(input_ids=ids).logits.shape == (1, 4, 64)


def test_cli_reports_config_error_before_starting_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "+experiment=prune_sweep",
                          "pruning.ratio=[0.2,1.5]", f"run_dir={tmp_path}"], capture_output=True, text=True,
                         cwd=Path(CONF).parent, timeout=120)
    assert out.returncode != 0
    assert "config error: pruning.ratio must be in [0, 1], got 1.5" in out.stderr


def test_cli_without_an_experiment_says_how_to_choose_one(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", f"run_dir={tmp_path}"], capture_output=True,
                         text=True, cwd=Path(CONF).parent, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "config error: pipeline must be one of ['prune_study', 'train'] (choose one with +experiment=NAME" in out.stderr


def test_real_scale_configs_compose_and_build():
    for experiment in ("step_entropy", "entropy_guided", "prune_sweep"):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            c = compose("config", overrides=[f"+experiment={experiment}", "run_dir=/tmp/x", "model=r1_distill_qwen_7b",
                                             "cluster=gpu_8x", "trainer=gpu", "rollout=vllm_gpu"])
        build(c, check_paths=False)
        assert c.rollout.engine.dtype == "bfloat16" and c.model.path.endswith("Qwen-7B")
        assert c.cluster.learner.backend == "nccl" and c.reference.dtype == "bfloat16"
        assert c.cluster.learner.dtype == "float32" and c.cluster.learner.param_dtype == "bfloat16"
    with initialize_config_dir(config_dir=CONF, version_base=None):  # the README's command: paper 1's GRPO group and lr
        paper1 = compose("config", overrides=["+experiment=step_entropy", "run_dir=/tmp/x", "model=r1_distill_qwen_7b",
                                              "cluster=gpu_8x", "trainer=gpu", "rollout=vllm_gpu", "data=file",
                                              "data.path=test.jsonl", "data.train_path=train.jsonl",
                                              "algorithm.n_samples=8", "trainer.grpo.lr=1e-5"])
    built = build(paper1, check_paths=False)
    assert built.algorithm.n_samples == 8 and built.trainer.grpo.lr == 1e-5
    with pytest.raises(ConfigError, match="model.path"):
        build(c)  # the real checkpoint is not on this machine


def test_every_preset_of_a_group_has_the_keys_of_the_others():
    """Hydra refuses to override a key a preset leaves out: trainer.grpo.keep_last under trainer=gpu,
    cluster.rollout.threads under cluster=gpu_8x and data.overlong under data=champ each failed with "Could not
    override" (the README tells users to set all three). Free-form mappings are compared by name only."""
    from omegaconf import OmegaConf

    free = {"engine", "task", "kill_at_step", "chat_template_kwargs", "stages", "custom", "standin", "tiny",
            "reward_scale"}

    def keys(node, prefix=""):
        out = set()
        for k, v in node.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in free:
                out |= keys(v, f"{prefix}{k}.")
        return out

    for group in ("cluster", "trainer", "rollout", "data"):
        seen = {}
        for option in sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml")):
            with initialize_config_dir(config_dir=CONF, version_base=None):
                c = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", f"{group}={option}"])
            seen[option] = keys(OmegaConf.to_container(c[group])) - {"reward_scale"}  # the embedded task's sizes
        every = set().union(*seen.values())
        assert {o: sorted(every - k) for o, k in seen.items() if every - k} == {}, group


def test_cfg_job_prints_real_scale_config():
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "+experiment=entropy_guided",
                          "model=r1_distill_qwen_7b", "cluster=gpu_8x", "trainer=gpu", "rollout=vllm_gpu", "--cfg", "job"],
                         capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120)
    assert out.returncode == 0 and "backend: nccl" in out.stdout and "DeepSeek-R1-Distill-Qwen-7B" in out.stdout


@pytest.mark.parametrize("override,key", [
    ("algorithm.adv_estimator.compress=magic", "algorithm.adv_estimator.compress"),
    # registered in verl, but each failed at the first GRPO step (a missing argument)
    ("algorithm.adv_estimator.compress=gae", "algorithm.adv_estimator.compress 'gae' needs critic values"),
    ("algorithm.adv_estimator.compress=remax", "algorithm.adv_estimator.compress 'remax' needs"),
    ("algorithm.n_samples=1", "algorithm.n_samples"),
    ("algorithm.phase.ema=1.5", "phase.ema"),
    ("trainer.grpo.steps=0", "trainer.grpo.steps"),
    ("cluster.learner.backend=mpi", "cluster.learner.backend"),
    ("cluster.learner.param_dtype=bf16", "cluster.learner.param_dtype"),
    ("trainer.prune.ratio=2", "trainer.prune.ratio"),
    ("reward.length_budget=-5", "reward"),
    ("algorithm.kl_reference=init", "algorithm.kl_reference"),
    ("data.grade_span=thinking", "data.grade_span"),
    ("algorithm.temperature.compress=0", "algorithm.temperature.compress"),
    ("trainer.eval.max_tokens=600", "trainer.eval.max_tokens"),  # past rollout.engine.max_model_len (512)
    ("cluster.learner.sync_bucket_mb=0", "cluster.learner.sync_bucket_mb"),
    ("cluster.learner.sync_timeout_s=0", "cluster.learner.sync_timeout_s"),
    ("+rollout.engine.tensor_parallel_size=2", "rollout.engine.tensor_parallel_size must be 1"),  # the sync hung
    ("algorithm.ppo_mini_batch_size=3", "algorithm.ppo_mini_batch_size"),  # must divide prompts_per_step (16)
    ("algorithm.ppo_epochs=0", "algorithm.ppo_epochs"),
    # checked nowhere before the typed config: each failed at the first GRPO step, or trained on
    ("algorithm.loss_agg_mode=token-avg", "algorithm.loss_agg_mode must be one of"),
    ("algorithm.kl_type=kl3", "algorithm.kl_type must be one of"),
    ("algorithm.clip_ratio_low=-0.2", "algorithm.clip_ratio_low"),
    ("algorithm.clip_ratio_high=nan", "algorithm.clip_ratio_high"),
    ("algorithm.clip_ratio_c=0.5", "algorithm.clip_ratio_c must be > 1"),
    ("algorithm.kl_coef=inf", "algorithm.kl_coef must be a finite number >= 0"),
    ("trainer.grpo.lr=-1", "trainer.grpo.lr must be a finite number > 0"),
    ("trainer.optim.lr=nan", "trainer.optim.lr"),
    ("trainer.sft.lr=0", "trainer.sft.lr"),
    ("trainer.sft.min_steps=-1", "trainer.sft.min_steps must be an integer >= 0"),
    ("trainer.sft.batch_size=1", "trainer.sft.batch_size must be >= cluster.learner.world_size (2)"),  # was: after the prune
    ("trainer.grpo.steps=two", "trainer.grpo.steps must be an integer, got 'two'"),
    ("+trainer.grpo.stepz=3", "trainer.grpo.stepz is not a known key"),
    ("+algorithm.kl_ceof=0.1", "algorithm.kl_ceof is not a known key"),
    ("trainer.logger.wandb=cloud", "trainer.logger.wandb"),
    ("trainer.prune.source=teacher", "trainer.prune.source"),
    ("trainer.prune.placeholder='<skip>'", "trainer.prune.placeholder must be '[SKIP]' (the token the training adds"),
    ("cluster.rollout.num_workers=0", "cluster.rollout.num_workers"),
    ("reference.chunk_rows=0", "reference.chunk_rows"),
    ("cluster.rollout.threads=-2", "cluster.rollout.threads must be an integer >= -1"),
    # vLLM refused them at the first generation, after the bootstrap and every actor's start
    ("trainer.eval.topk_logprobs=50", "trainer.eval.topk_logprobs (50) must be at most the engines' rollout.engine"),
    ("rollout.topk_logprobs=2.5", "rollout.topk_logprobs must be an integer"),
    ("cluster.reference.threads=1.5", "cluster.reference.threads must be an integer"),
    ("cluster.learner.param_dtype=bfloat16", "rollout.engine.dtype (float32) must be the dtype the learners push"),
    ("rollout.engine.dtype=auto", "rollout.engine.dtype (auto) must be the dtype the learners push"),
    ("+algorithm.norm_adv_by_std.explor=false", "algorithm.norm_adv_by_std has no stage 'explor'"),
    ("algorithm.norm_adv_by_std.explore=1", "algorithm.norm_adv_by_std.explore must be true or false"),
    ("+algorithm.temperature.explor=0.8", "algorithm.temperature has no stage 'explor'"),
    # a stage the controller reaches must have a reward that pays: these failed at the first switch, or trained on 0
    ("~reward.stages.explore", "reward.stages has no stage 'explore', which algorithm.phase.mode=entropy reaches"),
    ("reward.stages.explore=[]", "reward.stages.explore has no term that pays"),
    ("+reward.stages.extra=[]", "reward.stages has 'extra', not a phase stage"),
    (("reward.stages.compress.1.params.only_correct=false", "algorithm.adv_estimator.compress=absolute"),
     "reward.stages.compress pays wrong answers, and algorithm.adv_estimator.compress is absolute"),
])
def test_training_config_errors(override, key):
    overrides = list(override) if isinstance(override, tuple) else [override]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        c = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides])
    with pytest.raises(ConfigError, match=re.escape(key)):
        build(c)


def test_more_log_probs_pass_where_the_engine_allows_them():
    with initialize_config_dir(config_dir=CONF, version_base=None):
        for allow in (50, -1):
            c = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x",
                                             f"+rollout.engine.max_logprobs={allow}", "trainer.eval.topk_logprobs=50"])
            assert build(c).trainer.eval.topk_logprobs == 50


def test_learner_autocast_resolves_by_device_and_precision(monkeypatch):
    """null: bf16 autocast on fp32 CPU ranks where bf16 is fast, off where FSDP2 mixed precision computes in bf16;
    the resolved value is what the run's config saves."""
    from stepentropy_rl import config
    from stepentropy_rl.config import LearnerCluster

    for fast in (True, False):
        monkeypatch.setattr(config, "fast_bf16", lambda: fast)
        assert LearnerCluster().autocast_bf16 is fast
    for key in ("dtype", "param_dtype"):  # no loss scaler: fp16 gradients would underflow silently
        with pytest.raises(ConfigError, match=f"{key} float16 needs a loss scaler"):
            LearnerCluster(**{key: "float16"})
    assert LearnerCluster(param_dtype="bfloat16").autocast_bf16 is False
    assert LearnerCluster(backend="nccl", num_gpus=1).autocast_bf16 is False
    assert LearnerCluster(autocast_bf16=False).autocast_bf16 is False
    with pytest.raises(ConfigError, match="autocast_bf16 and param_dtype"):
        LearnerCluster(autocast_bf16=True, param_dtype="bfloat16")


def test_context_check_counts_the_longest_prompt():
    from stepentropy_rl.config import check_context

    c = build(cfg())  # prune study: CoT (384) + regenerated answer (32) after the prompt, engine context 512
    check_context(c, prompt_tokens=96)
    with pytest.raises(ConfigError, match=re.escape("rollout.max_tokens + rollout.answer_max_tokens = 416")):
        check_context(c, prompt_tokens=97)
    c.rollout.engine["max_model_len"] = None  # then the model's own limit
    with pytest.raises(ConfigError, match="exceeds"):
        check_context(c, prompt_tokens=97, max_model_len=500)


def test_help_lists_every_experiment_and_the_main_knobs():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=120).stdout
    listed = out.split("Experiments (+experiment=NAME):")[1].split("Main knobs:")[0]
    for exp in (root / "conf" / "experiment").glob("*.yaml"):
        assert f"  {exp.stem} " in listed, exp.stem  # a new experiment needs its line in conf/config.yaml's help
    assert "trainer.prune.ratio" in out and "reward.custom.path" in out and "data: aime, basket" in out


@pytest.mark.parametrize("data,lengths", [("basket_verbose", (96, 96, 20)), ("basket", (96, 96, 12)),
                                          ("gsm8k", (4096, 3500, 100))])
def test_the_rewards_lengths_follow_the_task(data, lengths):
    """The embedded task's length scale (``data.reward_scale``) is not a real model's: with it, R1-7B on GSM8K (about
    300 thinking tokens) had nearly every compress reward gated to 0 by a 96-token budget, so the absolute advantages
    were 0 and GRPO learned nothing, without an error. Other data gets the papers' constants."""
    def terms(experiment, *more):
        model = [] if data.startswith("basket") else ["model=r1_distill_qwen_7b"]
        with initialize_config_dir(config_dir=CONF, version_base=None):
            c = compose("config", overrides=[f"+experiment={experiment}", "run_dir=/tmp/x", f"data={data}", *model,
                                             *more])
        build(c, check_paths=False)
        return {(stage, t["name"]): t["params"] for stage, ts in c.reward.stages.items() for t in ts}

    guided, paper1 = terms("entropy_guided"), terms("step_entropy")
    for stage in ("compress", "explore"):
        assert paper1[(stage, "length_threshold")]["limit"] == lengths[1]
        assert paper1[(stage, "skip_count")]["limit"] == lengths[2]
        assert guided[(stage, "exp_length")]["L"] == lengths[0]
    assert guided[("compress", "length_clip")]["L"] == lengths[0]
    assert terms("entropy_guided", "reward.length_budget=128")[("compress", "length_clip")]["L"] == 128


@pytest.mark.parametrize("override,message", [("data.reward_scale.max_skips=0", "max_skips must be a positive integer"),
                                              ("+data.reward_scale.budget=9", "unknown key 'budget'")])
def test_a_bad_reward_scale_names_the_key(override, message):
    with pytest.raises(ConfigError, match=r"data\.reward_scale.*" + re.escape(message)):
        build(cfg(override))


@pytest.mark.parametrize("experiment", ["step_entropy", "prune_sweep"])
def test_graded_skip_ratio_is_a_plain_override_of_paper1s_reward(experiment):
    """The README's ``reward.stages.compress.1.params.graded=true`` composes without ``+`` (both the experiment and
    the reward group name the key) and reaches the reward: rho = 0.6 earns the low tier (0.5) by default and
    1.0 * 0.6 / 0.8 graded."""
    from stepentropy_rl.rewards import Sample, stage_rewards

    def ratio_reward(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            c = compose("config", overrides=[f"+experiment={experiment}", "run_dir=/tmp/x", *overrides])
        return stage_rewards(c.reward)["compress"](Sample(n_skip=3, n_steps=2))["skip_ratio"]

    assert ratio_reward() == 0.5
    assert ratio_reward("reward.stages.compress.1.params.graded=true") == pytest.approx(0.75)


def test_the_config_and_a_cached_model_path_import_no_torch_transformers_or_verl():
    """The driver starts Ray without torch, transformers or verl (13 s of imports on 2 cores, paid later while the
    actors start): config validation reads verl's names from ``verl_names``, a tiny model's cache path needs no torch."""
    code = ("import sys; from hydra import compose, initialize_config_dir; import stepentropy_rl.main\n"
            "from stepentropy_rl.config import build; from stepentropy_rl.tiny_config import tiny_model_path\n"
            "with initialize_config_dir(config_dir=sys.argv[1], version_base=None):\n"
            "    job = build(compose('config', overrides=['+experiment=entropy_guided', 'run_dir=/tmp/x']))\n"
            "tiny_model_path(job.model.tiny)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'verl', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", code, CONF], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_real_checkpoint_on_the_cpu_presets_is_warned_about():
    """The documented real-model command once ran R1-7B with the tiny reasoner's 2-core presets: CoTs cut at 384
    tokens and graded wrong, SFT at lr 1e-3. A checkpoint with any CPU preset gets a warning naming the values."""
    from stepentropy_rl.main import preset_warning

    def job(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            c = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "data=gsm8k", *overrides])
        return build(c, check_paths=False)

    cpu = {"trainer": "cpu", "rollout": "vllm_cpu", "cluster": "local_cpu", "model": "r1_distill_qwen_7b"}
    gpu = {"trainer": "gpu", "rollout": "vllm_gpu", "cluster": "gpu_8x", "model": "r1_distill_qwen_7b"}
    warning = preset_warning(job("model=r1_distill_qwen_7b"), cpu)
    assert "trainer=cpu rollout=vllm_cpu cluster=local_cpu" in warning and "rollout.max_tokens=384" in warning
    assert "trainer.sft.lr=0.001" in warning and "trainer=gpu rollout=vllm_gpu cluster=gpu_8x" in warning
    real = job("model=r1_distill_qwen_7b", "trainer=gpu", "rollout=vllm_gpu", "cluster=gpu_8x")
    assert preset_warning(real, gpu) is None
    assert "rollout=vllm_cpu" in preset_warning(real, {**gpu, "rollout": "vllm_cpu"})  # one CPU preset is enough
    tiny = build(cfg())  # the tiny reasoner is what the presets are for
    assert preset_warning(tiny, {**cpu, "model": "tiny"}) is None
    # the README's `ray job submit` example once ran R1-7B on the default data: basket problems, the exact grader,
    # a length budget of 96 against 4096-token rollouts
    with initialize_config_dir(config_dir=CONF, version_base=None):
        c = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "model=r1_distill_qwen_7b",
                                         "trainer=gpu", "rollout=vllm_gpu", "cluster=gpu_8x"])
    warning = preset_warning(build(c, check_paths=False), {**gpu, "data": "basket_verbose"})
    assert warning.startswith("model.path is a checkpoint, but data=basket_verbose is the embedded task's preset")
    assert "the exact grader" in warning and "reward.length_budget=96" in warning and "data=file" in warning
    assert "trainer=cpu" not in warning


def test_a_bad_sweep_job_fails_alone_and_the_sweep_goes_on(tmp_path):
    """A config error in one job of a multirun used to exit the process: the jobs after it never ran."""
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "-m", "+experiment=entropy_guided",
                          "trainer.grpo.lr=-1,-2", f"hydra.sweep.dir={tmp_path}"],
                         capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "#1 : +experiment=entropy_guided trainer.grpo.lr=-2" in log
    for lr in ("-1.0", "-2.0"):
        assert f"config error: trainer.grpo.lr must be a finite number > 0, got {lr}" in log
    assert "JobFailed: config error: trainer.grpo.lr must be a finite number > 0, got -1.0" in log  # the first, last


def test_a_timestamped_run_dir_says_how_to_resume():
    """The README's commands without run_dir= write under a new timestamped directory each time: rerunning the same
    command after a crash starts over, so the job says what to rerun."""
    from stepentropy_rl.main import resume_hint

    assert resume_hint("outputs/2026-12-05/02-30-00", ["+experiment=step_entropy"], None) == (
        "run_dir is a new timestamped directory: to resume this run after a crash, rerun it with "
        "run_dir=outputs/2026-12-05/02-30-00")
    assert resume_hint("runs/se", ["+experiment=step_entropy", "run_dir=runs/se"], None) is None
    sweep = resume_hint("multirun/d/t/job1", ["trainer.prune.ratio=0.4"], "multirun/d/t")
    assert "hydra.sweep.dir=multirun/d/t and the same sweep overrides in the same order" in sweep
    assert resume_hint("/s/job1", ["trainer.prune.ratio=0.4", "hydra.sweep.dir=/s"], "/s") is None


def _dataclass_drift(schema, values: dict, path: str = "") -> list[str]:
    """Keys of ``values`` (a composed config group) whose value differs from ``schema``'s dataclass default."""
    import dataclasses
    import typing

    hints, drift = typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        value = values[f.name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a nested config without a default: walk into it
            nested = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)]
            if nested and isinstance(value, dict):
                drift += _dataclass_drift(nested[0], value, f"{path}{f.name}.")
            continue
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            drift += _dataclass_drift(type(default), value, f"{path}{f.name}.")
        elif (list(default) if isinstance(default, tuple) else default) != value:
            drift.append(f"{path}{f.name}: dataclass {default!r}, yaml {value!r}")
    return drift


def test_the_dataclass_defaults_are_the_default_yamls():
    """A key that a yaml leaves out takes the dataclass default, and code that builds a config takes them all: they
    must be the recipe the yamls ship (they had drifted to November's GRPO lr 1e-4, explore temperature 1.0, prune
    ratio 0.2). ``data`` and the engine/thread settings of ``rollout``/``cluster`` are the groups whose dataclass
    defaults are deliberately generic (real data, any machine)."""
    from omegaconf import OmegaConf

    from stepentropy_rl import config as C

    with initialize_config_dir(config_dir=CONF, version_base=None):  # the groups' defaults, no experiment
        raw = OmegaConf.to_container(compose("config", overrides=["run_dir=/tmp/x"]), resolve=True)
    drift = []
    for group, schema in (("algorithm", C.AlgorithmConfig), ("pruning", C.PruningConfig),
                          ("trainer", C.TrainerConfig), ("reference", C.ReferenceConfig)):
        drift += _dataclass_drift(schema, raw[group], f"{group}.")
    assert drift == []


def test_training_on_an_evaluation_set_names_the_train_path():
    """data=math500 with a training experiment said 'data.task must be set to generate problems'; what is missing is
    the training file."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        c = compose("config", overrides=["+experiment=entropy_guided", "data=math500", "model=r1_distill_qwen_7b",
                                         "model.path=/m", "run_dir=/tmp/x"])
        with pytest.raises(ConfigError, match=re.escape("data.train_path must name the training problems' file")):
            build(c, check_paths=False)
        build(compose("config", overrides=["+experiment=prune_sweep", "data=math500", "model=r1_distill_qwen_7b",
                                           "model.path=/m", "run_dir=/tmp/x"]), check_paths=False)


def test_a_model_path_must_be_a_model_directory_and_wins_over_the_tiny_reasoner(tmp_path):
    """A parent folder (/models for /models/R1-7B) passed the directory check and failed later in the tokenizer
    with advice to install sentencepiece; a path with other data was refused as if no model were named."""
    (tmp_path / "R1-7B").mkdir()
    with pytest.raises(ConfigError, match=r"model.path: .* holds no config.json: not a Hugging Face model directory "
                                          r"\(its folders: R1-7B\)"):
        build(cfg(f"model.path={tmp_path}"))
    (tmp_path / "R1-7B" / "config.json").write_text("{}")
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "q", "answer": "1"}\n')
    job = build(cfg("data=champ", f"model.path={tmp_path / 'R1-7B'}", f"data.path={data}"))
    assert job.model.path == str(tmp_path / "R1-7B") and job.model.tiny_that_runs() is None


def test_a_key_the_experiment_never_reads_is_refused_with_the_one_it_meant():
    """pruning.ratio=0.4,0.6 in a training sweep trained every job at trainer.prune.ratio while collect labelled
    them by the ratio given; trainer.prune.* in the study was ignored the same way."""
    from stepentropy_rl.main import misplaced

    with pytest.raises(ConfigError, match=r"pruning.ratio is not read by this experiment: .*trainer.prune.ratio=0.4"):
        misplaced("train", ["+experiment=step_entropy", "pruning.ratio=0.4"])
    with pytest.raises(ConfigError, match=r"trainer.prune.ratio, trainer.prune.placeholder is not read .*pruning"):
        misplaced("prune_study", ["trainer.prune.ratio=0.4", "trainer.prune.placeholder="])
    misplaced("train", ["trainer.prune.ratio=0.4", "pruning_extra=1"])  # the keys each reads, and look-alikes pass
    misplaced("prune_study", ["pruning.ratio=0.4,0.6", "trainer.logger.wandb=disabled"])
    # the study's answer budget and top-k check: a training run read neither, yet a change to them refused its rerun
    with pytest.raises(ConfigError, match=r"rollout.answer_max_tokens is not read .*trainer.prune.answer_max_tokens"):
        misplaced("train", ["rollout.answer_max_tokens=64"])
    with pytest.raises(ConfigError, match=r"rollout.topk_logprobs is not read .*trainer.eval.topk_logprobs"):
        misplaced("train", ["rollout.topk_logprobs=5"])
    misplaced("prune_study", ["rollout.answer_max_tokens=64", "rollout.topk_logprobs=5"])


def test_the_studys_own_rollout_keys_decide_no_training_stage():
    """A marker that recorded rollout.answer_max_tokens (as every run's did) does not refuse a rerun where it moved."""
    from stepentropy_rl.driver.stage_config import conflicts

    then = {"rollout.answer_max_tokens": 32, "rollout.topk_logprobs": 20, "trainer.prune.ratio": 0.8}
    assert conflicts({"prune": then}, {**then, "rollout.answer_max_tokens": 64, "rollout.topk_logprobs": 0}) == []
    assert conflicts({"prune": then}, {**then, "trainer.prune.ratio": 0.4}) == [("prune", "trainer.prune.ratio", 0.8,
                                                                                0.4)]


def test_two_jobs_of_one_sweep_cannot_share_a_run_dir(tmp_path):
    """-m with a fixed run_dir= put every job in one directory: the study's jobs wrote over each other's results.
    The same job of a rerun (a resumed sweep, whatever its number now) and a job of another sweep pass."""
    from stepentropy_rl.main import claim_run_dir

    run, sweep, other = str(tmp_path / "run"), str(tmp_path / "sweep"), str(tmp_path / "other")
    claim_run_dir(run, sweep, ["run_dir=run", "pruning.ratio=0.4"])
    with pytest.raises(ConfigError, match=r"run_dir .* is the run directory of another job of this sweep, or of an "
                                          r"earlier .*\(pruning.ratio=0.4 run_dir=run\): under -m each job needs"):
        claim_run_dir(run, sweep, ["run_dir=run", "pruning.ratio=0.6"])
    claim_run_dir(run, sweep, ["pruning.ratio=0.4", "run_dir=run"])  # the sweep rerun: the same job, in any order
    claim_run_dir(run, other, ["run_dir=run", "pruning.ratio=0.6"])  # another sweep takes it over
    with pytest.raises(ConfigError, match=r"\(pruning.ratio=0.6 run_dir=run\)"):
        claim_run_dir(run, other, ["run_dir=run", "pruning.ratio=0.8"])
    # the example names what the jobs differ in (it named trainer.prune.ratio, which a study sweep does not set)
    with pytest.raises(ConfigError, match=r"e.g. run_dir='runs/ratio\$\{pruning.ratio\}_seed\$\{seed\}'\)$"):
        claim_run_dir(run, other, ["run_dir=run", "pruning.ratio=0.4", "seed=1"])


def test_an_unexpected_error_in_a_sweep_job_is_logged_where_the_job_ran(monkeypatch, caplog):
    """Hydra keeps a failed sweep job's exception without a word and raises only the first job's at the end: a
    vLLM error or a full disk in a later job left no trace in its log or on the console."""
    from stepentropy_rl import main
    from stepentropy_rl.driver import run

    def broken(job):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(run, "run", broken)
    monkeypatch.setattr(main, "in_multirun", lambda: True)
    with caplog.at_level("ERROR"), pytest.raises(RuntimeError, match="the disk is full"):
        main.launch(cfg())
    assert "the job failed; the sweep goes on with its other jobs" in caplog.text
    assert "RuntimeError: the disk is full" in caplog.text  # with its traceback


def test_the_log_goes_to_the_run_dir_from_the_jobs_start_to_its_last_line(tmp_path):
    """With run_dir= given, Hydra's main.log went to outputs/DATE/TIME, a new folder on each rerun; the run's own
    log then missed what came before its directory existed (the resume hint) and the one-line end."""
    import logging

    from stepentropy_rl.driver.run import log_to_run_dir
    from stepentropy_rl.main import buffer_log, close_log

    buffer = buffer_log()
    logging.getLogger("stepentropy_rl").warning("said before the run directory existed")
    assert log_to_run_dir(tmp_path) is None  # the buffer writes it
    logging.getLogger("stepentropy_rl").warning("said after")
    close_log(buffer, "run stopped: the end")
    text = (tmp_path / "main.log").read_text()
    assert text.index("said before") < text.index("said after") < text.index("run stopped: the end")
    assert buffer not in logging.getLogger().handlers
    untouched = tmp_path / "bad"
    close_log(buffer_log(), "config error: x")  # a job stopped by bad input writes no run directory
    assert not untouched.exists()
    handler = log_to_run_dir(tmp_path / "alone")  # no buffer (the driver called on its own): a handler of its own
    try:
        assert log_to_run_dir(tmp_path / "alone") is None  # its file is there already
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_a_diverged_run_stops_with_one_line(monkeypatch):
    """NonFiniteError (and the SFT stage's too-few-rows DataError) came out as a Hydra traceback."""
    from stepentropy_rl import main
    from stepentropy_rl.driver import run
    from stepentropy_rl.driver.tracking import NonFiniteError

    def diverged(job):
        raise NonFiniteError("GRPO step 3: {'loss': nan} is not finite")

    monkeypatch.setattr(run, "run", diverged)
    with pytest.raises(SystemExit) as e:
        main.launch(cfg())
    assert str(e.value.code).startswith("run stopped: GRPO step 3: {'loss': nan} is not finite")


def test_the_learners_process_group_timeout_reaches_them(monkeypatch):
    """The learners' process group took NCCL's 10-minute default (rank 0 loading a 7B alone while the others wait in
    the first broadcast). (The wait for their resources: ``cluster.start_timeout_s``, tests/integration/
    test_cluster.py.)"""
    import datetime

    import torch.distributed as dist

    from stepentropy_rl.config import LearnerCluster, OptimConfig
    from workers import learner

    seen = {}

    class Stop(Exception):
        pass

    def init(backend, **kw):
        seen.update(kw, backend=backend)
        raise Stop

    monkeypatch.setattr(dist, "init_process_group", init)
    with pytest.raises(Stop):
        learner.Learner(0, 1, "tcp://127.0.0.1:1", "/nowhere", LearnerCluster(pg_timeout_s=1234.0, threads=0),
                        OptimConfig())  # threads=0: left as they are in this process (1 trained another micro model)
    assert seen["timeout"] == datetime.timedelta(seconds=1234) and seen["backend"] == "gloo"
    with pytest.raises(ConfigError, match="cluster.learner.num_gpus must be 0 or at least 1"):
        build(cfg("cluster.learner.num_gpus=0.5", "cluster.learner.backend=nccl"))


def test_a_job_asking_for_more_than_the_cluster_has_is_named():
    """Three engines, the reference and four learner GPUs on a 4-GPU cluster waited forever with no message."""
    from stepentropy_rl.driver.roles import needed_resources, short_resources

    with initialize_config_dir(config_dir=CONF, version_base=None):
        gpu = build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "cluster=gpu_8x",
                                                 "trainer=gpu", "rollout=vllm_gpu", "model=r1_distill_qwen_7b",
                                                 "data=gsm8k"]), check_paths=False)
    assert needed_resources(gpu, train=True) == {"CPU": 34, "GPU": 8}  # every GPU of the node
    assert needed_resources(gpu, train=False) == {"CPU": 16, "GPU": 4}  # the study: engines and reference
    short = short_resources(gpu, True, {"CPU": 64.0, "GPU": 4.0})
    assert short.startswith("this job reserves 34 CPU, 8 GPU (cluster.rollout, cluster.reference, cluster.reward, "
                            "cluster.learner) but the Ray cluster has 64 CPU, 4 GPU")
    assert short_resources(gpu, True, {"CPU": 64.0, "GPU": 8.0}) is None
    assert short_resources(build(cfg()), False, {"CPU": 2.0}) is None  # the CPU default fits 2 cores


def test_each_actor_of_a_job_has_its_bundle_in_spawn_order():
    """One placement group holds every actor's bundle (driver/placement.py): the engines, the reference, then for
    training the reward service and each learner rank; a bundle holds only what its actor asks for."""
    from stepentropy_rl.driver.placement import job_bundles

    with initialize_config_dir(config_dir=CONF, version_base=None):
        gpu = build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "cluster=gpu_8x",
                                                 "trainer=gpu", "rollout=vllm_gpu", "model=r1_distill_qwen_7b",
                                                 "data=gsm8k"]), check_paths=False)
    gpu_cpu = {"CPU": 4.0, "GPU": 1.0}
    engines_and_reference = [("rollout", gpu_cpu)] * 3 + [("reference", gpu_cpu)]
    learners = [("learner", gpu_cpu)] * 4
    assert job_bundles(gpu, train=True) == engines_and_reference + [("reward", {"CPU": 2.0})] + learners
    assert job_bundles(gpu, train=False) == engines_and_reference
    cpu = build(cfg("cluster.reward.num_cpus=0"))
    assert job_bundles(cpu, train=True) == [("rollout", {"CPU": 0.5}), ("reference", {"CPU": 0.25}), ("reward", {}),
                                            ("learner", {"CPU": 0.5}), ("learner", {"CPU": 0.5})]


def test_cluster_timeouts_and_learner_resources_are_checked():
    with pytest.raises(ConfigError, match="cluster.start_timeout_s must be"):
        build(cfg("cluster.start_timeout_s=0"))
    with pytest.raises(ConfigError, match="cluster.learner.num_cpus must be > 0 where num_gpus is 0"):
        build(cfg("cluster.learner.num_cpus=0"))
    build(cfg("cluster.learner.num_cpus=0", "cluster.learner.num_gpus=1", "cluster.learner.backend=nccl"))


def test_a_checkpoint_with_its_own_files_on_the_task_preset_is_refused_and_data_file_fits_it(tmp_path):
    """README's real-scale command set data.path on the default data preset: R1 was asked the bare question, graded
    by exact match and rewarded at the embedded task's 96-token lengths (every compress-stage reward gated to 0)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "answer": "1"}\n')
    paths = [f"model.path={tmp_path / 'm'}", f"data.path={rows}", f"data.train_path={rows}"]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        preset = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *paths])
        file = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "data=file", *paths])
    with pytest.raises(ConfigError, match="data.path with a generated-task data preset .* use data=file"):
        build(preset)
    job = build(file)
    assert job.data.grader == "math" and "\\boxed{}" in job.data.prompt_template and job.data.reward_scale == {}
    assert job.reward["length_budget"] == 4096  # the paper's L, not the embedded task's 96
    build(cfg(f"data.path={rows}"))  # the tiny reasoner on a file of its own task (prepare_basket.py) stays fine
    (tmp_path / "m" / "bootstrap.json").write_text("{}")  # a tiny reasoner's checkpoint given by its path: the same
    build(preset)


def test_a_broken_user_grader_is_a_config_error_at_load_and_in_an_actor(tmp_path, monkeypatch):
    """A grader with the wrong signature escaped the config check as GraderError (a RuntimeError); one that returns
    no verdict in the reward actor ended the run with Ray's multi-line trace."""
    import ray.exceptions

    from stepentropy_rl import main
    from stepentropy_rl.driver import run
    from stepentropy_rl.tasks.grading import GraderError

    grader = tmp_path / "g.py"
    grader.write_text("def one_arg(x):\n    return True\n")
    with pytest.raises(ConfigError, match=r"data.grader .*one_arg cannot take \(solution_str, ground_truth\)"):
        build(cfg(f"data.grader={grader}:one_arg"))
    broken = GraderError("data.grader g returned 'maybe': it must return a bool, a number or None")
    in_actor = ray.exceptions.RayTaskError("score", "Traceback (most recent call last):\n  ...\n", broken)
    assert isinstance(in_actor.as_instanceof_cause(), ConfigError)

    def stops(job):
        raise in_actor.as_instanceof_cause()

    monkeypatch.setattr(run, "run", stops)
    with pytest.raises(SystemExit) as e:
        main.launch(cfg())
    assert str(e.value.code).startswith("config error: data.grader g returned 'maybe'")
    assert "\n" not in str(e.value.code)


def test_an_actor_dead_for_good_stops_the_run_with_one_line(monkeypatch):
    """A reference or reward actor whose restarts were used up ended the run with Ray's raw trace."""
    import ray.exceptions

    from stepentropy_rl import main
    from stepentropy_rl.driver import run

    def dies(job):
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(run, "run", dies)
    with pytest.raises(SystemExit) as e:
        main.launch(cfg())
    assert str(e.value.code).startswith("run stopped: an actor died and was not restarted: The actor died "
                                        "unexpectedly before finishing this task.; rerun the same command to resume")


def test_norm_adv_by_std_is_per_stage_or_one_bool_for_both():
    with initialize_config_dir(config_dir=CONF, version_base=None):
        def norm(*overrides):
            return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides])
                         ).algorithm.norm_adv_by_std
        assert norm("algorithm.norm_adv_by_std=false") == {"compress": False, "explore": False}
        assert norm("algorithm.norm_adv_by_std={compress:true,explore:false}") == {"compress": True, "explore": False}
        assert norm("algorithm.norm_adv_by_std.explore=false") == {"compress": True, "explore": False}
    from stepentropy_rl.config import AlgorithmConfig

    with pytest.raises(ConfigError, match="norm_adv_by_std.explore must be true or false, got None"):
        AlgorithmConfig(norm_adv_by_std={"compress": True})


def test_entropy_guided_takes_group_relative_advantages_and_paper_2s_absolute_ones_on_request():
    """Paper 2's absolute advantages compare lengths across problems (a 3-move CoT, usually shorter, outranks a 4-move
    one), which taught the embedded policy to drop a move; the experiment's default is group-relative in both stages,
    and paper 2's estimator stays one override away."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        def job(*overrides):
            return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]))
        assert job().algorithm.adv_estimator == {"compress": "grpo", "explore": "grpo"}
        assert job("algorithm.adv_estimator.compress=absolute").algorithm.adv_estimator["compress"] == "absolute"


def test_absolute_advantages_on_a_reward_that_pays_wrong_answers_are_refused():
    """Paper 1's reward pays the skip tier whatever the answer: under A = beta * max(R, 0) a wrong answer would be
    reinforced (entropy_guided.yaml measured accuracy 55% -> 23% in 12 steps). A stage the mode never reaches is not
    checked."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        def job(*overrides):
            return build(compose("config", overrides=["+experiment=step_entropy", "run_dir=/tmp/x", *overrides]))
        job()
        with pytest.raises(ConfigError, match="reward.stages.compress pays wrong answers"):
            job("algorithm.adv_estimator.compress=absolute")
        with pytest.raises(ConfigError, match="reward.stages.explore pays wrong answers"):
            job("algorithm.adv_estimator.explore=absolute", "algorithm.phase.mode=fixed")
        job("algorithm.adv_estimator.explore=absolute", "algorithm.phase.mode=compress")


def test_an_engine_on_part_of_a_gpu_must_reserve_at_most_its_part():
    """Two engines (or an engine and the reference) on one GPU, each reserving 0.85 of it: vLLM fails at start or
    the reference runs out of memory in the prune stage."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        def job(*overrides):
            return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x",
                                                      "model=r1_distill_qwen_7b", "cluster=gpu_8x", "trainer=gpu",
                                                      "rollout=vllm_gpu", *overrides]), check_paths=False)
        with pytest.raises(ConfigError, match=r"gpu_memory_utilization \(0.85\) must be at most the engine's share"):
            job("cluster.rollout.num_gpus=0.5")
        assert job("cluster.rollout.num_gpus=0.5", "rollout.engine.gpu_memory_utilization=0.45").cluster.rollout.num_gpus == 0.5


def test_the_default_skip_limit_is_above_what_pruning_writes_in_the_papers_format():
    """One [SKIP] per pruned step at paper 1's ratio (merge_runs=false) on the default task's longest CoT must not
    cost the skip-count penalty: the terse task's limit of 12 charged it on 45% of those SFT targets."""
    import math

    from stepentropy_rl.data import generated

    with initialize_config_dir(config_dir=CONF, version_base=None):
        job = build(compose("config", overrides=["+experiment=step_entropy", "run_dir=/tmp/x"]))
    limit = next(t["params"]["limit"] for t in job.reward["stages"]["compress"] if t["name"] == "skip_count")
    most = max(math.floor(job.trainer.prune.ratio * len(p.steps)) for p in generated(job.data.task, 2000, 0, "train"))
    assert most < limit


@pytest.mark.parametrize("overrides,warned", [
    (["algorithm.phase.mode=fixed", "trainer.grpo.steps=8"], "mode=fixed cannot leave the compress stage"),
    (["trainer.grpo.steps=5"], "mode=entropy cannot leave the compress stage within trainer.grpo.steps=5"),
    (["trainer.grpo.steps=6"], None),
])
def test_a_schedule_that_never_reaches_its_second_stage_is_said(overrides, warned, caplog):
    """A run labelled fixed or entropy that can only ever compress (too few steps) was accepted without a word."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        composed = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides])
    with caplog.at_level("WARNING"):
        build(composed)
    assert (warned in caplog.text) if warned else "cannot leave" not in caplog.text


def test_each_pipeline_checks_its_own_top_k_against_the_engines_limit():
    """A training job that lowered the engines' max_logprobs was refused for the study's rollout.topk_logprobs, which
    it does not read and may not set (main.misplaced)."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        train = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x",
                                             "+rollout.engine.max_logprobs=10", "trainer.eval.topk_logprobs=10"])
        study = compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x",
                                             "+rollout.engine.max_logprobs=10"])
    build(train)
    with pytest.raises(ConfigError, match=r"rollout.topk_logprobs \(20\) must be at most"):
        build(study)
