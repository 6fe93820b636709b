"""ParquetSource: planning, exact-once sharding, determinism, resume, memory bound, errors."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import recsys_mt as rm  # noqa: E402
from recsys_mt.data.parquet import ParquetReadError, ParquetSource  # noqa: E402
from recsys_mt.data.parquet_plan import resume_point  # noqa: E402

SIZES = [(1000, 256), (777, 100), (568, 300)]  # (rows, row group size) per file
TOTAL = sum(n for n, _ in SIZES)


def make_df(n=TOTAL, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, n).astype(object)
    users[rng.random(n) < 0.05] = None  # nullable int64 ids: chunks with and without nulls
    click = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "row": np.arange(n),
            "user_id": pd.array(users.tolist(), dtype="Int64"),
            "item_id": rng.choice(["a", "b", "c", "d", "e"], n),
            "price": np.where(rng.random(n) < 0.03, np.nan, rng.uniform(1, 100, n)),
            "hist": [
                None if i % 17 == 0 else rng.integers(0, 40, rng.integers(0, 7)).tolist()
                for i in range(n)
            ],
            "click": click,
            "purchase": click * rng.integers(0, 2, n),
        }
    )


def make_schema():
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Dense("price", transform="log1p", nan="mean"),
            rm.Dense("row", transform="none"),
            rm.Sequence("hist", max_len=4),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    )


def write_shards(df, root, sizes=SIZES):
    """File i in a nested folder for i > 0, so the directory search is recursive."""
    start = 0
    for i, (n, group_size) in enumerate(sizes):
        folder = root / (f"sub{i}" if i else "")
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(df.iloc[start : start + n], preserve_index=False)
        pq.write_table(table, folder / f"part{i}.parquet", row_group_size=group_size)
        start += n


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    df = make_df()
    write_shards(df, root)
    schema = make_schema().fit(df)
    return root, df, schema


def source(data, **kw):
    root, _, schema = data
    kw = {"batch_size": 64, "shuffle_buffer": 400, "columns": ["row"], **kw}
    return ParquetSource(root, schema, **kw)


def worker_streams(src, epoch, rank, world_size):
    workers = max(src.num_workers, 1)
    return [list(src._worker_batches(epoch, rank, world_size, w, 0)) for w in range(workers)]


def emulate(src, epoch, rank, world_size):
    """What a DataLoader over ``src.num_workers`` workers yields, in process: round-robin over
    the workers' own batch streams, then the empty padding."""
    streams = worker_streams(src, epoch, rank, world_size)
    out = [s[t] for t in range(max(map(len, streams))) for s in streams if t < len(s)]
    return out + [src.empty_batch()] * (src.num_batches(rank, world_size) - len(out))


def rows_of(batches):
    return torch.cat([b["raw/row"] for b in batches]).tolist()


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# ----------------------------------------------------------------------------- planning
def test_plan_from_metadata_without_reading_data(data, monkeypatch):
    root, _, _ = data
    monkeypatch.setattr(
        "recsys_mt.data.parquet._Reader.read", lambda *a: pytest.fail("data was read")
    )
    src = source(data, num_workers=2)
    assert rm.ParquetSource is ParquetSource and len(src) == TOTAL
    assert [p.replace(str(root), "") for p in src.files] == [
        "/part0.parquet",
        "/sub1/part1.parquet",
        "/sub2/part2.parquet",
    ]
    assert [g.rows for g in src.row_groups if g.file == 1] == [100] * 7 + [77]
    assert src.num_batches(0, 3) == src.num_batches(2, 3)
    one = ParquetSource(src.files[1], data[2], columns="row")
    assert len(one) == 777 and one.files == [src.files[1]]
    listed = ParquetSource(src.files[::-1], data[2])
    assert listed.files == src.files[::-1]  # a list keeps its order


