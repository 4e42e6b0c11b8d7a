"""The trainer: schedules, parameter groups, data order, kill-and-resume, DDP, fine-tuning, CLI.

Runs use a tiny Mask2Former on the real COCO panoptic sample (copied from ../shared/data/real) with
no augmentation, so a few iterations take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from m2f_core import load_model
from m2f_core.config import BackboneConfig, get_preset
from training.config import TrainConfig
from training.loop import IterationBatches, transfer_weights
from training.optim import lr_factor, param_groups


def tiny_config(**kw):
    base = get_preset("coco_panoptic_r50").replace(
        name="tiny", backbone=BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64,
                                             stem_out_channels=32),
        conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=3, dim_feedforward=64,
        enc_dim_feedforward=64, num_queries=10, train_num_points=256, min_size_test=128, max_size_test=192,
        image_size=128, crop_size=(128, 128))
    return base.replace(**kw)


@pytest.fixture(scope="module")
def coco_root(coco_sample: Path) -> Path:
    tiny_config().to_json(coco_sample / "tiny.json")
    return coco_sample


def train_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--config", str(root / "tiny.json"),
            "--train", f"corrections:{root}", "--out", str(out), "--augmentation", "none",
            "--batch-size", "2", "--num-workers", "0", "--no-progress", "--device", "cpu", *extra]


def run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    last = (out / "checkpoints" / "last").read_text().strip()
    return load_model(out / "checkpoints" / last).state_dict()


# ------------------------------------------------------------------------------------------------ unit

def test_lr_schedules_follow_detectron2():
    step = TrainConfig(max_iter=1000, steps=(0.8, 0.9), warmup_iters=10, warmup_factor=0.001, schedule="step")
    assert lr_factor(0, step) == pytest.approx(0.001)
    assert lr_factor(5, step) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, step) == 1.0 and lr_factor(799, step) == 1.0
    assert lr_factor(800, step) == pytest.approx(0.1) and lr_factor(900, step) == pytest.approx(0.01)
    poly = TrainConfig(max_iter=100, schedule="poly", warmup_iters=0)
    assert lr_factor(0, poly) == 1.0 and lr_factor(50, poly) == pytest.approx(0.5**0.9)
    coco = TrainConfig()  # official COCO: steps at 327778 and 355092 of 368750
    assert lr_factor(327777, coco) == 1.0 and lr_factor(327779, coco) == pytest.approx(0.1)


def test_parameter_groups_follow_the_official_optimizer():
    from m2f_core import build_model

    swin = tiny_config(backbone=BackboneConfig(type="swin", embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                                               window_size=4))
    groups = {g["name"]: g for g in param_groups(build_model(swin), TrainConfig(lr=1e-4))}
    assert groups["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(1e-5)
    assert groups["backbone.patch_embed.proj.weight"]["weight_decay"] == 0.05
    assert groups["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]["weight_decay"] == 0.0
    assert groups["backbone.norm0.weight"]["weight_decay"] == 0.0  # LayerNorm
    assert groups["sem_seg_head.predictor.query_feat.weight"]["weight_decay"] == 0.0  # nn.Embedding
    assert groups["sem_seg_head.pixel_decoder.input_proj.0.1.weight"]["weight_decay"] == 0.0  # GroupNorm
    head = groups["sem_seg_head.predictor.class_embed.weight"]
    assert head["lr"] == 1e-4 and head["weight_decay"] == 0.05


def test_data_order_is_a_function_of_the_iteration():
    one = IterationBatches(dataset_len=7, batch_size=4, seed=3)
    assert one.global_batch(5) == IterationBatches(7, 4, 3).global_batch(5)
    flat = [k for it in range(7) for k in one.global_batch(it)]
    assert sorted(i for e, i in flat if e == 0) == list(range(7))  # each epoch is a permutation
    ranks = [IterationBatches(7, 4, 3, world_size=2, rank=r) for r in range(2)]
    accum = IterationBatches(7, 4, 3, grad_accum=2)
    for it in range(4):
        global_batch = one.global_batch(it)
        assert ranks[0].local_steps(it)[0] + ranks[1].local_steps(it)[0] == global_batch
        assert accum.local_steps(it)[0] + accum.local_steps(it)[1] == global_batch
    with pytest.raises(ValueError, match="divisible"):
        IterationBatches(7, 3, 0, world_size=2)


def test_fine_tuning_keeps_rows_of_classes_with_the_same_name():
    from m2f_core import build_model

    torch.manual_seed(0)
    source = build_model(tiny_config())
    target_cfg = tiny_config(class_names=["person", "my gadget", "sky-other-merged"], is_thing=[True, True, False],
                             dataset_ids=[], colors=[], dataset="custom")
    target = build_model(target_cfg)
    fresh = transfer_weights(target, source)
    assert fresh == ["my gadget"]
    w = "sem_seg_head.predictor.class_embed.weight"
    src_names = source.config.class_names
    assert torch.equal(target.state_dict()[w][0], source.state_dict()[w][src_names.index("person")])
    assert torch.equal(target.state_dict()[w][2], source.state_dict()[w][src_names.index("sky-other-merged")])
    assert torch.equal(target.state_dict()[w][-1], source.state_dict()[w][-1])  # no-object row
    key = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])


# ------------------------------------------------------------------------------------------------ runs

def test_cli_trains_logs_and_refuses_to_overwrite(tmp_path, coco_root):
    out = tmp_path / "run"
    run = subprocess.run(train_cmd(coco_root, out, "--max-iter", "3", "--checkpoint-period", "2", "--log-period", "1"),
                         capture_output=True, text=True, env=run_env(), timeout=600)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [1, 2, 3]
    assert all(x["loss"] > 0 and "lr" in x and "grad_norm" in x for x in lines)
    assert (out / "checkpoints" / "last").read_text().strip() == "iter_0000003"
    assert (out / "checkpoints" / "iter_0000002" / "model.safetensors").exists()
    assert list((out / "tensorboard").glob("events.*"))
    again = subprocess.run(train_cmd(coco_root, out, "--max-iter", "3"), capture_output=True, text=True,
                           env=run_env(), timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr


def test_kill_and_resume_gives_the_same_weights(tmp_path, coco_root):
    straight = tmp_path / "straight"
    run = subprocess.run(train_cmd(coco_root, straight, "--max-iter", "6"), capture_output=True, text=True,
                         env=run_env(), timeout=600)
    assert run.returncode == 0, run.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(coco_root, killed, "--max-iter", "6", "--checkpoint-period", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_env())
    pointer = killed / "checkpoints" / "last"
    deadline = time.time() + 300
    while not pointer.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = pointer.read_text().strip()
    assert stopped_at in ("iter_0000002", "iter_0000004"), stopped_at  # killed mid-run
    resumed = subprocess.run(train_cmd(coco_root, killed, "--max-iter", "6", "--checkpoint-period", "2",
                                       "--resume"), capture_output=True, text=True, env=run_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst


def test_two_process_ddp_equals_one_process(tmp_path, coco_root):
    """2 gloo processes x 1 image == 1 process x 2 accumulated images (the same global batch).

    Point sampling is seeded per (iteration, chunk of the global batch), so both runs draw the same
    points for the same image; the image is the same in both chunks so every normaliser agrees.
    """
    one = tmp_path / "one"
    run = subprocess.run(train_cmd(coco_root, one, "--max-iter", "2", "--grad-accum", "2"), capture_output=True,
                         text=True, env=run_env(), timeout=600)
    assert run.returncode == 0, run.stderr
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           *train_cmd(coco_root, two, "--max-iter", "2")[1:]]
    ddp = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=600)
    assert ddp.returncode == 0, ddp.stderr[:3000]
    a, b = final_weights(one), final_weights(two)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    from m2f_core import build_model

    torch.manual_seed(0)  # the trainer's initialisation (seed 0): the update really moved the weights
    init = build_model(load_model(one / "checkpoints" / "iter_0000002").config).state_dict()
    moved = max(float((a[k].float() - init[k].float()).abs().max()) for k in a)
    assert moved > 1e-4
