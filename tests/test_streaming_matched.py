"""Training from a ``ParquetSource`` with a validation frame: the matched id-dropout rates
count the training rows' OOV share in one extra pass over the source, so an unshuffled source
trains exactly as ``schema.transform`` of its rows; and a bad value in a shuffled source is
reported with its row in the row group, as without shuffling."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.features import OOV_ID
from recsys_mt.data.vocab import SchemaError
from recsys_mt.encoders.unseen_rates import matched_dropout_rates, oov_share, source_oov_shares

SRC = Path(__file__).resolve().parents[1] / "src"


def make_data(tmp_path: Path, history: bool = False):
    """700 rows in row groups of 100, a schema whose ``min_groups=10`` maps rare ids to OOV
    (so the training rows hold OOV ids) and a validation frame of the first 100 rows."""
    rng = np.random.default_rng(0)
    n = 700
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, n),
            "item_id": rng.integers(0, 50, n),
            "click": (rng.random(n) < 0.3).astype(int),
        }
    )
    features = [rm.Sparse("user_id", dim=4), rm.Sparse("item_id", dim=4)]
    if history:
        df["hist"] = [list(rng.integers(0, 60, rng.integers(0, 5))) for _ in range(n)]
        features.append(rm.Sequence("hist", vocab_from="item_id", max_len=4))
    df.to_parquet(tmp_path / "a.parquet", row_group_size=100)
    schema = rm.Schema(features, tasks=[rm.Task("ctr", "click")]).fit(df)
    return df, schema, schema.transform(df.iloc[:100])


def train(schema, data, val, **emb):
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(**emb)], auto_calibrate=None)
    trainer = rm.Trainer(max_epochs=1, batch_size=64, shuffle=False, progress_bar=False)
    trainer.fit(model, data, val)
    return model


class CountingSource:
    """A streaming source that counts the passes and the batches read from the one it wraps."""

    def __init__(self, source):
        self.source, self.passes, self.read = source, 0, 0

    def __len__(self):
        return len(self.source)

    def num_batches(self, rank=0, world_size=1):
        return self.source.num_batches(rank, world_size)

    def batches(self, epoch=0, rank=0, world_size=1, start_batch=0):
        self.passes += 1
        for batch in self.source.batches(epoch, rank, world_size, start_batch):
            self.read += 1
            yield batch


@pytest.mark.parametrize("history", [False, True])
def test_unshuffled_source_trains_as_the_frame_with_a_validation_frame(tmp_path, history):
    torch.set_num_threads(1)
    df, schema, val = make_data(tmp_path, history)
    frame = schema.transform(df)
    assert oov_share(frame["sparse"][:, 1]) > 0  # the training rows hold OOV item ids
    a = train(schema, frame, val)
    source = rm.ParquetSource(tmp_path, schema, batch_size=64, shuffle=False)
    b = train(schema, source, val)
    assert a.encoders[0]._rates == b.encoders[0]._rates
    assert a.encoders[0]._rates["item_id"] == 0.1  # net of the training share: the floor
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_source_shares_equal_the_frame_shares(tmp_path):
    df, schema, _ = make_data(tmp_path, history=True)
    frame = schema.transform(df)
    columns = {"user_id": ("sparse", 0), "item_id": ("sparse", 1), "hist": ("seq/hist", None)}
    source = rm.ParquetSource(tmp_path, schema, batch_size=64, shuffle=True, num_workers=2)
    before = torch.random.get_rng_state()
    shares = source_oov_shares(source, columns)
    assert torch.equal(torch.random.get_rng_state(), before)  # workers' seed draw undone
    assert shares["user_id"] == oov_share(frame["sparse"][:, 0])
    assert shares["item_id"] == oov_share(frame["sparse"][:, 1])
    assert shares["hist"] == oov_share(frame["seq/hist"]) > 0


def test_matched_rates_take_a_counted_training_share():
    val = torch.tensor([OOV_ID, OOV_ID, 5, 6])  # half OOV
    rates = matched_dropout_rates({"a": (0.25, val), "b": (None, val), "c": (0, val)}, 0.1)
    assert rates == {"a": pytest.approx(1 / 3), "b": 0.5, "c": 0.5}


@pytest.mark.parametrize(
    ("match_unseen", "with_val", "passes"), [(True, True, 2), (False, True, 1), (True, False, 1)]
)
def test_the_extra_pass_only_when_needed(tmp_path, match_unseen, with_val, passes):
    df, schema, val = make_data(tmp_path)
    source = CountingSource(rm.ParquetSource(tmp_path, schema, batch_size=64, shuffle=False))
    model = train(schema, source, val if with_val else None, match_unseen=match_unseen)
    assert source.passes == passes
    assert source.read == passes * source.num_batches()
    if passes == 1:
        assert model.encoders[0].dropout_rates == {}


class Recorder(rm.Encoder):
    """A custom encoder with the two-argument ``before_fit`` of the protocol."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def build(self, schema):
        self.out_dim = 1

    def forward(self, batch):
        return batch["sparse"][:, :1].float() * 0

    def before_fit(self, train, val):
        self.calls.append((train, val))


