"""Weight sync over a collective group: buckets planned, streamed from learner rank 0, rebuilt by each engine."""
import multiprocessing as mp
import socket

import pytest
import torch

from stepentropy_rl.weight_sync import open_group, plan_buckets, plan_bytes, receive, send


def test_plan_keeps_order_and_bucket_size():
    specs = [("embed", (10, 4)), ("a", (3,)), ("b", (2, 2)), ("head", (10, 4))]
    plan = plan_buckets(specs, "bfloat16", 16 * 2 / 2**20)  # 16 bf16 elements a bucket
    assert [[e[0] for e in b[2]] for b in plan] == [["embed"], ["a", "b"], ["head"]]  # oversized: a bucket each
    assert [b[1] for b in plan] == [40, 7, 40] and plan_bytes(plan) == 87 * 2
    assert [e[0] for b in plan for e in b[2]] == [n for n, _ in specs]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member(rank, world, url, plan, state, q):
    _, group = open_group(url, rank, world, "gloo", timeout_s=60)
    if rank == 0:
        q.put((rank, send(group, plan, iter(state.items()), "cpu")))
    else:
        # numpy arrays travel by value: a torch tensor would travel as a shared-memory handle that the parent opens
        # through this process, which may have exited by then (FileNotFoundError, seen once in CI)
        q.put((rank, {name: t.clone().numpy() for name, t in receive(group, plan, "cpu")}))


@pytest.mark.parametrize("store", ["tcp", "file"])
def test_three_members_receive_every_tensor_exactly(store, tmp_path):
    """Rank 0 (the learner) broadcasts multi-bucket plans; both engines rebuild the same state dict, meeting over a
    TCP store (a cluster) or a file store (a local run, no listening socket)."""
    g = torch.Generator().manual_seed(0)
    state = {"embed": torch.randn(50, 8, generator=g), "norm": torch.randn(8, generator=g),
             "head": torch.randn(50, 8, generator=g)}
    plan = plan_buckets([(k, tuple(v.shape)) for k, v in state.items()], "float32", 1e-3)  # 262 floats a bucket
    assert len(plan) == 3
    ctx = mp.get_context("spawn")
    url = f"tcp://127.0.0.1:{_free_port()}" if store == "tcp" else f"file://{tmp_path / 'store'}"
    q = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, 3, url, plan, state, q)) for r in range(3)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in range(3))
    for p in procs:
        p.join(timeout=60)
    assert got[0] == plan_bytes(plan)
    for rank in (1, 2):
        assert set(got[rank]) == set(state) and all(torch.equal(torch.from_numpy(got[rank][k]), v)
                                                    for k, v in state.items())


def _fsdp_member(role, url, learner_url, plan, state, q, done):
    """Two learner ranks whose every tensor is a collective over their own group (as FSDP's ``full_tensor``), rank 0
    broadcasting to one engine; the engine dies after the first bucket."""
    import datetime
    import os

    import torch.distributed as dist

    from stepentropy_rl.weight_sync import make_store

    if role == "engine":
        _, group = open_group(url, 1, 2, "gloo", timeout_s=60)
        next(iter(receive(group, plan, "cpu")))
        os._exit(1)
    rank = int(role[-1])
    timeout = datetime.timedelta(seconds=20)
    learners = dist.ProcessGroupGloo(make_store(learner_url, rank, 2, timeout), rank, 2, timeout)

    def gathered():
        for name, t in state.items():
            t = t.clone()
            learners.allreduce([t]).wait()  # every rank must join each tensor's collective
            yield name, t / 2

    try:
        group = open_group(url, 0, 2, "gloo", timeout_s=60)[1] if rank == 0 else None
        q.put((role, send(group, plan, gathered(), "cpu")))
    except Exception as e:
        q.put((role, f"{type(e).__name__}: {e}"))
    done.wait(60)  # alive as a learner actor stays after a failed call: its group's peers get no "connection closed"


def test_an_engine_dying_mid_push_leaves_the_learner_ranks_in_step(tmp_path):
    """Rank 0's broadcast fails at the second bucket; it still walks every tensor, so rank 1's collectives complete
    (without that, rank 1 waited in the next tensor's collective until its timeout) and rank 0 raises the failure."""
    state = {f"w{i}": torch.full((64,), float(i)) for i in range(4)}
    plan = plan_buckets([(k, tuple(v.shape)) for k, v in state.items()], "float32", 256 / 2**20)  # one tensor a bucket
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    url, learner_url = f"file://{tmp_path / 'sync'}", f"file://{tmp_path / 'learners'}"
    procs = [ctx.Process(target=_fsdp_member, args=(role, url, learner_url, plan, state, q, done))
             for role in ("engine", "rank0", "rank1")]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in range(2))
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert got["rank1"] == 0  # walked every tensor, with rank 0
    assert got["rank0"].startswith("RuntimeError: weight sync: a broadcast to the engines failed after 256 bytes")


def test_a_bad_rendezvous_is_named():
    import datetime

    from stepentropy_rl.weight_sync import make_store

    with pytest.raises(ValueError, match="rendezvous must be"):
        make_store("udp://x:1", 0, 1, datetime.timedelta(seconds=1))


def test_send_checks_the_plan_against_the_learners_names():
    plan = plan_buckets([("a", (2,))], "float32", 1.0)
    with pytest.raises(RuntimeError, match="expected 'a'"):
        send(None, plan, iter([("b", torch.zeros(2))]), "cpu")


