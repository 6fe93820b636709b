"""A run killed in the middle of an epoch and resumed from ``ModelCheckpoint(every_n_steps=...)``
ends bit-identical to an uninterrupted run, from memory and from Parquet."""

from __future__ import annotations

import pytest
import torch
from test_loss_windows import frame_df

import recsys_mt as rm


class Crash(rm.Callback):
    """Raises after optimiser step ``at`` (after the checkpoint callback has run)."""

    run_last = True

    def __init__(self, at: int):
        self.at = at

    def on_train_step_end(self, trainer, model):
        if trainer.global_step == self.at:
            raise KeyboardInterrupt


def make_schema():
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
        ],
    )


def new_model(schema, seed):
    torch.manual_seed(seed)
    return rm.MultiTaskModel(  # id dropout on: the RNG state must be restored too
        schema,
        head=rm.MMoE(num_experts=2, expert_dims=(16,), tower_dims=(8,), dropout=0.1),
        balancer=rm.UncertaintyWeighting(),
        supervision="conditional",
    )


def run(tmp_path, name, schema, train, val, resume=None, crash=None, seed=0):
    ckpt = rm.ModelCheckpoint(tmp_path / name, every_n_steps=3)
    callbacks = [rm.EarlyStopping("auto", patience=5), ckpt]
    if crash is not None:
        callbacks.append(Crash(crash))
    trainer = rm.Trainer(
        max_epochs=3,
        batch_size=16,
        grad_accum_steps=2,
        scheduler="cosine",
        progress_bar=False,
        device="cpu",
        seed=7,
        callbacks=callbacks,
    )
    model = new_model(schema, seed)
    trainer.fit(model, train, val, resume_from=resume)
    return model, trainer, ckpt


def assert_same_run(a, ta, b, tb):
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert ta.global_step == tb.global_step
    strip = [{k: v for k, v in row.items() if not k.startswith("time/")} for row in ta.history]
    assert strip == [
        {k: v for k, v in row.items() if not k.startswith("time/")} for row in tb.history
    ]


def check_mid_epoch_resume(tmp_path, schema, train, val, crash_at):
    full, t_full, _ = run(tmp_path, "full", schema, train, val)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "part", schema, train, val, crash=crash_at)
    ckpt = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    assert ckpt["progress"] is not None and ckpt["progress"]["batches"] > 0  # mid-epoch
    assert ckpt["global_step"] == crash_at - crash_at % 3
    resumed, t_res, _ = run(
        tmp_path, "resumed", schema, train, val, resume=tmp_path / "part" / "last.ckpt", seed=99
    )
    assert_same_run(resumed, t_res, full, t_full)


def test_mid_epoch_resume_from_memory_is_bit_identical(tmp_path):
    df = frame_df(n=256)
    schema = make_schema().fit(df)
    train, val = schema.transform(df), schema.transform(df.head(100))
    # 16 micro-batches, 8 steps per epoch: step 13 is in the middle of epoch 1 (saved at 12)
    check_mid_epoch_resume(tmp_path, schema, train, val, crash_at=13)


def test_mid_epoch_resume_from_parquet_is_bit_identical(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    df = frame_df(n=300)
    schema = make_schema().fit(df)
    for i, part in enumerate((df.iloc[:170], df.iloc[170:])):
        table = pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table, tmp_path / f"part{i}.parquet", row_group_size=40)
    train = rm.ParquetSource(tmp_path, schema, batch_size=16, shuffle_buffer=80, seed=3)
    val = schema.transform(df.head(100))
    check_mid_epoch_resume(tmp_path, schema, train, val, crash_at=14)


def test_epoch_end_checkpoints_hold_no_progress(tmp_path):
    df = frame_df(n=128)
    schema = make_schema().fit(df)
    frame = schema.transform(df)
    _, trainer, ckpt = run(tmp_path, "x", schema, frame, frame)
    saved = torch.load(ckpt.last_path, weights_only=True)
    assert saved["progress"] is None and saved["epoch"] == trainer.max_epochs - 1
    with pytest.raises(ValueError, match="every_n_steps"):
        rm.ModelCheckpoint(tmp_path, every_n_steps=0)