def test_custom_encoders_still_get_none_for_a_source(tmp_path):
    df, schema, val = make_data(tmp_path)
    source = rm.ParquetSource(tmp_path, schema, batch_size=64, shuffle=False)
    rec = Recorder()
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), rec], auto_calibrate=None)
    rm.Trainer(max_epochs=1, progress_bar=False).fit(model, source, val)
    assert len(rec.calls) == 1
    assert rec.calls[0][0] is None and rec.calls[0][1] is val
    assert model._prior_source is None


_DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
import torch
import recsys_mt as rm
from recsys_mt.train import distributed

schema = rm.Schema.from_json(os.path.join({out!r}, "schema.json"))
val = torch.load(os.path.join({out!r}, "val.pt"), weights_only=False)
source = rm.ParquetSource(os.path.join({out!r}, "data"), schema, batch_size=32, seed=1)
model = rm.MultiTaskModel(schema, auto_calibrate=None)
t = rm.Trainer(device="cpu", max_epochs=1, progress_bar=False)
t.fit(model, source, val)
torch.save(dict(model.encoders[0].dropout_rates), os.path.join({out!r}, f"rank{{t.rank}}.pt"))
distributed.cleanup()
"""


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not found",
)
def test_two_ranks_count_all_rows_and_agree(tmp_path):
    (tmp_path / "data").mkdir()
    df, schema, val = make_data(tmp_path / "data")
    schema.to_json(tmp_path / "schema.json")
    torch.save(val, tmp_path / "val.pt")
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(src=str(SRC), out=str(tmp_path))))
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun) if torchrun.exists() else "torchrun"]
    cmd += ["--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = train(schema, schema.transform(df), val).encoders[0].dropout_rates
    for r in (0, 1):
        assert torch.load(tmp_path / f"rank{r}.pt") == dict(expected)


# --------------------------------------------------------------------------- error rows


@pytest.fixture
def bad_file(tmp_path):
    """400 rows in row groups of 100; ``click`` is NaN at row 237 (row 37 of row group 2)
    and at row 170 (row 70 of row group 1)."""
    df = pd.DataFrame({"user_id": np.arange(400) % 20, "click": np.arange(400) % 2 * 1.0})
    schema = rm.Schema([rm.Sparse("user_id")], tasks=[rm.Task("ctr", "click")]).fit(df)
    df.loc[[170, 237], "click"] = np.nan
    df.iloc[200:].to_parquet(tmp_path / "b.parquet", row_group_size=100)
    df.iloc[:200].to_parquet(tmp_path / "a.parquet", row_group_size=100)
    return tmp_path, schema


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_bad_value_is_reported_at_its_row_in_the_row_group(bad_file, shuffle):
    path, schema = bad_file
    source = rm.ParquetSource(path / "b.parquet", schema, shuffle=shuffle, shuffle_buffer=200)
    with pytest.raises(SchemaError, match=r"b\.parquet: row group 0: .*NaN at row 37 \("):
        list(source.batches())


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_rank_span_starting_inside_a_row_group_counts_from_the_group(bad_file, shuffle):
    path, schema = bad_file
    source = rm.ParquetSource(path / "a.parquet", schema, shuffle=shuffle, seed=3)
    errors = []  # 4 ranks of 50 rows: the bad row's rank reads rows 50 to 99 of row group 1
    for rank in range(4):
        try:
            list(source.batches(0, rank=rank, world_size=4))
        except SchemaError as e:
            errors.append(str(e))
    assert len(errors) == 1
    assert re.search(r"a\.parquet: row group 1: .*NaN at row 70 \(", errors[0]), errors[0]
