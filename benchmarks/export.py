"""Compact export: sizes and CPU inference times of sparsified checkpoints, dense against exported, side by side.

    python benchmarks/export.py --data-dir ../shared/data outputs/checkpoints/final-*.pt

For each checkpoint: its sparsity, the test accuracy of the masked network and of the network loaded back from
the export (they must agree), the dense float32 state dict's size against the export file's and their ratio,
and the CPU time of one forward pass of a batch of each (median of 20, after warm-up), measured in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geodesic_core import evaluate, load_model, load_split  # noqa: E402
from geodesic_core.data import get_spec  # noqa: E402
from geodesic_core.export import export_and_compare, load_exported_model  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args(argv)
    print("| checkpoint | model | sparsity % | test acc (masked) | test acc (export) | dense bytes | export bytes "
          "| ratio | CPU ms dense | CPU ms export | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, ck in enumerate(args.checkpoints):
            model, meta = load_model(ck)
            spec = get_spec(meta["dataset"], args.data_dir)
            out = Path(tmp) / f"{i}.safetensors"
            m = export_and_compare(model, meta, out, spec.input_shape, batch=args.batch)
            r = m["report"]
            test = load_split(meta["dataset"], False, args.data_dir)
            acc, acc_back = evaluate(model, test)[0], evaluate(load_exported_model(out)[0], test)[0]
            what = f"{r.removed_filters} filters" if r.compact_layer else f"{r.sparsity:.2f}"
            print(f"| {Path(ck).name[:24]} | {meta['model']} | {what} | {acc:.2f} | {acc_back:.2f} | {r.dense_bytes:,} "
                  f"| {r.export_bytes:,} | {r.ratio:.1f}x | {m['dense_ms']:.3f} | {m['export_ms']:.3f} "
                  f"| {m['dense_ms'] / m['export_ms']:.2f}x |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