# ----------------------------------------------------------------------------- exact once
def test_two_ranks_two_dataloader_workers_every_row_once_round_robin_and_resume(data):
    src = source(data, num_workers=2, batch_size=50, shuffle_buffer=300)
    seen = []
    for rank in range(2):
        batches = list(src.batches(1, rank=rank, world_size=2))
        assert len(batches) == src.num_batches(rank, 2) == src.num_batches(0, 2)
        same(batches, emulate(src, 1, rank, 2))  # DataLoader's order
        seen += rows_of(batches)
        for n in (7, len(batches) - 1):  # resumes with worker 1, then near the end
            same(list(src.batches(1, rank=rank, world_size=2, start_batch=n)), batches[n:])
    assert sorted(seen) == list(range(TOTAL))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_three_ranks_every_row_once_with_equal_step_counts(data, workers):
    src = source(data, batch_size=37, shuffle_buffer=250, num_workers=workers)
    seen, lengths = [], set()
    for rank in range(3):
        batches = emulate(src, 2, rank, 3)
        lengths.add(len(batches))
        real = [b for b in batches if len(b["raw/row"])]
        assert all(len(b["raw/row"]) == 0 for b in batches[len(real) :])  # padding comes last
        assert sum(len(b["raw/row"]) < 37 for b in real) <= workers  # one short per worker
        seen += rows_of(batches)
    assert sorted(seen) == list(range(TOTAL))
    assert len(lengths) == 1  # every rank takes the same number of steps


def test_padding_batches_are_empty_and_typed_like_real_ones(data):
    # 2345 rows on 2 ranks: 1173 and 1172 = 4 * 293, so rank 1 has one batch less
    src = source(data, batch_size=293)
    assert src.num_batches(0, 2) == src.num_batches(1, 2) == 5
    real = list(src.batches(0, rank=0, world_size=2))
    padded = list(src.batches(0, rank=1, world_size=2))
    assert len(real[-1]["raw/row"]) == 1 and len(padded[-1]["raw/row"]) == 0
    for k, v in real[0].items():
        empty = padded[-1][k]
        assert empty.dtype == v.dtype and empty.shape == (0, *v.shape[1:])


# ----------------------------------------------------------------------------- order
def test_order_is_a_function_of_seed_and_epoch(data):
    src = source(data)
    a, b = rows_of(src.batches(0)), rows_of(source(data).batches(0))
    assert a == b and sorted(a) == list(range(TOTAL))
    assert rows_of(src.batches(1)) != a
    assert rows_of(source(data, seed=5).batches(0)) != a
    assert a != list(range(TOTAL))


def test_unshuffled_epoch_equals_whole_frame_transform(data):
    _, df, schema = data
    whole = schema.transform(df)
    for workers in (0, 1):
        src = source(data, shuffle=False, num_workers=workers, batch_size=100)
        got = list(src.batches(0)) if workers == 0 else emulate(src, 0, 0, 1)
        cat = {k: torch.cat([b[k] for b in got]) for k in got[0]}
        assert set(cat) == set(whole.keys()) | {"raw/row"}
        for k in whole.keys():
            if k != "group":
                assert torch.equal(cat[k], whole[k]), k
        assert cat["raw/row"].tolist() == list(range(TOTAL))
        # group: stable hashed codes, the same partition of rows as the frame's codes
        pairs = set(zip(cat["group"].tolist(), whole["group"].tolist()))
        assert len(pairs) == len(set(cat["group"].tolist())) == len(set(whole["group"].tolist()))


