"""The keys every run config (configs/*.py) has, with the paper's values (arXiv 2404.01911, section 4) as
defaults; configs/vlrm.py, vlrm_rs.py, tiny.py and the shapes world's runs override what differs.
main.py validates the whole config before anything compiles (vlrm_jax/rl/run.py)."""
from ml_collections import ConfigDict

from vlrm_jax.sharding import DEFAULT_RULES


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.workdir = "runs/vlrm"  # metrics, samples, TensorBoard, run config: a local or mounted folder
    # "": WORKDIR/checkpoints. On a pod a gs:// URL every host reaches: orbax writes each host's
    # shards there itself, and a job that comes back on another slice restores from it.
    c.checkpoint_dir = ""
    c.seed = 0
    c.total_steps = 1000
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.log_every = 1
    c.eval_every = 250  # 0: only at the end (when eval.source is set)
    c.samples_every = 50  # 0: no sample tables
    c.max_skips_in_row = 10
    c.batch_size = 4096  # the rollout batch of one update
    # Mesh (data, fsdp, tensor): one size may be -1 (the devices the others leave). data and fsdp
    # split the batch; fsdp also splits every weight's embed dimension, tensor its heads / mlp /
    # vocab dimensions. mesh_rules: (logical axis, mesh axis or axes or None), first match wins.
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.mesh_rules = DEFAULT_RULES
    # Several processes (GPU cluster, TPU pod): enabled with empty fields lets jax detect the
    # cluster (TPU pods, SLURM, Open MPI); otherwise every process gets the coordinator's
    # host:port, the process count and its own id. cpu_collectives: for CPU devices (gloo).
    c.distributed = ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                                    cpu_collectives="gloo", timeout_s=300))

    # Converted folders (python -m convert.blip2 / blip2_itm / open_clip). ref_lm "": the
    # captioner's own OPT-2.7B, the paper's reference LM (held once). dtype of the frozen towers.
    # share_trunk / share_ref_lm: run the ITM's ViT trunk as the captioner's, score `ref` with the
    # captioner's OPT: "auto" when the loaded weights are equal (the released checkpoints' case,
    # which a step built from shapes alone assumes), "yes" / "no" without comparing.
    c.model = ConfigDict(dict(source="folders", captioner="", itm="", ref_lm="", clip="", dtype="bfloat16",
                              share_trunk="auto", share_ref_lm="auto"))
    c.rollout = ConfigDict(dict(max_new_tokens=60, top_k=6, temperature=2.0))
    # bad_phrases / exempt_words "": the lists shipped in vlrm_jax/assets; extra_exempt_words adds.
    # weights: sim scales the ITM term (with Phi inside it for vlrm_rs), rs is Phi's weight
    # inside sim (vlrm_rs only); the paper's 1 and 0.3. The other terms keep weight 1 (ref 0 for vlrm_rs).
    c.reward = ConfigDict(dict(kind="vlrm", target=0, bad_phrases="", exempt_words="", extra_exempt_words=(),
                               itm_max_length=64, weights=ConfigDict(dict(sim=1.0, rs=0.3))))
    # grad_reduce "step": each data-parallel device sums its rows' gradients over the micro-batches
    # and the devices' sums meet once per step; "micro_batch": in every micro-batch (docs/scaling.md)
    # estimator: a2c, scst, rloo, grpo, drgrpo (vlrm_jax/rl/estimators.py); group_size: captions per
    # image for the grouped ones (rloo, grpo, drgrpo), which then roll out batch_size x group_size
    # component_norm: standardise each reward term before the weighted sum; epochs / minibatches /
    # clip_eps / value_clip: PPO's reuse of a rollout; kl_coef / kl_estimator (k1, k3) / kl_in (loss,
    # reward): KL to the initial policy; entropy_coef: an entropy bonus (all off: the paper's update)
    c.a2c = ConfigDict(dict(estimator="a2c", group_size=4, prob="sampled", objective="prob", micro_batches=64,
                            learning_rate=1e-5, warmup_steps=20, clip_norm=1.0, clip_mode="joint", grad_reduce="step",
                            component_norm=False, epochs=1, minibatches=1, clip_eps=0.0, value_clip=0.0,
                            kl_coef=0.0, kl_estimator="k3", kl_in="loss", entropy_coef=0.0))
    c.value = ConfigDict(dict(lora_rank=16, lora_alpha=32.0, head="transformer", head_layers=3, head_mlp_ratio=6))
    # a folder, tar shards ("shards/*.tar") or "tfds:NAME/SPLIT"; min_side: smaller images are skipped
    c.data = ConfigDict(dict(source="", workers=16, min_side=32))
    # held-out CLIP Recall: a folder or "tfds:coco_captions/test" (Karpathy test), ranked by eval.clip
    # no_repeat_ngram_size: the paper's beam bans repeated bigrams (2); 0 lifts the ban.
    c.eval = ConfigDict(dict(source="", clip="", batch_size=64, limit=0, no_repeat_ngram_size=2))
    return c