def test_a_push_waits_for_the_gpu_before_it_returns(monkeypatch):
    """NCCL's broadcast returns once queued: the push's seconds (time/sync) must include the transfer itself."""
    from types import SimpleNamespace

    from stepentropy_rl import weight_sync

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    weight_sync.settle("cpu")
    assert synced == []
    weight_sync.settle(torch.device("cuda", 1))
    assert synced == ["cuda:1"]
    settled = []
    monkeypatch.setattr(weight_sync, "settle", settled.append)
    group = SimpleNamespace(broadcast=lambda bufs, opts: SimpleNamespace(wait=lambda: None))
    plan = plan_buckets([("a", (2,))], "float32", 1.0)
    assert send(group, plan, iter([("a", torch.ones(2))]), "cpu") == 8 and settled == ["cpu"]
    assert send(None, plan, iter([("a", torch.ones(2))]), "cpu") == 0 and settled == ["cpu"]  # other ranks send none


def test_a_push_sends_the_floating_weights_only():
    """A push sends one dtype: an integer buffer in the state dict was planned and cast to bf16 with the weights."""
    from types import SimpleNamespace

    from workers.learner import Learner

    model = torch.nn.Linear(2, 2)
    model.register_buffer("token_type", torch.tensor([3, 1], dtype=torch.int64))
    model.config = SimpleNamespace(tie_word_embeddings=False)
    learner = SimpleNamespace(model=model, export_dtype=torch.bfloat16)
    learner._export_items = lambda: Learner._export_items(learner)
    assert [name for name, _ in Learner._export_items(learner)] == ["weight", "bias"]
    assert Learner.weight_specs(learner) == ("bfloat16", [("weight", [2, 2]), ("bias", [2])])


@pytest.mark.engine
def test_learners_stream_weights_into_a_running_engine_and_recover_a_restarted_one(ray_session, micro_model):
    """After SFT steps the engine samples from the learners' weights (log-probs equal); Ray restarts a killed engine
    with the initial weights, and a re-opened group brings it back to the learners' weights."""
    import ray
    from transformers import AutoTokenizer

    from stepentropy_rl.batch import Batch
    from stepentropy_rl.config import LearnerCluster, OptimConfig
    from stepentropy_rl.driver.roles import spawn_learners
    from stepentropy_rl.driver.rollout_group import WeightBroadcast, wait_alive
    from stepentropy_rl.tasks.basket import BasketConfig, generate
    from stepentropy_rl.tokenizer import prompt_ids
    from workers.rollout import RolloutWorker

    tok = AutoTokenizer.from_pretrained(micro_model)
    probs = generate(BasketConfig(), 4, 3, "test")
    pids = [prompt_ids(tok, p.prompt) for p in probs]
    sft = Batch.from_pairs(pids, [tok(p.solution, add_special_tokens=False).input_ids + [tok.eos_token_id]
                                  for p in probs], tok.pad_token_id)
    fp32 = LearnerCluster(world_size=2, num_cpus=0.25, autocast_bf16=False)  # as the engine computes
    learners = spawn_learners(micro_model, fp32, OptimConfig(lr=1e-2), micro_batch_size=2, pad_id=tok.pad_token_id)
    engine = RolloutWorker.options(num_cpus=0.25, max_restarts=1, max_task_retries=0).remote(
        micro_model, {"dtype": "float32", "max_model_len": 512, "enforce_eager": True})
    try:
        sync = WeightBroadcast(learners, [engine], "gloo", bucket_mb=0.05)
        assert len(sync.plan) > 3  # several buckets
        for _ in range(3):
            learners.train_step(sft, {"kind": "sft"})

        def gap() -> float:
            outs = ray.get(engine.generate.remote(pids, {"temperature": 1.0, "max_tokens": 12, "logprobs": 0}))
            sampled = Batch.from_pairs(pids, [o[0]["token_ids"] for o in outs], tok.pad_token_id)
            engine_lp = sampled.response_column([o[0]["logprobs"] for o in outs])
            return float((learners.logprobs_and_entropy(sampled)["logprobs"] - engine_lp).abs().max())

        assert gap() > 1e-2  # the engine still serves the initial weights
        assert sync.push() == sync.bytes == plan_bytes(sync.plan)
        assert gap() < 1e-3
        ray.kill(engine, no_restart=False)
        _wait_until_gone(engine)
        wait_alive([engine])
        assert gap() > 1e-2  # restarted from the initial checkpoint
        sync.reopen()
        sync.push()
        assert gap() < 1e-3
    finally:
        learners.shutdown()
        ray.kill(engine)


def _wait_until_gone(actor, timeout_s: float = 60.0) -> None:
    """ray.kill is asynchronous: wait until a call to the actor fails before waiting for its restart."""
    import time

    import ray

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.2)
    raise AssertionError("the killed actor kept answering")


def test_a_reopened_group_aborts_the_old_one_first(tmp_path):
    """An engine restart reopens the sync group: the old group is aborted (an NCCL communicator with a dead peer, left
    to its destructor, can wait on that peer), and the new one carries the next push."""
    from stepentropy_rl.weight_sync import reopen_group

    class _Old:
        aborted = 0

        def abort(self):
            self.aborted += 1

    old = _Old()
    first = reopen_group((None, old), f"file://{tmp_path / 'a'}", 0, 1, "gloo")
    assert old.aborted == 1
    second = reopen_group(first, f"file://{tmp_path / 'b'}", 0, 1, "gloo")  # a real gloo group aborted
    plan = plan_buckets([("w", (3,))], "float32", 1.0)
    assert send(second[1], plan, iter([("w", torch.ones(3))]), "cpu") == 12
    assert reopen_group(None, f"file://{tmp_path / 'c'}", 0, 1, "gloo")[1] is not None