# ----------------------------------------------------------------------------- resume
def test_resume_equals_the_tail_of_an_uninterrupted_epoch(data, monkeypatch):
    for rank, workers in [(0, 1), (1, 3), (2, 2)]:
        src = source(data, batch_size=40, shuffle_buffer=200, num_workers=workers)
        for w, full in enumerate(worker_streams(src, 3, rank, 3)):
            for skip in (1, 4, len(full) // 2, len(full) - 1, len(full)):
                same(list(src._worker_batches(3, rank, 3, w, skip)), full[skip:])
    src = source(data, batch_size=40, shuffle_buffer=200)
    full = list(src.batches(4, rank=1, world_size=2))
    reads = []
    read = ParquetSource._read_chunk
    monkeypatch.setattr(
        ParquetSource, "_read_chunk", lambda s, r, p: reads.append(p) or read(s, r, p)
    )
    counts = []
    for n in (0, 3, 20, len(full) - 1, len(full)):
        same(list(src.batches(4, rank=1, world_size=2, start_batch=n)), full[n:])
        counts.append(len(reads))
        reads.clear()
    # chunks (up to 200 rows, or one row group of up to 300) before a resume point are not read
    assert counts[0] >= counts[1] > counts[2] > counts[3] == 1 and counts[4] == 0
    assert src.state(4, 5, world_size=2) == {"epoch": 4, "start_batch": 5}
    assert src.state(4, len(full), world_size=2) == {"epoch": 5, "start_batch": 0}
    with pytest.raises(ValueError, match="start_batch"):
        src.batches(0, rank=1, world_size=2, start_batch=len(full) + 1)


@pytest.mark.parametrize("counts", [[3, 1], [3, 3, 2], [0, 2, 1], [5, 4, 4, 4], [2]])
def test_resume_point_follows_the_round_robin(counts):
    order = [w for t in range(max(counts)) for w in range(len(counts)) if t < counts[w]]
    for n in range(len(order) + 1):
        skips, first = resume_point(counts, n)
        assert skips == [order[:n].count(w) for w in range(len(counts))]
        if n < len(order):
            # going on from `first` in cyclic order, past exhausted workers, gives order[n]
            cycle = [(first + i) % len(counts) for i in range(len(counts))]
            assert next(w for w in cycle if skips[w] < counts[w]) == order[n]


# ----------------------------------------------------------------------------- memory
def test_chunks_are_bounded_by_the_shuffle_buffer(data, monkeypatch):
    sizes = []
    read = ParquetSource._read_chunk

    def record(self, reader, pieces):
        table = read(self, reader, pieces)
        sizes.append((table.num_rows, len(pieces)))
        return table

    monkeypatch.setattr(ParquetSource, "_read_chunk", record)
    src = source(data, shuffle_buffer=150, batch_size=32)
    assert sorted(rows_of(src.batches(0))) == list(range(TOTAL))
    assert sizes and all(n <= 150 or pieces == 1 for n, pieces in sizes)
    assert max(n for n, _ in sizes) <= 300  # the largest row group


# ----------------------------------------------------------------------------- errors
def test_missing_and_mistyped_columns_name_file_and_column(data, tmp_path):
    _, df, schema = data
    part = df.iloc[:50]
    pq.write_table(pa.Table.from_pandas(part, preserve_index=False), tmp_path / "a.parquet")
    bad = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pandas(part.drop(columns="price"), preserve_index=False), bad)
    with pytest.raises(ValueError, match=r"b\.parquet.*'price' \(Dense feature"):
        ParquetSource(tmp_path, schema)
    pq.write_table(pa.Table.from_pandas(part.astype({"price": str}), preserve_index=False), bad)
    with pytest.raises(ValueError, match=r"b\.parquet: column 'price' .* needs numbers"):
        ParquetSource(tmp_path, schema)
    pq.write_table(pa.Table.from_pandas(part.astype({"user_id": str}), preserve_index=False), bad)
    with pytest.raises(ValueError, match=r"b\.parquet: column 'user_id' .* int ids"):
        ParquetSource(tmp_path, schema)
    no_labels = part.drop(columns=["click", "purchase"])
    pq.write_table(pa.Table.from_pandas(no_labels, preserve_index=False), bad)
    with pytest.raises(ValueError, match=r"b\.parquet: missing label column"):
        ParquetSource(tmp_path, schema)  # labels in a.parquet only
    assert "labels" not in next(ParquetSource(bad, schema, batch_size=8).batches(0))


def test_column_types_differing_between_files_are_widened(data, tmp_path):
    _, df, schema = data
    part = df.iloc[:300].copy()
    pq.write_table(
        pa.Table.from_pandas(part.iloc[:100], preserve_index=False), tmp_path / "a.parquet"
    )
    narrow = part.iloc[100:200].astype({"row": "int32", "price": "float32"})
    pq.write_table(pa.Table.from_pandas(narrow, preserve_index=False), tmp_path / "b.parquet")
    empty = part.iloc[200:].assign(hist=None)  # an all-null column has Arrow type null
    pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), tmp_path / "c.parquet")
    src = ParquetSource(tmp_path, schema, shuffle=False, batch_size=300, columns=["row"])
    (batch,) = src.batches(0)
    expected = schema.transform(pd.concat([part.iloc[:100], narrow, empty]))
    assert batch["raw/row"].tolist() == list(range(300))
    assert torch.equal(batch["seq/hist"], expected["seq/hist"])
    assert not batch["seq/hist"][200:].any()
    assert torch.equal(batch["sparse"], expected["sparse"])
    clash = part.iloc[:10].assign(hist=[[str(i)] for i in range(10)])  # str ids in one file
    pq.write_table(pa.Table.from_pandas(clash, preserve_index=False), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"c\.parquet: column 'hist' .*lists of int ids"):
        ParquetSource(tmp_path, schema)


