"""``Trainer.fit`` on a streaming source: the same result as on the frame the source streams,
and a rank's empty padding batches change nothing."""

from __future__ import annotations

import pytest
import torch
from _trainer_helpers import LogReg, make_frame
from test_loss_windows import build

import recsys_mt as rm
from recsys_mt.data.loader import BatchLoader, SourceLoader, is_source


class FrameSource:
    """A minimal streaming source over an in-memory frame, shuffled like ``BatchLoader``;
    ``pad`` empty batches are appended to every epoch (as a rank with fewer rows gets)."""

    def __init__(self, frame, batch_size, seed=0, pad=0):
        self.frame, self.batch_size, self.seed, self.pad = frame, batch_size, seed, pad

    def __len__(self):
        return len(self.frame)

    def num_batches(self, rank=0, world_size=1):
        return -(-len(self.frame) // self.batch_size) + self.pad

    def batches(self, epoch, rank=0, world_size=1, start_batch=0):
        loader = BatchLoader(self.frame, self.batch_size, shuffle=True, seed=self.seed)
        loader.set_epoch(epoch)
        out = list(loader)
        out += [{k: v[:0] for k, v in out[0].items()} for _ in range(self.pad)]
        yield from out[start_batch:]


def fit(model, data, **kw):
    trainer = rm.Trainer(
        max_epochs=2,
        progress_bar=False,
        device="cpu",
        optimizer="sgd",
        lr=0.3,
        sparse_embeddings=False,
        **kw,
    )
    trainer.fit(model, data)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("accum", [1, 2])
def test_source_equals_frame_for_a_funnel_model(pad, accum):
    ref, frame = build(rm.UncertaintyWeighting(), "conditional")
    streamed, _ = build(rm.UncertaintyWeighting(), "conditional")
    s_ref, t_ref = fit(ref, frame, batch_size=32, grad_accum_steps=accum)
    s_src, t_src = fit(streamed, FrameSource(frame, 32, pad=pad), grad_accum_steps=accum)
    for key in s_ref:
        torch.testing.assert_close(s_src[key], s_ref[key], rtol=1e-6, atol=1e-7, msg=key)
    assert t_src.history[-1]["train/loss"] == pytest.approx(t_ref.history[-1]["train/loss"])
    for key in ("train/loss/ctr", "train/loss/cvr"):
        assert t_src.history[-1][key] == pytest.approx(t_ref.history[-1][key], rel=1e-5)


def test_source_equals_frame_for_a_plain_model_with_padding():
    frame, _ = make_frame(300)
    torch.manual_seed(0)
    a = LogReg()
    b = LogReg()
    b.load_state_dict(a.state_dict())
    s_ref, _ = fit(a, frame, batch_size=64)
    s_src, t = fit(b, FrameSource(frame, 64, pad=3))
    for key in s_ref:
        torch.testing.assert_close(s_src[key], s_ref[key], rtol=1e-6, atol=1e-7)
    assert t.global_step == 2 * (5 + 3)  # padding batches are steps too (every rank steps alike)


def test_source_loader_and_detection():
    frame, _ = make_frame(50)
    assert is_source(FrameSource(frame, 8)) and not is_source(frame)
    with pytest.raises(TypeError, match="not a streaming source"):
        SourceLoader(frame)
    loader = SourceLoader(FrameSource(frame, 8))
    loader.set_epoch(1, start_batch=5)
    assert len(loader) == 7 and len(list(loader)) == 2


def test_a_model_that_prepares_frames_refuses_a_source():
    _, frame = build(rm.StaticWeights(), "entire_space")

    class Preparing(LogReg):
        streamable = False

    with pytest.raises(NotImplementedError, match="cannot train from a streaming source"):
        rm.Trainer(max_epochs=1, progress_bar=False).fit(Preparing(), FrameSource(frame, 8))


@pytest.mark.parametrize(
    "n, world, batch", [(31, 3, 4), (30, 4, 4), (9, 2, 4), (33, 4, 2), (64, 2, 32)]
)
def test_in_memory_ranks_see_every_row_once_with_equal_step_counts(n, world, batch):
    frame, _ = make_frame(n)
    frame["row"] = torch.arange(n)
    lengths, rows = set(), []
    for rank in range(world):
        loader = BatchLoader(frame, batch, shuffle=True, seed=5, rank=rank, world_size=world)
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.add(len(batches))
        rows += [r for b in batches for r in b["row"].tolist()]
        empty = [b for b in batches if len(b["row"]) == 0]
        assert all(b["dense"].shape == (0, 8) for b in empty)  # typed padding
    assert len(lengths) == 1
    assert sorted(rows) == list(range(n))  # every row exactly once across the ranks
    per_rank = [-(-(n - r) // world) for r in range(world)]
    (steps,) = lengths
    padded = any(-(-k // batch) < steps for k in per_rank)
    assert padded == ((n, world, batch) in {(9, 2, 4), (33, 4, 2)})
