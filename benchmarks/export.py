"""ONNX export: parity with torch and latency of onnxruntime vs torch.

Usage::

    python benchmarks/export.py [--threads 2] [--repeats 200] [--seed 0]

(``PYTHONPATH=src`` when recsys_mt is not installed; needs the ``onnx`` extra.) Trains one epoch
of the default MMoE model on the synthetic funnel (ids, a history sequence, dense features),
exports it with ``rm.export_onnx`` and prints one JSON line ``{"format": "onnx",
"max_abs_diff", "torch_ms_b1", "ort_ms_b1", "torch_ms_b256", "ort_ms_b256"}``: the largest
absolute difference over both outputs (conditional and joint probabilities) on 2,000 rows, and
the median latency of one call at batch 1 and 256 (torch: the calibrated probabilities under
``inference_mode``; onnxruntime: ``InferenceSession.run`` on the CPU provider), both with
``--threads`` threads. Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.demo import build_schema


def median_ms(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print(json.dumps({"skipped": "onnxruntime is not installed (pip install recsys-mt[onnx])"}))
        return
    torch.set_num_threads(args.threads)
    data = make_funnel_data(n_impressions=20_000, seed=args.seed)
    schema = build_schema()
    frame = schema.fit_transform(data.impressions)
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(schema)
    rm.Trainer(max_epochs=1, progress_bar=False, device="cpu", seed=args.seed).fit(model, frame)
    model.eval()
    rows = frame.subset(slice(0, 2000))
    with tempfile.TemporaryDirectory() as tmp:
        path = rm.export_onnx(model, tmp, rows.subset(slice(0, 4)))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def torch_call(frame):
        batch = {k: frame[k] for k in names}
        with torch.inference_mode():
            return model.probabilities(model.calibrate_logits(model(batch)))

    def feed(frame):
        return {k: frame[k].numpy() for k in names}

    got = sess.run(["conditional", "joint"], feed(rows))
    want = torch_call(rows)
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    line = {"format": "onnx", "max_abs_diff": diff}
    for b in (1, 256):
        part = rows.subset(slice(0, b))
        inputs = feed(part)
        line[f"torch_ms_b{b}"] = median_ms(lambda part=part: torch_call(part), args.repeats)
        line[f"ort_ms_b{b}"] = median_ms(lambda i=inputs: sess.run(None, i), args.repeats)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