def test_out_of_vocabulary_warning_once_per_epoch_not_per_chunk(data):
    root, df, _ = data
    schema = make_schema().fit(df.iloc[:20])
    src = ParquetSource(root, schema, batch_size=100, shuffle_buffer=200)
    with pytest.warns(rm.OOVWarning) as caught:
        assert sum(len(b["sparse"]) for b in src.batches(0)) == TOTAL
    assert len([w for w in caught if issubclass(w.category, rm.OOVWarning)]) == 1


def test_corrupt_file_and_row_group_are_named_never_skipped(data, tmp_path):
    _, df, schema = data
    (tmp_path / "junk.parquet").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ParquetReadError, match=r"junk\.parquet: not a readable Parquet"):
        ParquetSource(tmp_path, schema)
    (tmp_path / "junk.parquet").unlink()
    path = tmp_path / "ok.parquet"
    pq.write_table(pa.Table.from_pandas(df.iloc[:900], preserve_index=False), path, 400)
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(raw))
    src = ParquetSource(path, schema, shuffle=False, shuffle_buffer=100, batch_size=50)
    with pytest.raises(ParquetReadError, match=r"ok\.parquet: row group 1: cannot read"):
        list(src.batches(0))


def test_unsupported_features_and_bad_arguments(data, tmp_path):
    root, df, _ = data
    text = rm.Schema([rm.Sparse("item_id"), rm.Text("title", column="item_id")]).fit(df)
    with pytest.raises(NotImplementedError, match="Text"):
        ParquetSource(root, text)
    funnel = rm.Schema(
        [rm.Sparse("item_id"), rm.FunnelStats("item_stats", "item_id")], tasks=[rm.Task("click")]
    ).fit(df)
    with pytest.raises(NotImplementedError, match="FunnelStats"):
        ParquetSource(root, funnel)
    with pytest.raises(RuntimeError, match="fitted"):
        ParquetSource(root, make_schema())
    with pytest.raises(ValueError, match="batch_size"):
        source(data, batch_size=0)
    with pytest.raises(FileNotFoundError):
        ParquetSource(tmp_path / "nope", data[2])
    with pytest.raises(ValueError, match="rank"):
        source(data).num_batches(rank=2, world_size=2)


def test_missing_pyarrow_is_a_clear_import_error(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install recsys-mt\[parquet\]"):
        ParquetSource(data[0], data[2])


def test_trainer_fit_on_parquet_equals_fit_on_the_frame(data):
    root, df, schema = data

    def fit(train):
        torch.manual_seed(0)
        model = rm.MultiTaskModel(
            schema,
            encoders=[rm.IDEmbedding(id_dropout=0.0), rm.DenseEncoder()],
            head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)),
            auto_calibrate=None,
        )
        trainer = rm.Trainer(
            max_epochs=2,
            batch_size=64,
            shuffle=False,
            optimizer="sgd",
            lr=0.1,
            progress_bar=False,
            device="cpu",
        )
        trainer.fit(model, train, schema.transform(df.head(500)))
        return model.state_dict(), trainer

    s_frame, t_frame = fit(schema.transform(df))
    s_pq, t_pq = fit(ParquetSource(root, schema, batch_size=64, shuffle=False))
    assert t_pq.global_step == t_frame.global_step == 2 * -(-TOTAL // 64)
    for key, value in s_frame.items():
        torch.testing.assert_close(s_pq[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert t_pq.history[-1]["val/auc_mean"] == t_frame.history[-1]["val/auc_mean"]


def test_predict_and_evaluate_stream_from_an_unshuffled_source(data):
    root, df, schema = data
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))
    frame = schema.transform(df)
    src = ParquetSource(root, schema, batch_size=100, shuffle=False)
    pd.testing.assert_frame_equal(model.predict(src), model.predict(frame), check_exact=True)
    pd.testing.assert_frame_equal(model.evaluate(src), model.evaluate(frame), rtol=1e-6)
    with pytest.raises(ValueError, match="shuffle=False"):
        model.predict(ParquetSource(root, schema, batch_size=100, shuffle=True))
